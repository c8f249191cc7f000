"""What fits on this machine: memory estimates checked before the work starts."""

from __future__ import annotations

import os

from .errors import CycleULMError


def available_memory_bytes() -> int | None:
    """Memory the process can still use, in bytes (``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units, e.g. ``'3.6 TiB'``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


#: Ceiling used when the available memory cannot be read.
FALLBACK_LIMIT_BYTES = 64 * 1024**3


def check_memory(nbytes: float, what: str, hint: str) -> None:
    """Refuse work whose memory estimate exceeds what this machine has available.

    Parameters
    ----------
    nbytes : float
        Estimated peak memory of the work, bytes.
    what : str
        What needs it, for the message (e.g. ``"the SR maps of 128x160 px at --upsampling 1000"``).
    hint : str
        What to do instead (e.g. ``"use --upsampling 8 or less"``).

    Raises
    ------
    CycleULMError
        With the estimate and the memory available.
    """
    avail = available_memory_bytes()
    limit = FALLBACK_LIMIT_BYTES if avail is None else avail
    if nbytes > limit:
        have = "unknown memory available" if avail is None else f"{format_bytes(avail)} available"
        raise CycleULMError(f"{what} need about {format_bytes(nbytes)} of memory ({have}); {hint}.")
