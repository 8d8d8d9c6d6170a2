"""Peak-memory probes for benchmark worker subprocesses (Linux ``/proc``; numpy-free).

Scripts in this folder run their workers as ``python benchmarks/<script>.py --worker``,
so this module is importable there under any interpreter (ours or a peer's).
"""

from __future__ import annotations


def status_bytes(key: str) -> int:
    """A ``/proc/self/status`` size field (e.g. ``"VmHWM:"``, ``"VmRSS:"``) in bytes; 0 if absent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    """Reset ``VmHWM`` (peak RSS) to the current RSS, where the kernel allows it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
