"""What this CPU can do, read without torch (so a GUI can ask at no cost): its flags from
``/proc/cpuinfo`` (Linux; empty elsewhere)."""
from __future__ import annotations

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
