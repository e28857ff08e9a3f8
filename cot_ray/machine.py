"""What this machine can give a run: CPUs, how many of them other work keeps busy, the thread
count that fits, and the process-wide settings of a process that trains.

Oversubscribed cores are the slowest way to run torch on a CPU: OpenMP threads that share a
core with another busy process wait for each other at every parallel region (a 30-iteration
run on a 2-core laptop with one other busy process took 2 min 29 s with torch's default two
threads and 34 s with one). So a run that does not set ``run.threads`` takes as many threads
as there are CPUs that nothing else is using, measured when it starts.
"""

from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Optional, Tuple

import torch

from .config import Config
from .memory import retain_freed_memory

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC = Path("/proc")


def _affinity() -> Optional[set]:
    """The CPUs this process may run on, where the OS says (Linux)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _cgroup_dirs(root: Path, proc: Path, controller: str) -> list[Path]:
    """This process's cgroup directories that ``controller`` governs, innermost first, up to the
    mount root: cgroup v2 (one ``0::/path`` line) or v1 (a ``N:cpu,cpuacct:/path`` line).
    Inside a container the path in /proc/self/cgroup may not exist under the mount (the
    container sees its own cgroup as the root): then the mount root alone is used."""
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        hid, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hid == "0" and controllers == "":
            if not (root / "cgroup.controllers").exists():
                continue  # the v2 part of a hybrid layout: the cpu controller is v1's
            base = root  # v2: one unified hierarchy
        elif controller in controllers.split(","):
            base = next((root / name for name in (controllers, controller) if (root / name).is_dir()), None)
            if base is None:
                continue
        else:
            continue
        here = base / path.strip("/") if path.strip("/") else base
        if not here.is_dir():
            here = base
        dirs = [here]
        while dirs[-1] != base:
            dirs.append(dirs[-1].parent)
        return dirs
    return []


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc: Path = PROC) -> Optional[float]:
    """CPUs' worth of time this process's cgroups allow (the smallest CFS quota / period on the
    way to the root: cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), or
    None without a limit. A container limited to 2 CPUs on a 64-core host gets 2.0 here."""
    limits = []
    for d in _cgroup_dirs(root, proc, "cpu"):
        try:
            if (d / "cpu.max").exists():
                quota, period = (d / "cpu.max").read_text().split()[:2]
                if quota != "max":
                    limits.append(float(quota) / float(period))
            elif (d / "cpu.cfs_quota_us").exists():
                quota = float((d / "cpu.cfs_quota_us").read_text())
                if quota > 0:
                    limits.append(quota / float((d / "cpu.cfs_period_us").read_text()))
        except (OSError, ValueError):
            continue
    return min(limits) if limits else None


def cpu_count(root: Path = CGROUP_ROOT, proc: Path = PROC) -> int:
    """CPUs this process may use: its affinity mask (``taskset``, a cpuset), capped by its
    cgroup's CPU quota rounded down (at least one)."""
    mask = _affinity()
    cpus = len(mask) if mask else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit(root, proc)
    if limit is not None:
        cpus = min(cpus, max(1, int(limit)))
    return cpus


def _cpu_jiffies(proc: Path, cpus: Optional[set]) -> Optional[tuple[float, float]]:
    """(busy, total) jiffies of the CPUs in ``cpus`` (None: all) from /proc/stat's per-CPU lines."""
    try:
        lines = (proc / "stat").read_text().splitlines()
    except OSError:
        return None
    busy = total = 0.0
    for line in lines:
        name = line.split(" ", 1)[0]
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        fields = [float(x) for x in line.split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        busy += sum(fields) - idle
        total += sum(fields)
    return (busy, total) if total > 0 else None


def _cgroup_usage_s(root: Path, proc: Path) -> Optional[float]:
    """CPU seconds used so far by this process's cgroup (v2 ``cpu.stat`` usage_usec, v1
    ``cpuacct.usage`` in ns), or None."""
    for d in _cgroup_dirs(root, proc, "cpu")[:1] + _cgroup_dirs(root, proc, "cpuacct")[:1]:
        try:
            if (d / "cpu.stat").exists() and (d / "cpu.max").exists():
                for line in (d / "cpu.stat").read_text().splitlines():
                    if line.startswith("usage_usec "):
                        return float(line.split()[1]) / 1e6
            if (d / "cpuacct.usage").exists():
                return float((d / "cpuacct.usage").read_text()) / 1e9
        except (OSError, ValueError):
            continue
    return None


def busy_cpus(interval: float = 0.3, root: Path = CGROUP_ROOT, proc: Path = PROC) -> float:
    """How many of this process's CPUs other work keeps busy now (this process sleeps while it
    measures). Under a cgroup CPU quota (a container): its cgroup's CPU time over ``interval``
    seconds, since the quota is what that work takes from this run, whatever the rest of the
    host does. Otherwise the busy share of the CPUs in this process's affinity mask from
    /proc/stat. Elsewhere the 1-minute load average; 0 where neither exists."""
    if cgroup_cpu_limit(root, proc) is not None:
        first = _cgroup_usage_s(root, proc)
        if first is not None:
            t0 = time.monotonic()
            time.sleep(interval)
            second = _cgroup_usage_s(root, proc)
            if second is not None:
                return max(0.0, (second - first) / max(time.monotonic() - t0, 1e-9))
    mask = _affinity()
    first = _cpu_jiffies(proc, mask)
    if first is not None:
        time.sleep(interval)
        second = _cpu_jiffies(proc, mask)
        if second is not None and second[1] > first[1]:
            share = (second[0] - first[0]) / (second[1] - first[1])
            return max(0.0, share) * (len(mask) if mask else (os.cpu_count() or 1))
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def pick_threads(cpus: int, busy: float) -> int:
    """Threads for a process that may use the ``cpus`` CPUs of which ``busy`` are taken: the
    free ones, rounded to the nearest whole CPU, at least one."""
    return max(1, min(cpus, int(cpus - busy + 0.5)))


def host_name() -> str:
    """This machine's name, recorded with an automatic thread count (a resumed run on another
    machine chooses again)."""
    return socket.gethostname()


def configure_process(threads: int) -> int:
    """Process-wide settings for training in this process: torch's intra-op threads and glibc's
    malloc keeping freed memory (memory.py); -> the thread count. For a process that trains
    and nothing else (the command line, a Ray worker): the library never calls it on a
    caller's process."""
    torch.set_num_threads(threads)
    retain_freed_memory()
    return threads


@contextmanager
def torch_threads(threads: int) -> Iterator[int]:
    """torch's intra-op thread count is ``threads`` while inside (the run's float sums, and so
    its bits, depend on it) and what it was before once outside."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def resolve_threads(cfg: Config) -> Tuple[Config, str]:
    """-> (``cfg`` with ``run.threads`` set when it is 0, a line saying which); ``cfg`` itself
    is left as it was. The choice: the CPUs that other work leaves free now (at least one), so
    that evaluation and the in-process loop do not oversubscribe the cores. It and the machine
    it was made on (``run.threads_host``) are recorded in the run's config: a run resumed on
    the same machine keeps it (the float sums, and so the bits, depend on it), one resumed on
    another machine chooses again for that hardware."""
    cpus = cpu_count()
    run, host = cfg.run, host_name()
    if run.threads and run.threads_host in ("", host):
        return cfg, f"{run.threads} torch thread(s) (run.threads), {cpus} CPU(s)"
    busy = busy_cpus()
    chosen = replace(cfg, run=replace(run, threads=pick_threads(cpus, busy), threads_host=host))
    return chosen, (f"{chosen.run.threads} torch thread(s): {cpus} CPU(s), {busy:.1f} busy with other work (set "
                    "run.threads to choose)" + (f"; chosen again: the run chose {run.threads} on another machine "
                                                f"({run.threads_host})" if run.threads else ""))
