"""What this CPU is, as far as it decides which engine is fastest: /proc/cpuinfo's vendor and flags.

The engine chain (handler/engine.py) and the bench's records (benchmarks/results.py) read it here. Off Linux
there is no /proc/cpuinfo: no flags, no vendor, and the engines that need one fall back.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


@cache
def _first_processor() -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        text = CPUINFO.read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block is enough: the machine's cores are alike
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    return fields


def field(name: str) -> str | None:
    """A /proc/cpuinfo field of the first processor ("model name", "vendor_id", "flags"), or None."""
    return _first_processor().get(name)


def flags() -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is absent)."""
    return frozenset((field("flags") or "").split())


def amx() -> bool:
    """Whether the CPU has AMX's bf16 tile units (Intel Sapphire Rapids and later)."""
    return "amx_bf16" in flags()


def intel_avx512() -> bool:
    """Whether the CPU is Intel's with AVX-512: full-width 512-bit units (AMD's Zen 4 runs each as two halves)."""
    return field("vendor_id") == "GenuineIntel" and "avx512f" in flags()
