"""Shared bits of the benchmark scripts: the CPU banner and interleaved timing."""
from __future__ import annotations

import platform
import time
from typing import Callable

import numpy as np


def banner(title: str) -> None:
    """Print what is measured and on which CPU (what pays differs between CPUs)."""
    try:
        from edgebench.devices import cpu_info

        c = cpu_info()
        cpu = f"{c.model} | {c.physical_cores} cores / {c.logical_cores} threads | ISA: {', '.join(c.isa)}"
    except Exception as e:  # the banner must never stop a benchmark
        cpu = f"{platform.processor() or platform.machine()} (cpu_info unavailable: {e})"
    import onnxruntime

    print(f"== {title}")
    print(f"   CPU: {cpu}")
    print(f"   python {platform.python_version()}, onnxruntime {onnxruntime.__version__}")


def latencies_us(fn: Callable[[], object], n: int) -> np.ndarray:
    """Per-call latencies of ``fn`` in microseconds."""
    out = np.empty(n)
    pc = time.perf_counter_ns
    for i in range(n):
        t = pc()
        fn()
        out[i] = pc() - t
    return out / 1e3


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int, n: int,
                warmup: int = 500) -> dict[str, np.ndarray]:
    """Time each candidate in alternating rounds so drift in machine load hits all alike."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[np.ndarray]] = {k: [] for k in candidates}
    for r in range(rounds):
        order = list(candidates) if r % 2 == 0 else list(reversed(candidates))
        for k in order:
            samples[k].append(latencies_us(candidates[k], n))
    return {k: np.concatenate(v) for k, v in samples.items()}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def zoo_file(name: str) -> str:
    """The zoo model ``name`` saved as an .onnx file (what the raw tool loads too)."""
    import os
    import tempfile

    import edgebench as eb

    path = os.path.join(tempfile.mkdtemp(), f"{name}.onnx")
    eb.zoo.load(name).save(path)
    return path


def raw_session(path: str, threads: int = 1):
    """A plain onnxruntime CPU session, the baseline every engine figure is compared with."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
