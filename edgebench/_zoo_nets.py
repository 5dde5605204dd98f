"""The zoo networks in plain torch (no torchvision): the digits CNN (and its training), the
MLP, MobileNetV2 and a tiny BERT.  EfficientNet-Lite0 is in ``_zoo_efficientnet``.

Imported only when a zoo model is built, so torch stays out of ``import edgebench``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .errors import ModelLoadError
from .zoo import _SEED, _SEQ, _VOCAB, dataset


def make_digits() -> nn.Sequential:
    """The digits CNN (2 conv + 2 linear), untrained."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def train_digits(module: nn.Module) -> None:
    """Train the digits CNN in place: 12 epochs of Adam, single-threaded, seeded."""
    X, y = (torch.from_numpy(a) for a in dataset("digits", "train"))
    Xt, yt = (torch.from_numpy(a) for a in dataset("digits", "test"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise-reproducible reductions
    try:
        gen = torch.Generator().manual_seed(_SEED)
        opt = torch.optim.Adam(module.parameters(), lr=5e-3)
        module.train()
        for _ in range(12):
            for idx in torch.randperm(len(X), generator=gen).split(32):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(module(X[idx]), y[idx]).backward()
                opt.step()
        module.eval()
        with torch.no_grad():
            acc = float((module(Xt).argmax(1) == yt).float().mean())
    finally:
        torch.set_num_threads(threads)
    if acc < 0.95:  # pragma: no cover - a regression in torch or the recipe
        raise ModelLoadError(f"the digits model reached only {acc:.3f} test accuracy (< 0.95)",
                             "report this: the training recipe no longer converges with this torch")


def make_mlp() -> nn.Sequential:
    """The 784-512-256-10 MLP (random weights)."""
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))


def conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU6()) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [conv_bn(cin, hidden)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, cout, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    # (expansion, channels, repeats, stride) of the MobileNetV2 paper, width 1.0
    CONFIG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in self.CONFIG:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn(cin, 1280))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1280, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, so BN folding is exercised
                nn.init.uniform_(m.weight, 0.8, 1.2)
                nn.init.normal_(m.bias, 0.0, 0.05)
                m.running_mean.normal_(0.0, 0.05)
                m.running_var.uniform_(0.8, 1.2)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class EncoderLayer(nn.Module):
    """Post-LayerNorm BERT layer; attention in plain ops (exports cleanly)."""

    def __init__(self, hidden: int, heads: int, ffn: int):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden, eps=1e-12)
        self.ffn = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Linear(ffn, hidden))
        self.norm2 = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, s, d = h.shape
        q, k, v = self.qkv(h).reshape(b, s, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
        ctx = (att @ v).transpose(1, 2).reshape(b, s, d)
        h = self.norm1(h + self.proj(ctx))
        return self.norm2(h + self.ffn(h))


class TinyBert(nn.Module):
    def __init__(self, vocab: int = _VOCAB, seq: int = _SEQ, hidden: int = 384, layers: int = 6,
                 heads: int = 12, ffn: int = 1536, num_classes: int = 2):
        super().__init__()
        self.tok = nn.Embedding(vocab, hidden)
        self.pos = nn.Embedding(seq, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.layers = nn.Sequential(*(EncoderLayer(hidden, heads, ffn) for _ in range(layers)))
        self.pooler = nn.Linear(hidden, hidden)
        self.classifier = nn.Linear(hidden, num_classes)
        for m in self.modules():  # BERT's initialisation
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.layers(self.norm(self.tok(input_ids) + self.pos.weight))  # fixed length: seq
        return self.classifier(torch.tanh(self.pooler(h[:, 0])))

