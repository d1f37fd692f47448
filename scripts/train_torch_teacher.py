#!/usr/bin/env python3
"""Trains a depth teacher in PyTorch on a depthling dataset folder and exports it to ONNX with its
BatchNorm layers kept — the "bring your own teacher" workflow end to end, as a user would run it:

    python3 scripts/train_torch_teacher.py DATA_DIR OUT.onnx [--steps N] [--width C]

DATA_DIR is a folder from `depthling simulate` (rgb/, depth/, manifest.json). The network is the
ResNet-style MFF net of scripts/make_onnx_teachers.py at a chosen width; the loss is L1 on valid
depth; Adam 1e-3 with a ×0.1 step at 75 %. Needs torch, numpy and pillow.
"""
import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import importlib.util

spec = importlib.util.spec_from_file_location("teachers", os.path.join(os.path.dirname(__file__), "make_onnx_teachers.py"))
teachers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(teachers)


class Wide(nn.Module):
    """ResNetMFF with c channels at the first stage (16 in the fixture)."""

    def __init__(self, c):
        super().__init__()
        B, bn_relu = teachers.Basic, teachers.bn_relu
        self.stem = nn.Sequential(nn.Conv2d(3, c, 7, 2, 3, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.l1 = nn.Sequential(B(c, c, 1), B(c, c, 1))
        self.l2 = nn.Sequential(B(c, 2 * c, 2), B(2 * c, 2 * c, 1))
        self.l3 = nn.Sequential(B(2 * c, 4 * c, 2), B(4 * c, 4 * c, 1))
        self.l4 = nn.Sequential(B(4 * c, 8 * c, 2), B(8 * c, 8 * c, 1))
        self.up3 = bn_relu(8 * c + 4 * c, 4 * c)
        self.up2 = bn_relu(4 * c + 2 * c, 2 * c)
        self.up1 = bn_relu(2 * c + c, c)
        self.head = nn.Conv2d(c, 1, 3, 1, 1)

    def forward(self, x):
        s = self.stem(x)
        x1 = self.l1(self.pool(s))
        x2 = self.l2(x1)
        x3 = self.l3(x2)
        x4 = self.l4(x3)
        up = lambda a, b: F.interpolate(a, size=b.shape[-2:], mode="bilinear", align_corners=False)
        y = self.up3(torch.cat([up(x4, x3), x3], 1))
        y = self.up2(torch.cat([up(y, x2), x2], 1))
        y = self.up1(torch.cat([up(y, x1), x1], 1))
        y = up(self.head(y), x)
        return F.softplus(y) + 0.1


def load(folder):
    m = json.load(open(os.path.join(folder, "manifest.json")))
    rgb, depth = [], []
    for i in range(m["count"]):
        name = f"{i:06}.png"
        rgb.append(np.asarray(Image.open(os.path.join(folder, "rgb", name)).convert("RGB")))
        depth.append(np.asarray(Image.open(os.path.join(folder, "depth", name)), dtype=np.float32) / m["depth_scale"])
    x = torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).float() / 255.0
    d = torch.from_numpy(np.stack(depth))[:, None]
    return x, d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--width", type=int, default=24)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    x, d = load(a.data)
    net = Wide(a.width)
    opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, int(0.75 * a.steps), 0.1)
    start = time.time()
    net.train()
    for step in range(a.steps):
        idx = torch.randint(0, len(x), (a.batch,))
        xb, db = x[idx], d[idx]
        if torch.rand(()) < 0.5:
            xb, db = xb.flip(3), db.flip(3)
        mask = db > 0
        loss = (net(xb) - db).abs()[mask].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0 or step == a.steps - 1:
            print(f"step {step} loss {loss.item():.4f} ({time.time() - start:.0f} s)", flush=True)
    net.eval()
    h, w = x.shape[-2:]
    torch.onnx.export(net, x[:1], a.out, input_names=["image"], output_names=["depth"], opset_version=17,
                      dynamo=False, training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                      dynamic_axes={"image": {0: "n"}, "depth": {0: "n"}})
    print(a.out, os.path.getsize(a.out), "bytes,", sum(p.numel() for p in net.parameters()), "parameters")


if __name__ == "__main__":
    main()
