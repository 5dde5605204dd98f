"""Pruning: structured channel pruning on the PyTorch module before export (channels really
removed, so kernels shrink), magnitude (unstructured) pruning in torch or on the ONNX
initializers, reported as size-only: zeroed weights in dense kernels run no faster."""
from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass, field
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np

from ..errors import ConfigError, OptimizeError
from .base import PassConfig, PassContext, PassOutput, register_pass

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model

__all__ = ["PruneConfig"]


@dataclass(frozen=True)
class PruneConfig(PassConfig):
    """Remove weights.

    Parameters
    ----------
    method
        ``"channel"``: drop the output channels (filters, neurons) with the smallest L1 norm
        from every layer but the last, and the matching inputs of the next layer (PyTorch
        ``nn.Sequential`` chains; needs the model's torch module).  ``"magnitude"``: zero the
        ``sparsity`` smallest weights of each layer (kernels stay dense: size-only).
    sparsity
        Fraction of channels or weights removed, in (0, 1).
    fine_tune
        Optional ``fn(torch_module) -> None`` run after pruning, before export (e.g. a few
        epochs of training to recover accuracy); the optimizer's ``fine_tune`` otherwise.
        Not part of the candidate's key.
    """

    stage: ClassVar[int] = 10
    group: ClassVar[str] = "prune"

    method: str = "channel"
    sparsity: float = 0.5
    fine_tune: Callable[[Any], None] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.method not in ("channel", "magnitude"):
            raise ConfigError(f"PruneConfig.method must be 'channel' or 'magnitude', got {self.method!r}")
        if not isinstance(self.sparsity, (int, float)) or not 0 < self.sparsity < 1:
            raise ConfigError(f"PruneConfig.sparsity must be a fraction in (0, 1), got {self.sparsity!r}")
        if self.fine_tune is not None and not callable(self.fine_tune):
            raise ConfigError("PruneConfig.fine_tune must be callable(torch_module) or None")

    def describe(self) -> str:
        tune = ", fine-tuned" if self.fine_tune is not None else ""
        return f"prune({self.method}, {self.sparsity:.0%}{tune})"

    @classmethod
    def space(cls, ctx: PassContext) -> dict[str, list]:
        # magnitude pruning never makes a dense kernel faster, so only channel pruning is searched
        if _has_torch_module(ctx.baseline) and find_spec("torch") is not None:
            return {"method": ["channel"], "sparsity": [0.25, 0.5]}
        return {}


def _has_torch_module(model: "Model") -> bool:
    return getattr(model, "_torch_module", None) is not None or getattr(model, "_torch_factory", None) is not None


@register_pass(PruneConfig)
def _prune(model: "Model", config: PruneConfig, ctx: PassContext) -> PassOutput:
    fine_tune = config.fine_tune or ctx.fine_tune
    if _has_torch_module(model) and find_spec("torch") is not None:
        return _prune_torch(model, config, ctx, fine_tune)
    if config.method == "channel":
        raise OptimizeError(f"channel pruning needs the PyTorch module of {model.name!r}, and it has none",
                            "load the model from its nn.Module (eb.load(module, example_inputs=...)), "
                            "or use PruneConfig(method='magnitude') (size-only)")
    if fine_tune is not None:
        raise OptimizeError("a fine-tune callback needs the PyTorch module, and this model has none")
    return _prune_onnx(model, config)


# --------------------------------------------------------------------------------------------
def _prune_onnx(model: "Model", config: PruneConfig) -> PassOutput:
    import onnx
    from onnx import numpy_helper

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    weights = {n.input[1] for n in proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1}
    zeroed = total = 0
    for i, t in enumerate(proto.graph.initializer):
        if t.name not in weights:
            continue
        w = numpy_helper.to_array(t).copy()
        if w.ndim < 2 or not np.issubdtype(w.dtype, np.floating):
            continue
        k = int(w.size * config.sparsity)
        if k:
            cut = np.partition(np.abs(w).ravel(), k - 1)[k - 1]
            w[np.abs(w) <= cut] = 0
        zeroed += int((w == 0).sum())
        total += w.size
        proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(w, t.name))
    out = model.with_proto(proto)
    return PassOutput(out, {}, [_size_only_note(model, out, zeroed, total)])


def _size_only_note(before: "Model", after: "Model", zeroed: int, total: int) -> str:
    a = len(zlib.compress(before.to_bytes(), 6))
    b = len(zlib.compress(after.to_bytes(), 6))
    return (f"magnitude pruning zeroed {zeroed:,} of {total:,} weights; kernels stay dense, so latency and "
            f"size on disk do not change: size-only, compressed {a / 2**20:.2f} -> {b / 2**20:.2f} MB")


# --------------------------------------------------------------------------------------------
def _prune_torch(model: "Model", config: PruneConfig, ctx: PassContext, fine_tune: Callable | None) -> PassOutput:
    import torch

    from ..model import load

    module = copy.deepcopy(model.torch_module).eval()
    notes: list[str] = []
    with torch.no_grad():
        if config.method == "magnitude":
            zeroed, total = _magnitude(module, config.sparsity)
        else:
            removed = _shrink_sequential(module, config.sparsity)
            notes.append(f"channel pruning removed {removed} of the channels between layers "
                         f"({config.sparsity:.0%} of each hidden layer)")
    if fine_tune is not None:
        module.train()
        fine_tune(module)
        module.eval()
        notes.append(f"fine-tuned with {getattr(fine_tune, '__qualname__', 'the callback')}")
    example = tuple(torch.from_numpy(np.ascontiguousarray(v[:1])) for v in _example(model, ctx).values())
    out = load(module, example_inputs=example, input_names=[s.name for s in model.inputs],
               output_names=[s.name for s in model.outputs], name=model.name,
               opset=model.opset.get("ai.onnx", 17))
    out.source = model.source
    if config.method == "magnitude":
        notes.append(_size_only_note(model, out, zeroed, total))
    else:
        notes.append(f"parameters {model.n_params:,} -> {out.n_params:,}")
    return PassOutput(out, {}, notes)


def _example(model: "Model", ctx: PassContext) -> dict[str, np.ndarray]:
    if ctx.calibration:
        return ctx.calibration
    from .._feeds import random_feeds

    return random_feeds(model.inputs, 1)


def _magnitude(module: Any, sparsity: float) -> tuple[int, int]:
    from torch import nn

    zeroed = total = 0
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Linear)):
            w = m.weight
            k = int(w.numel() * sparsity)
            if k:
                cut = w.abs().flatten().kthvalue(k).values
                w[w.abs() <= cut] = 0
            zeroed += int((w == 0).sum())
            total += w.numel()
    return zeroed, total


_PASS_THROUGH = ("ReLU", "ReLU6", "GELU", "SiLU", "Sigmoid", "Tanh", "LeakyReLU", "Hardswish", "MaxPool2d",
                 "AvgPool2d", "AdaptiveAvgPool2d", "Dropout", "Identity")


def _shrink_sequential(module: Any, sparsity: float) -> int:
    """Remove the weakest output channels of each Conv2d/Linear of an nn.Sequential and the
    matching inputs of the next one (through activations, pooling, BatchNorm and Flatten).
    Returns the number of channels removed; raises OptimizeError for other architectures."""
    import torch
    from torch import nn

    if not isinstance(module, nn.Sequential):
        raise OptimizeError(f"channel pruning shrinks nn.Sequential chains of Conv2d/Linear layers; "
                            f"{type(module).__name__} is not one",
                            "prune it yourself, or use PruneConfig(method='magnitude') (size-only)")
    layers = list(module)
    prunable = [i for i, m in enumerate(layers) if isinstance(m, (nn.Conv2d, nn.Linear))]
    removed = 0
    for a, b in zip(prunable, prunable[1:]):
        src, dst = layers[a], layers[b]
        between = layers[a + 1:b]
        for m in between:
            if not (type(m).__name__ in _PASS_THROUGH or isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.Flatten))):
                raise OptimizeError(f"channel pruning cannot follow channels through {type(m).__name__}",
                                    "use PruneConfig(method='magnitude') (size-only)")
        if isinstance(src, nn.Conv2d) and src.groups != 1 or isinstance(dst, nn.Conv2d) and dst.groups != 1:
            raise OptimizeError("channel pruning does not handle grouped or depthwise convolutions")
        n_out = src.weight.shape[0]
        keep_n = max(1, int(round(n_out * (1 - sparsity))))
        norms = src.weight.abs().reshape(n_out, -1).sum(1)
        keep = torch.sort(torch.topk(norms, keep_n).indices).values
        _select_out(src, keep)
        for m in between:
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                _select_bn(m, keep)
        flat = any(isinstance(m, nn.Flatten) for m in between)
        if flat:
            if not isinstance(dst, nn.Linear) or dst.in_features % n_out:
                raise OptimizeError("channel pruning cannot map the flattened channels onto the next layer")
            per = dst.in_features // n_out
            cols = (keep[:, None] * per + torch.arange(per)[None, :]).reshape(-1)
        else:
            cols = keep
        _select_in(dst, cols)
        removed += n_out - keep_n
    return removed


def _select_out(m: Any, keep: Any) -> None:
    from torch import nn

    m.weight = nn.Parameter(m.weight.data[keep].clone())
    if m.bias is not None:
        m.bias = nn.Parameter(m.bias.data[keep].clone())
    if hasattr(m, "out_channels"):
        m.out_channels = len(keep)
    else:
        m.out_features = len(keep)


def _select_in(m: Any, cols: Any) -> None:
    from torch import nn

    m.weight = nn.Parameter(m.weight.data[:, cols].clone())
    if hasattr(m, "in_channels"):
        m.in_channels = len(cols)
    else:
        m.in_features = len(cols)


def _select_bn(m: Any, keep: Any) -> None:
    from torch import nn

    m.weight = nn.Parameter(m.weight.data[keep].clone())
    m.bias = nn.Parameter(m.bias.data[keep].clone())
    m.running_mean = m.running_mean[keep].clone()
    m.running_var = m.running_var[keep].clone()
    m.num_features = len(keep)
