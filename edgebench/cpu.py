"""The host CPU: model, cores and the ISA extensions that decide what pays (AVX2, AVX-512,
VNNI, AMX, NEON...), read from ``/proc/cpuinfo`` (py-cpuinfo elsewhere)."""
from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["CPUInfo", "cpu_info", "usable_cores"]

_ISA = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
    "neon", "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2", "sme",
)
_VENDORS = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD", "0x41": "ARM", "0x42": "Broadcom",
            "0x43": "Cavium", "0x48": "HiSilicon", "0x4e": "NVIDIA", "0x51": "Qualcomm",
            "0x61": "Apple", "0xc0": "Ampere"}

@dataclass(frozen=True)
class CPUInfo:
    """The host CPU.  ``isa`` holds the inference-relevant extensions present, e.g. ``avx512_vnni``."""

    model: str
    vendor: str
    arch: str
    physical_cores: int
    logical_cores: int
    isa: tuple[str, ...]
    memory_bytes: int | None = None

    @property
    def has_avx512(self) -> bool:
        return "avx512f" in self.isa

    @property
    def has_vnni(self) -> bool:
        return "avx512_vnni" in self.isa or "avx_vnni" in self.isa

    @property
    def has_amx(self) -> bool:
        return "amx_tile" in self.isa and ("amx_int8" in self.isa or "amx_bf16" in self.isa)


@lru_cache(maxsize=1)
def cpu_info() -> CPUInfo:
    """Describe the host CPU from ``/proc/cpuinfo`` (py-cpuinfo / platform elsewhere)."""
    arch = platform.machine() or "unknown"
    model = vendor = ""
    flags: set[str] = set()
    physical = 0
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        text = ""
    if text:
        cores: set[tuple[str, str]] = set()
        phys = core = ""
        for line in text.splitlines() + [""]:
            key, _, value = (s.strip() for s in line.partition(":"))
            if not key:  # blank line ends one processor's block
                if core:
                    cores.add((phys, core))
                phys = core = ""
            elif key in ("model name", "Model name", "Hardware") and not model:
                model = value
            elif key in ("vendor_id", "CPU implementer") and not vendor:
                vendor = _VENDORS.get(value, value)
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
            elif key == "physical id":
                phys = value
            elif key == "core id":
                core = value
        physical = len(cores)
    if not flags or not model:
        try:
            import cpuinfo  # py-cpuinfo: slower, but works on macOS and Windows

            info = cpuinfo.get_cpu_info()
            flags = flags or set(info.get("flags", ()))
            model = model or info.get("brand_raw", "")
            vendor = vendor or _VENDORS.get(info.get("vendor_id_raw", ""), info.get("vendor_id_raw", ""))
        except Exception:  # noqa: BLE001 - py-cpuinfo is optional and can fail in odd sandboxes
            pass
    if arch.lower() in ("aarch64", "arm64") and ("asimd" in flags or sys.platform == "darwin"):
        flags |= {"asimd", "neon"}  # Advanced SIMD is NEON on 64-bit ARM, and always there on Apple silicon
    logical = os.cpu_count() or 1
    if not physical:
        try:
            import psutil

            physical = psutil.cpu_count(logical=False) or logical
        except Exception:  # noqa: BLE001
            physical = logical
    return CPUInfo(
        model=model or platform.processor() or arch,
        vendor=vendor or "unknown",
        arch=arch,
        physical_cores=physical,
        logical_cores=logical,
        isa=tuple(f for f in _ISA if f in flags),
        memory_bytes=_memory_bytes(),
    )


def _memory_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None


def usable_cores() -> int:
    """Cores this process may run on: its affinity mask where the OS has one (a container or
    ``taskset`` limit), else the logical cores."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)
