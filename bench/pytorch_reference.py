#!/usr/bin/env python3
"""The same network in PyTorch, for `depthling bench train`'s side-by-side step time.

Builds the architecture that `depthling profile --arch A --graph FILE` writes (the one layer list
that also drives depthling's candle module, its int8 export and its ONNX export), then times the
same training step as `depthling bench train`: batch 8, RGB in [0, 1], forward in train mode,
masked L1 loss against a depth map, backward, Adam update. Prints one JSON object.

    pip install torch
    cargo build --release
    python3 bench/pytorch_reference.py --arch mbv2-mff --threads 2

Weights are random (step time does not depend on them); the data are random images.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTS = {
    "None": lambda x: x,
    "Relu": F.relu,
    "Relu6": F.relu6,
    "Sigmoid": torch.sigmoid,
}


class Graph(nn.Module):
    """A depthling GraphSpec: nodes in execution order, each reading earlier nodes."""

    def __init__(self, spec):
        super().__init__()
        self.nodes = spec["nodes"]
        channels = []
        self.convs = nn.ModuleDict()
        self.bns = nn.ModuleDict()
        for i, node in enumerate(self.nodes):
            if node == "Input":
                channels.append(spec.get("input_channels", 3))
                continue
            (kind, a), = node.items()
            if kind == "Conv":
                cin = channels[a["input"]]
                groups = cin if a["depthwise"] else 1
                k = a["kernel"]
                self.convs[str(i)] = nn.Conv2d(
                    cin, a["out_channels"], k, a["stride"], k // 2,
                    groups=groups, bias=not a["batch_norm"])
                if a["batch_norm"]:
                    self.bns[str(i)] = nn.BatchNorm2d(a["out_channels"], eps=1e-5)
                channels.append(a["out_channels"])
            elif kind == "Concat":
                channels.append(sum(channels[j] for j in a["inputs"]))
            elif kind == "Add":
                channels.append(channels[a["a"]])
            else:
                channels.append(channels[a["input"]])

    def forward(self, x):
        values = []
        for i, node in enumerate(self.nodes):
            if node == "Input":
                values.append(x)
                continue
            (kind, a), = node.items()
            if kind == "Conv":
                y = self.convs[str(i)](values[a["input"]])
                if str(i) in self.bns:
                    y = self.bns[str(i)](y)
                y = ACTS[a["act"]](y)
            elif kind == "Add":
                y = ACTS[a["act"]](values[a["a"]] + values[a["b"]])
            elif kind == "Concat":
                y = torch.cat([values[j] for j in a["inputs"]], 1)
            elif kind == "Upsample":
                t = values[a["input"]]
                f = a["factor"]
                if a.get("mode", "Nearest") == "Bilinear":
                    y = F.interpolate(t, scale_factor=f, mode="bilinear", align_corners=False)
                else:
                    y = F.interpolate(t, scale_factor=f, mode="nearest")
                like = a.get("like")
                if like is not None:
                    h, w = values[like].shape[2:]
                    y = y[:, :, :h, :w]
            elif kind == "MaxPool":
                y = F.max_pool2d(values[a["input"]], 3, 2, 1)
            elif kind == "GlobalAvgPool":
                y = values[a["input"]].mean((2, 3), keepdim=True)
            elif kind == "Mul":
                y = values[a["input"]] * values[a["scale"]]
            else:
                raise ValueError(f"node {i}: unknown kind {kind}")
            values.append(y)
        return values[-1]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="mbv2-mff")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--size", default="128x96")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--depthling", default="target/release/depthling",
                   help="the depthling binary that writes the architecture")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "graph.json")
        subprocess.run([args.depthling, "profile", "--arch", args.arch, "--width", str(args.width),
                        "--size", args.size, "--graph", path, "--json"],
                       check=True, stdout=subprocess.DEVNULL)
        with open(path) as f:
            spec = json.load(f)
    net = Graph(spec)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=1e-4)
    x = torch.rand(args.batch, spec.get("input_channels", 3), h, w)
    gt = torch.rand(args.batch, 1, h, w) * 5 + 0.5

    def step():
        opt.zero_grad(set_to_none=True)
        loss = (net(x) - gt).abs().mean()
        loss.backward()
        opt.step()

    for _ in range(2):  # warm-up
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    ms = 1e3 * (time.perf_counter() - start) / args.steps
    params = sum(t.numel() for t in net.parameters())
    print(json.dumps({"arch": f"{args.arch}@{args.width:g}", "framework": "pytorch",
                      "torch": torch.__version__, "threads": args.threads, "batch": args.batch,
                      "width": w, "height": h, "params": params, "step_ms": ms}))


if __name__ == "__main__":
    sys.exit(main())
