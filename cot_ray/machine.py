"""What this machine can give a run: CPUs, how many of them other work keeps busy, and the
thread count that fits.

Oversubscribed cores are the slowest way to run torch on a CPU: OpenMP threads that share a
core with another busy process wait for each other at every parallel region (a 30-iteration
run on a 2-core laptop with one other busy process took 2 min 29 s with torch's default two
threads and 34 s with one). So a run that does not set ``run.threads`` takes as many threads
as there are CPUs that nothing else is using, measured when it starts.
"""

from __future__ import annotations

import os
import time
from typing import Optional


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _proc_stat() -> Optional[tuple[float, float]]:
    """(busy, total) jiffies of all CPUs from /proc/stat, or None where there is none."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cpus(interval: float = 0.3) -> float:
    """How many CPUs' worth of work the machine is doing now (other processes: this one sleeps
    while it measures). Linux: /proc/stat over ``interval`` seconds; elsewhere the 1-minute
    load average; 0 where neither exists."""
    first = _proc_stat()
    if first is not None:
        time.sleep(interval)
        second = _proc_stat()
        if second is not None and second[1] > first[1]:
            share = (second[0] - first[0]) / (second[1] - first[1])
            return max(0.0, share) * (os.cpu_count() or 1)
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def pick_threads(cpus: int, busy: float) -> int:
    """Threads for a process that may use the ``cpus`` CPUs of which ``busy`` are taken: the
    free ones, rounded to the nearest whole CPU, at least one."""
    return max(1, min(cpus, int(cpus - busy + 0.5)))
