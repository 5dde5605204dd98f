"""The ONNX Runtime backend: every execution provider really installed.

Options accepted by :meth:`OrtBackend.compile` (and so by ``Engine(..., options={...})``):

``graph_optimization_level``  ``"disable" | "basic" | "extended" | "all"`` (default ``"all"``)
``execution_mode``            ``"sequential" | "parallel"``
``inter_op_threads``          threads between independent nodes (parallel mode)
``providers``                 explicit provider list, overriding the one chosen from the device
``provider_options``          list of dicts, one per provider
``enable_mem_pattern``        bool
``io_binding``                ``True`` to run through IOBinding with preallocated fixed-shape outputs
``optimized_model_path``      write the graph as optimized by ORT to this file
"""
from __future__ import annotations

import os
import tempfile
import threading
from typing import TYPE_CHECKING, Any

from ..errors import BackendUnavailableError, ConfigError, DeviceUnavailableError, ModelLoadError
from . import register

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from ..model import Model

# device kind -> providers to try, best first
_DEVICE_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
    "rocm": ["MIGraphXExecutionProvider", "ROCMExecutionProvider"],
    "dml": ["DmlExecutionProvider"],
    "openvino": ["OpenVINOExecutionProvider"],
    "coreml": ["CoreMLExecutionProvider"],
    "qnn": ["QNNExecutionProvider"],
}
_LEVELS = ("disable", "basic", "extended", "all")
_KNOWN_OPTIONS = {"graph_optimization_level", "execution_mode", "inter_op_threads", "providers",
                  "provider_options", "enable_mem_pattern", "io_binding", "optimized_model_path"}


def _ort():
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - core dependency
        raise BackendUnavailableError("onnxruntime is not installed", "pip install onnxruntime") from None
    return onnxruntime


@register("onnxruntime")
class OrtBackend:
    """Runs ONNX models with ONNX Runtime."""

    name = "onnxruntime"

    def available(self) -> tuple[bool, str | None]:
        try:
            _ort()
        except BackendUnavailableError as e:
            return False, str(e)
        return True, None

    def version(self) -> str | None:
        return _ort().__version__

    def details(self) -> dict:
        return {"providers": _ort().get_available_providers()}

    def devices(self) -> list[str]:
        have = set(_ort().get_available_providers())
        out = ["cpu"]
        for kind, provs in _DEVICE_PROVIDERS.items():
            if kind != "cpu" and have.intersection(provs):
                out.append(kind)
        return out

    def providers_for(self, device: str) -> list[str]:
        """Installed providers for ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``...), best first, CPU last."""
        kind = device.split(":")[0]
        if kind not in _DEVICE_PROVIDERS:
            raise ConfigError(
                f"onnxruntime cannot target device {device!r}",
                f"known device kinds: {', '.join(_DEVICE_PROVIDERS)}",
            )
        have = _ort().get_available_providers()
        chosen = [p for p in _DEVICE_PROVIDERS[kind] if p in have]
        if not chosen:
            raise DeviceUnavailableError(
                f"onnxruntime has no execution provider for {device!r} here "
                f"(wanted one of {', '.join(_DEVICE_PROVIDERS[kind])}; installed: {', '.join(have)})",
                "install the matching onnxruntime package (e.g. onnxruntime-gpu) or use device='cpu'",
            )
        return chosen if kind == "cpu" else chosen + ["CPUExecutionProvider"]

    def session_options(self, threads: int | None, options: dict) -> Any:
        ort = _ort()
        unknown = set(options) - _KNOWN_OPTIONS
        if unknown:
            raise ConfigError(f"unknown onnxruntime options {sorted(unknown)}", f"known: {sorted(_KNOWN_OPTIONS)}")
        so = ort.SessionOptions()
        if threads is not None:
            so.intra_op_num_threads = int(threads)
        level = options.get("graph_optimization_level", "all")
        if level not in _LEVELS:
            raise ConfigError(f"graph_optimization_level must be one of {_LEVELS}, got {level!r}")
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        mode = options.get("execution_mode", "sequential")
        if mode not in ("sequential", "parallel"):
            raise ConfigError(f"execution_mode must be 'sequential' or 'parallel', got {mode!r}")
        so.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if mode == "parallel"
                             else ort.ExecutionMode.ORT_SEQUENTIAL)
        if options.get("inter_op_threads") is not None:
            so.inter_op_num_threads = int(options["inter_op_threads"])
        if "enable_mem_pattern" in options:
            so.enable_mem_pattern = bool(options["enable_mem_pattern"])
        if options.get("optimized_model_path"):
            so.optimized_model_filepath = os.fspath(options["optimized_model_path"])
        so.log_severity_level = 3  # errors only; warnings become our own messages
        return so

    def compile(self, model: "Model", device: str = "cpu", *, threads: int | None = None,
                **options: Any) -> "OrtSession":
        providers = options.get("providers") or self.providers_for(device)
        so = self.session_options(threads, options)
        return OrtSession(model, so, list(providers), options.get("provider_options"),
                          io_binding=bool(options.get("io_binding", False)))


class OrtSession:
    """An ``onnxruntime.InferenceSession`` plus what edgebench needs around it."""

    def __init__(self, model: "Model", so: Any, providers: list[str], provider_options: Any = None,
                 io_binding: bool = False):
        self.model = model
        self._so = so
        self._providers = providers
        self._provider_options = provider_options
        self._sess = self._create(so)
        self.providers = self._sess.get_providers()
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self.output_names = [o.name for o in self._sess.get_outputs()]
        # the C++ session's run skips the Python wrapper's own feed checks, which the engine
        # has already done (that is most of the 4 us a raw run() costs)
        self._raw = self._sess._sess
        self._ro = _ort().RunOptions()
        self._profiling: tuple[Any, str] | None = None
        self._lock = threading.Lock()
        self._iob = _IOBinder(self._sess, model) if io_binding else None

    def _create(self, so: Any) -> Any:
        ort = _ort()
        try:
            src = str(self.model.path) if self.model.path is not None else self.model.to_bytes()
            return ort.InferenceSession(src, so, providers=self._providers,
                                        provider_options=self._provider_options)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelLoadError(
                f"onnxruntime cannot compile {self.model.name!r}: {msg}",
                "check the model's opset and operators against this onnxruntime version",
            ) from None

    def run(self, feeds: dict[str, "np.ndarray"]) -> list["np.ndarray"]:
        if self._iob is not None:
            return self._iob.run(feeds)
        return self._raw.run(self.output_names, feeds, self._ro)

    # -- profiling: a second session with ORT's profiler on, swapped in for the duration ---------
    def start_profiling(self) -> None:
        with self._lock:
            if self._profiling is not None:
                raise RuntimeError("profiling is already running on this session")
            tmp = tempfile.mkdtemp(prefix="edgebench-prof-")
            so = self._create_profiling_options(tmp)
            prof = self._create(so)
            self._profiling = (self._sess, tmp)
            self._sess, self._raw = prof, prof._sess

    def _create_profiling_options(self, folder: str) -> Any:
        ort = _ort()
        so = ort.SessionOptions()
        for attr in ("intra_op_num_threads", "inter_op_num_threads", "graph_optimization_level",
                     "execution_mode", "enable_mem_pattern", "log_severity_level"):
            setattr(so, attr, getattr(self._so, attr))
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(folder, "ort")
        return so

    def end_profiling(self) -> list[dict]:
        """Stop profiling; return ORT's trace events (Chrome trace format)."""
        import json
        import shutil

        with self._lock:
            if self._profiling is None:
                return []
            prof_sess = self._sess
            (self._sess, folder), self._profiling = self._profiling, None
            self._raw = self._sess._sess
        path = prof_sess.end_profiling()
        try:
            with open(path) as f:
                events = json.load(f)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return events if isinstance(events, list) else events.get("traceEvents", [])

    def memory_bytes(self) -> int:
        """Bytes of weights held by the session (initializers); arenas are counted in process RSS."""
        return self.model.size_bytes


class _IOBinder:
    """IOBinding with fixed-shape outputs preallocated once; copies results out per call.

    Dynamic-shape outputs are bound to the device afresh on every call: a binding keeps the
    shape of its first result otherwise, and the next batch size would be refused.
    """

    def __init__(self, sess: Any, model: "Model"):
        import numpy as np

        self._sess = sess
        self._binding = sess.io_binding()
        self._outputs: list[tuple[str, Any]] = []
        for spec in model.outputs:
            buf = None if spec.is_dynamic else np.empty(spec.shape, dtype=spec.dtype)
            self._outputs.append((spec.name, buf))
        self._dynamic = any(b is None for _, b in self._outputs)
        self._bind_outputs()
        self._lock = threading.Lock()  # one binding: one call at a time

    def _bind_outputs(self) -> None:
        for name, buf in self._outputs:
            if buf is None:
                self._binding.bind_output(name, "cpu")
            else:
                self._binding.bind_output(name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)

    def run(self, feeds: dict) -> list:
        with self._lock:
            for name, arr in feeds.items():
                self._binding.bind_cpu_input(name, arr)
            if self._dynamic:
                self._binding.clear_binding_outputs()
                self._bind_outputs()
            self._sess.run_with_iobinding(self._binding)
            if self._dynamic:
                return self._binding.copy_outputs_to_cpu()
            return [buf.copy() for _, buf in self._outputs]
