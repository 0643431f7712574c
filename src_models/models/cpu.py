"""What this CPU can do, read without torch (so a GUI can ask at no cost): its flags from
``/proc/cpuinfo`` (Linux; empty elsewhere), and the precision the environment sets as every run's default."""
from __future__ import annotations

import os

BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # native bfloat16 arithmetic


def cpu_flags() -> frozenset[str]:
    """The first processor's flags in ``/proc/cpuinfo``; empty when it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16_flags() -> bool | None:
    """True or False from the flags; None when there are no flags to tell (not Linux)."""
    flags = cpu_flags()
    return bool(BF16_FLAGS & flags) if flags else None


PRECISION_ENV = "DIFFINFINITE_PRECISION"  # auto (unset), float32 or bf16: the default of every run's precision


def precision_override() -> str | None:
    """The precision ``DIFFINFINITE_PRECISION`` names (``float32`` or ``bf16``); None when it is unset
    or ``auto``.  A value it cannot mean raises ValueError naming the variable."""
    value = os.environ.get(PRECISION_ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in ("float32", "bf16"):
        raise ValueError(f"{PRECISION_ENV} must be auto, float32 or bf16, got {value!r}")
    return value

