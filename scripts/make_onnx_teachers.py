#!/usr/bin/env python3
"""Builds, trains briefly and exports the small PyTorch teachers that the ONNX-import tests use
(host/tests/fixtures/teachers/*.onnx). Run it in a venv with torch and onnx:

    python3 scripts/make_onnx_teachers.py [OUT_DIR]

Each net covers part of the op list of PyTorch's exporter for convolutional depth networks:
  resnet_mff   7x7 stem, BatchNorm, max-pool, residual blocks, F.interpolate(bilinear) to the
               skip's size, concat, softplus head               (opset 17, BatchNorm kept)
  mbv2_unet    inverted residuals, depthwise convs, ReLU6 (Clip), hardswish, nearest upsample,
               sigmoid head scaled to metres                     (opset 13, BatchNorm kept,
                                                                  dynamic batch and size)
  deconv       ConvTranspose, LeakyReLU, PReLU, ELU, tanh, hardsigmoid, avg-pool, pad,
               align_corners upsample                            (opset 11, BatchNorm kept)
  tiny_vit     patch embedding, LayerNorm, attention (MatMul, Softmax), GELU (Erf), no
               BatchNorm                                         (opset 17)
  resnet_folded the resnet_mff net exported the default way (BatchNorm folded into the convs)
Training is a few hundred steps on random colour images towards a smooth synthetic depth, only
so that the BatchNorm statistics are not the defaults; the tests compare the import with
onnxruntime, they do not judge depth.
"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
H, W = 48, 64


def bn_relu(cin, cout, k=3, s=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Basic(nn.Module):
    def __init__(self, cin, cout, s):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, s, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.down = None
        if s != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, s, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNetMFF(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 7, 2, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.l1 = Basic(16, 16, 1)
        self.l2 = Basic(16, 32, 2)
        self.l3 = Basic(32, 48, 2)
        self.up2 = bn_relu(48 + 32, 32)
        self.up1 = bn_relu(32 + 16, 16)
        self.head = nn.Conv2d(16, 1, 3, 1, 1)

    def forward(self, x):
        s = self.stem(x)
        x1 = self.l1(self.pool(s))
        x2 = self.l2(x1)
        x3 = self.l3(x2)
        y = F.interpolate(x3, size=x2.shape[-2:], mode="bilinear", align_corners=False)
        y = self.up2(torch.cat([y, x2], 1))
        y = F.interpolate(y, size=x1.shape[-2:], mode="bilinear", align_corners=False)
        y = self.up1(torch.cat([y, x1], 1))
        y = F.interpolate(self.head(y), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return F.softplus(y) + 0.1


class InvRes(nn.Module):
    def __init__(self, cin, cout, s, e=4):
        super().__init__()
        m = cin * e
        self.body = nn.Sequential(
            nn.Conv2d(cin, m, 1, bias=False), nn.BatchNorm2d(m), nn.ReLU6(inplace=True),
            nn.Conv2d(m, m, 3, s, 1, groups=m, bias=False), nn.BatchNorm2d(m), nn.Hardswish(),
            nn.Conv2d(m, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = s == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.skip else y


class MBv2UNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = bn_relu(3, 16, 3, 2)
        self.b1 = InvRes(16, 16, 1)
        self.b2 = InvRes(16, 24, 2)
        self.b3 = InvRes(24, 24, 1)
        self.b4 = InvRes(24, 32, 2)
        self.d1 = bn_relu(32 + 24, 24)
        self.d2 = bn_relu(24 + 16, 16)
        self.head = nn.Conv2d(16, 1, 1)

    def forward(self, x):
        a = self.b1(self.stem(x))
        b = self.b3(self.b2(a))
        c = self.b4(b)
        y = self.d1(torch.cat([F.interpolate(c, scale_factor=2.0, mode="nearest"), b], 1))
        y = self.d2(torch.cat([F.interpolate(y, scale_factor=2.0, mode="nearest"), a], 1))
        y = F.interpolate(self.head(y), scale_factor=2.0, mode="nearest")
        return 0.5 + 9.5 * torch.sigmoid(y)


class Deconv(nn.Module):
    def __init__(self):
        super().__init__()
        self.e1 = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.LeakyReLU(0.1))
        self.e2 = nn.Sequential(nn.Conv2d(16, 24, 3, 2, 1), nn.BatchNorm2d(24), nn.PReLU(24))
        self.e3 = nn.Sequential(nn.Conv2d(24, 32, 3, 1, 2, dilation=2), nn.BatchNorm2d(32), nn.ELU())
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.t1 = nn.ConvTranspose2d(32, 24, 3, 1, 1)
        self.t2 = nn.ConvTranspose2d(24, 16, 3, 2, 1, output_padding=1)
        self.head = nn.Conv2d(16, 1, 3, 1, 0)

    def forward(self, x):
        y = self.e3(self.e2(self.e1(x)))
        y = self.pool(y)
        y = torch.tanh(self.t1(y))
        y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=True)
        y = F.leaky_relu(self.t2(y), 0.2)
        y = F.pad(y, (1, 1, 1, 1), mode="constant", value=0.0)
        return 1.0 + 4.0 * F.hardsigmoid(self.head(y))


class TinyViT(nn.Module):
    def __init__(self, d=32, p=8):
        super().__init__()
        self.p = p
        self.embed = nn.Conv2d(3, d, p, p)
        self.n1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.n2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.head = nn.Conv2d(d, 1, 1)
        self.d = d

    def forward(self, x):
        n, _, h, w = x.shape
        t = self.embed(x)
        gh, gw = t.shape[-2], t.shape[-1]
        t = t.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(self.n1(t)).chunk(3, dim=-1)
        a = torch.softmax(q @ k.transpose(1, 2) / (self.d ** 0.5), dim=-1)
        t = t + self.proj(a @ v)
        t = t + self.mlp(self.n2(t))
        y = t.transpose(1, 2).reshape(n, self.d, gh, gw)
        y = F.interpolate(self.head(y), size=(h, w), mode="bilinear", align_corners=False)
        return torch.exp(y.clamp(-3, 3)) + 0.5


def train_briefly(net, steps=150):
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    net.train()
    for _ in range(steps):
        x = torch.rand(8, 3, H, W)
        x = F.avg_pool2d(x, 5, 1, 2)
        target = 1.0 + 4.0 * F.avg_pool2d(x.mean(1, keepdim=True), 9, 1, 4)
        loss = (net(x) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return net


def export(net, path, opset, keep_bn=True, dynamic=False):
    x = torch.rand(1, 3, H, W)
    kw = dict(input_names=["image"], output_names=["depth"], opset_version=opset, dynamo=False)
    if keep_bn:
        kw["training"] = torch.onnx.TrainingMode.PRESERVE
        kw["do_constant_folding"] = False
    if dynamic:
        kw["dynamic_axes"] = {"image": {0: "n", 2: "h", 3: "w"}, "depth": {0: "n", 2: "h", 3: "w"}}
    net.eval()
    torch.onnx.export(net, x, path, **kw)
    print(path, os.path.getsize(path), "bytes")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "host/tests/fixtures/teachers"
    os.makedirs(out, exist_ok=True)
    r = train_briefly(ResNetMFF())
    export(r, f"{out}/resnet_mff.onnx", 17)
    export(r, f"{out}/resnet_folded.onnx", 17, keep_bn=False)
    export(train_briefly(MBv2UNet()), f"{out}/mbv2_unet.onnx", 13, dynamic=True)
    export(train_briefly(Deconv()), f"{out}/deconv.onnx", 11)
    export(train_briefly(TinyViT(), 100), f"{out}/tiny_vit.onnx", 17, keep_bn=False)


if __name__ == "__main__":
    main()
