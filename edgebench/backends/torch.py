"""The ``torch`` backend: runs the original PyTorch module a model was loaded from.

Models loaded from an ``nn.Module`` (``eb.load(module, example_inputs=...)``) keep the
module; this backend runs it eagerly, or through ``torch.compile`` with ``compile=True``,
under ``torch.inference_mode()``.  Models loaded from ONNX have no module and need the
``onnxruntime`` backend.
"""
from __future__ import annotations

import copy
import itertools
import os
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BackendUnavailableError, ConfigError
from . import register

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model

__all__ = ["TorchBackend", "TorchSession"]

_INSTALL = "PyTorch is not installed (pip install torch==2.13.0)"
_OPTIONS = ("threads", "compile", "compile_options")
_TAGS = itertools.count()


@register("torch")
class TorchBackend:
    """Eager (or ``torch.compile``-d) PyTorch on ``cpu`` and ``cuda:N``."""

    name = "torch"

    def available(self) -> tuple[bool, str | None]:
        try:
            if find_spec("torch") is None:
                return False, _INSTALL
            import torch  # noqa: F401
        except Exception as e:  # noqa: BLE001 - a broken install is "not available", with the reason
            return False, f"PyTorch fails to import ({type(e).__name__}: {e})"
        return True, None

    def version(self) -> str | None:
        if not self.available()[0]:
            return None
        import torch

        return torch.__version__

    def devices(self) -> list[str]:
        import torch

        cuda = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
        return ["cpu", *cuda]

    def details(self) -> dict:
        if not self.available()[0]:
            return {}
        import torch

        return {
            "cuda": torch.version.cuda,
            "hip": getattr(torch.version, "hip", None),
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "mkldnn": torch.backends.mkldnn.is_available(),
        }

    def compile(self, model: "Model", device: str = "cpu", *, threads: int | None = None,
                compile: bool = False, compile_options: dict | None = None, **options: Any) -> "TorchSession":
        """Prepare ``model.torch_module`` to run on ``device``.

        Parameters
        ----------
        model
            A :class:`~edgebench.Model` loaded from a ``torch.nn.Module``.
        device
            ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        threads
            Intra-op threads (``torch.set_num_threads``).  PyTorch keeps this setting per
            process, so it also changes every other torch session in this process.
        compile
            Wrap the module with ``torch.compile`` (one warm-up run happens here so a
            compiler failure surfaces now, not on the first request).
        compile_options
            Keyword arguments for ``torch.compile`` (``mode``, ``backend``, ``dynamic``, ...).

        Raises
        ------
        BackendUnavailableError
            PyTorch is missing, the model has no PyTorch module, or ``torch.compile`` fails.
        DeviceUnavailableError
            The device is not present (the message says why).
        ConfigError
            An unknown option or a bad ``threads`` value.
        """
        if options:
            raise ConfigError(f"the torch backend has no option(s) {sorted(options)}", f"it takes {', '.join(_OPTIONS)}")
        ok, why = self.available()
        if not ok:
            raise BackendUnavailableError(why or _INSTALL)
        import torch

        from .. import devices

        module = getattr(model, "torch_module", None)
        if module is None:
            raise BackendUnavailableError(
                "the torch backend runs the original PyTorch module; this model was loaded from ONNX "
                f"({getattr(model, 'source', '?')}) and has none",
                "use backend='onnxruntime', or eb.load() the nn.Module itself with example_inputs",
            )
        dev = devices.resolve(device)
        if dev.kind == "cpu":
            tdev = torch.device("cpu")
        elif dev.name.startswith("cuda:") and dev.details.get("torch"):
            tdev = torch.device(dev.name)
        else:
            raise BackendUnavailableError(
                f"the torch backend cannot run on {dev.name} ({dev.model or dev.kind}): "
                f"this PyTorch ({torch.__version__}) reaches only cpu and CUDA GPUs",
                "use backend='onnxruntime' with that device, or device='cpu'",
            )
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise ConfigError(f"threads must be a positive integer, got {threads!r}")
            torch.set_num_threads(threads)
        module = _on_device(module, tdev, torch).eval()
        session = TorchSession(module, tdev, [s.name for s in model.inputs], [s.name for s in model.outputs])
        if compile:
            session._compile(model, compile_options or {})
        return session


def _on_device(module: Any, device: Any, torch: Any) -> Any:
    """``module`` itself when its tensors are already on ``device``, else a copy there.

    The copy shares nothing with the original and never duplicates weights on the host:
    each parameter and buffer is copied straight to the device.
    """
    tensors = list(itertools.chain(module.parameters(), module.buffers()))
    if all(t.device == device for t in tensors):
        return module
    memo: dict[int, Any] = {}
    for t in tensors:
        if id(t) not in memo:
            moved = t.detach().to(device)
            memo[id(t)] = torch.nn.Parameter(moved, requires_grad=False) if isinstance(t, torch.nn.Parameter) else moved
    try:
        return copy.deepcopy(module, memo)
    except Exception:  # noqa: BLE001 - e.g. TorchScript modules: fall back to a plain copy
        return copy.deepcopy(module).to(device)


class TorchSession:
    """A PyTorch module ready to run on one device.

    ``run`` shares memory with the feeds on CPU (``torch.from_numpy``) and returns numpy arrays.
    """

    def __init__(self, module: Any, device: Any, input_names: list[str], output_names: list[str]):
        import torch

        self._torch = torch
        self.module = module
        self.device = device
        self.input_names = input_names
        self.output_names = output_names
        self._fn = module
        self._profiler: Any = None
        self._tag = f"edgebench::run#{next(_TAGS)}"

    def _compile(self, model: "Model", options: dict) -> None:
        torch = self._torch
        try:
            self._fn = torch.compile(self.module, **options)
            feeds = {s.name: np.zeros([d if isinstance(d, int) else 1 for d in s.shape], dtype=s.dtype)
                     for s in model.inputs}
            self.run(feeds)
        except Exception as e:  # noqa: BLE001 - inductor raises many kinds; all mean "cannot compile"
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise BackendUnavailableError(
                f"torch.compile failed for {model.name}: {type(e).__name__}: {first}",
                "use compile=False (eager PyTorch), or a working compiler setup for inductor (a C++ compiler on CPU)",
            ) from None

    def _tensor(self, a: Any) -> Any:
        torch = self._torch
        a = np.asarray(a)
        if not a.flags.writeable or any(s < 0 for s in a.strides):
            a = np.array(a)  # torch.from_numpy cannot take read-only or negatively strided arrays
        t = torch.from_numpy(a)
        return t if self.device.type == "cpu" else t.to(self.device)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the module on ``feeds`` (keyed by input name); outputs in ``output_names`` order."""
        torch = self._torch
        if self._profiler is None:
            return self._run(feeds)
        with torch.profiler.record_function(self._tag):  # marks this session's ops (and syncs GPU work in it)
            return self._run(feeds)

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        args = [self._tensor(feeds[n]) for n in self.input_names]
        with torch.inference_mode():
            out = self._fn(*args)
            return [_to_numpy(o, torch) for o in _flatten(out)]

    # -- profiling ------------------------------------------------------------------------
    def start_profiling(self) -> None:
        """Record every operator of the following runs (from any thread) until :meth:`end_profiling`."""
        torch = self._torch
        if self._profiler is not None:
            self.end_profiling()
        acts = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        kw: dict[str, Any] = {}
        try:  # engines call run() from worker threads; torch profiles only the calling thread by default
            kw["experimental_config"] = torch._C._profiler._ExperimentalConfig(profile_all_threads=True)
        except (AttributeError, TypeError):
            pass
        prof = torch.profiler.profile(activities=acts, **kw)
        prof.__enter__()
        self._profiler = prof

    def end_profiling(self) -> list[dict]:
        """Stop profiling; the operators run meanwhile as Chrome-trace ``"X"`` events.

        Each event has ``name`` (e.g. ``"aten::addmm"``), ``cat`` (``"op"``, or ``"kernel"``
        for GPU kernels), ``ph="X"``, ``ts`` and ``dur`` in microseconds (``ts`` counted from
        :meth:`start_profiling`), ``pid``, ``tid`` and ``args`` (``op_type`` without the
        ``aten::`` namespace, ``self_us``, ``device``).  Only this session's runs are kept.
        Returns ``[]`` when profiling was not started.
        """
        prof, self._profiler = self._profiler, None
        if prof is None:
            return []
        prof.__exit__(None, None, None)
        events = list(prof.events())
        spans = [(e.thread, e.time_range.start, e.time_range.end) for e in events if e.name == self._tag]
        pid = os.getpid()
        out = []
        for e in events:
            start, end = e.time_range.start, e.time_range.end
            on_gpu = str(e.device_type).endswith("CUDA")
            # GPU kernels run on the device timeline: keep those launched within one of our runs
            inside = any((s <= start <= f) if on_gpu else (e.thread == th and s <= start and end <= f)
                         for th, s, f in spans)
            if e.name == self._tag or not inside:
                continue
            out.append({
                "name": e.name, "cat": "kernel" if on_gpu else "op", "ph": "X",
                "ts": float(start), "dur": float(end - start), "pid": pid, "tid": int(e.thread),
                "args": {"op_type": e.name.split("::")[-1], "self_us": float(e.self_cpu_time_total),
                         "device": "cuda" if on_gpu else "cpu"},
            })
        return out

    def memory_bytes(self) -> int:
        """Bytes held by the module's parameters and buffers (each shared tensor counted once)."""
        seen: set[int] = set()
        total = 0
        for t in itertools.chain(self.module.parameters(), self.module.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
        return total

    def close(self) -> None:
        """Drop the module (and its device memory)."""
        if self._profiler is not None:
            self.end_profiling()
        self.module = self._fn = None

    def __repr__(self) -> str:
        return f"<TorchSession on {self.device} inputs={self.input_names} outputs={self.output_names}>"


def _flatten(out: Any) -> list[Any]:
    if isinstance(out, (tuple, list)):
        return [x for o in out for x in _flatten(o)]
    if isinstance(out, dict):
        return [x for o in out.values() for x in _flatten(o)]
    return [out]


def _to_numpy(o: Any, torch: Any) -> np.ndarray:
    if not isinstance(o, torch.Tensor):
        return np.asarray(o)
    o = o.detach()
    if o.dtype == torch.bfloat16:  # numpy has no bfloat16
        o = o.float()
    return o.cpu().numpy() if o.device.type != "cpu" else o.numpy()
