"""Thread counts that fit the machine: the CPUs a process may use (affinity, a container's cgroup
CPU quota, v1 and v2), how busy they are, and what a run then takes. The cgroup and /proc trees
are constructed, as a container or a host would show them."""

from __future__ import annotations

from pathlib import Path

import pytest

from cot_ray import machine
from cot_ray.config_loading import load_config


@pytest.mark.parametrize("cpus,busy,threads", [(2, 0.0, 2), (2, 0.4, 2), (2, 1.0, 1), (2, 1.6, 1), (2, 3.0, 1),
                                               (8, 3.4, 5), (8, 0.0, 8)])
def test_threads_are_the_free_cpus_at_least_one(cpus, busy, threads):
    assert machine.pick_threads(cpus, busy) == threads


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _v2(tmp_path: Path, cpu_max: str, usage_usec: int = 0, nested: str = "") -> tuple[Path, Path]:
    """A cgroup v2 tree (the pod's quota on its own cgroup, ``nested`` below it without one)."""
    root, proc = tmp_path / "cgroup", tmp_path / "proc"
    _write(root / "cgroup.controllers", "cpu memory\n")
    _write(root / "kubepods" / "pod1" / "cpu.max", cpu_max + "\n")
    _write(root / "kubepods" / "pod1" / "cpu.stat", f"usage_usec {usage_usec}\nuser_usec 0\n")
    if nested:
        _write(root / "kubepods" / "pod1" / nested / "cpu.max", "max 100000\n")
        _write(root / "kubepods" / "pod1" / nested / "cpu.stat", f"usage_usec {usage_usec}\n")
    _write(proc / "self" / "cgroup", f"0::/kubepods/pod1{'/' + nested if nested else ''}\n")
    return root, proc


def _v1(tmp_path: Path, quota: int, period: int, usage_ns: int = 0) -> tuple[Path, Path]:
    root, proc = tmp_path / "cgroup", tmp_path / "proc"
    for ctl in ("cpu,cpuacct",):
        _write(root / ctl / "docker" / "abc" / "cpu.cfs_quota_us", f"{quota}\n")
        _write(root / ctl / "docker" / "abc" / "cpu.cfs_period_us", f"{period}\n")
        _write(root / ctl / "docker" / "abc" / "cpuacct.usage", f"{usage_ns}\n")
    _write(proc / "self" / "cgroup", "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n")
    return root, proc


def test_a_container_quota_caps_the_cpu_count_v2(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "_affinity", lambda: set(range(64)))  # a 64-core host
    root, proc = _v2(tmp_path, "200000 100000", nested="app")  # the pod: 2 CPUs; its child cgroup: no limit
    assert machine.cgroup_cpu_limit(root, proc) == 2.0
    assert machine.cpu_count(root, proc) == 2
    root, proc = _v2(tmp_path / "b", "150000 100000")  # 1.5 CPUs: one whole CPU
    assert machine.cpu_count(root, proc) == 1
    root, proc = _v2(tmp_path / "c", "max 100000")  # no limit: the affinity mask
    assert machine.cgroup_cpu_limit(root, proc) is None and machine.cpu_count(root, proc) == 64


def test_a_container_quota_caps_the_cpu_count_v1(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "_affinity", lambda: set(range(64)))
    root, proc = _v1(tmp_path, 300000, 100000)
    assert machine.cgroup_cpu_limit(root, proc) == 3.0 and machine.cpu_count(root, proc) == 3
    root, proc = _v1(tmp_path / "b", -1, 100000)  # -1: unlimited
    assert machine.cpu_count(root, proc) == 64
    # a container that sees its own cgroup as the root: the path of /proc/self/cgroup is absent
    root, proc = tmp_path / "c" / "cgroup", tmp_path / "c" / "proc"
    _write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "200000\n")
    _write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    _write(proc / "self" / "cgroup", "4:cpu,cpuacct:/docker/abc\n")
    assert machine.cpu_count(root, proc) == 2


def test_the_affinity_mask_caps_the_cpu_count(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "_affinity", lambda: {0, 3})  # taskset -c 0,3
    assert machine.cpu_count(tmp_path / "none", tmp_path / "none") == 2


def test_busy_cpus_under_a_quota_is_the_cgroups_own_usage(tmp_path, monkeypatch):
    """A 2-CPU pod on a busy 64-core host: the host's load does not count, the pod's does."""
    monkeypatch.setattr(machine, "_affinity", lambda: set(range(64)))
    root, proc = _v2(tmp_path, "200000 100000", usage_usec=5_000_000)
    stat = root / "kubepods" / "pod1" / "cpu.stat"
    clock = iter([100.0, 100.5])
    monkeypatch.setattr(machine.time, "monotonic", lambda: next(clock))
    # half a second later, 0.4 s more CPU time: 0.8 CPUs busy with the pod's other work
    monkeypatch.setattr(machine.time, "sleep", lambda s: stat.write_text("usage_usec 5400000\n"))
    assert machine.busy_cpus(0.5, root, proc) == pytest.approx(0.8)
    assert machine.pick_threads(machine.cpu_count(root, proc), 0.8) == 1


def test_busy_cpus_counts_only_the_cpus_of_the_affinity_mask(tmp_path, monkeypatch):
    proc = tmp_path / "proc"

    def stat(busy0: int, busy1: int, t: int) -> str:  # cpu0 and cpu1: user, nice, system, idle, iowait
        return (f"cpu  {busy0 + busy1} 0 0 {2 * t - busy0 - busy1} 0\n"
                f"cpu0 {busy0} 0 0 {t - busy0} 0\ncpu1 {busy1} 0 0 {t - busy1} 0\nintr 1 2\n")

    _write(proc / "stat", stat(0, 0, 1000))
    monkeypatch.setattr(machine.time, "sleep", lambda s: (proc / "stat").write_text(stat(100, 0, 1100)))
    monkeypatch.setattr(machine, "_affinity", lambda: {0})  # cpu0 fully busy in between, cpu1 idle
    assert machine.busy_cpus(0.0, tmp_path / "none", proc) == pytest.approx(1.0)
    (proc / "stat").write_text(stat(0, 0, 1000))
    monkeypatch.setattr(machine, "_affinity", lambda: {1})
    assert machine.busy_cpus(0.0, tmp_path / "none", proc) == pytest.approx(0.0)
    (proc / "stat").write_text(stat(0, 0, 1000))
    monkeypatch.setattr(machine, "_affinity", lambda: {0, 1})
    assert machine.busy_cpus(0.0, tmp_path / "none", proc) == pytest.approx(1.0)


def test_a_run_without_run_threads_takes_the_free_cpus_and_records_them(monkeypatch):
    monkeypatch.setattr(machine, "cpu_count", lambda: 2)
    monkeypatch.setattr(machine, "busy_cpus", lambda: 1.1)
    cfg = load_config(None, [])
    chosen, note = machine.resolve_threads(cfg)
    assert chosen.run.threads == 1  # saved with the run's config: a resumed run keeps it
    assert cfg.run.threads == 0 and cfg.run.threads_host == ""  # a new config: the given one is left as it was
    assert note == "1 torch thread(s): 2 CPU(s), 1.1 busy with other work (set run.threads to choose)"
    given = load_config(None, ["run.threads=3"])
    kept, note = machine.resolve_threads(given)
    assert note == "3 torch thread(s) (run.threads), 2 CPU(s)" and kept.run.threads == 3


def test_an_automatic_thread_count_is_chosen_again_on_another_machine_only(monkeypatch):
    monkeypatch.setattr(machine, "cpu_count", lambda: 64)
    monkeypatch.setattr(machine, "busy_cpus", lambda: 0.0)
    monkeypatch.setattr(machine, "host_name", lambda: "laptop")
    cfg, _ = machine.resolve_threads(load_config(None, []))
    assert (cfg.run.threads, cfg.run.threads_host) == (64, "laptop")
    assert machine.resolve_threads(cfg)[1] == "64 torch thread(s) (run.threads), 64 CPU(s)"  # resumed here: kept
    monkeypatch.setattr(machine, "cpu_count", lambda: 2)
    monkeypatch.setattr(machine, "host_name", lambda: "pod-7")
    moved, note = machine.resolve_threads(cfg)  # resumed in a 2-CPU pod
    assert moved.run.threads == 2 and moved.run.threads_host == "pod-7"
    assert note.endswith("; chosen again: the run chose 64 on another machine (laptop)")
    given = load_config(None, ["run.threads=8"])  # a count the user gave is theirs, wherever it runs
    kept, note = machine.resolve_threads(given)
    assert note.startswith("8 torch thread(s) (run.threads)") and kept.run.threads == 8


def test_torch_threads_sets_the_count_inside_and_puts_it_back_after():
    import torch

    before = torch.get_num_threads()
    with machine.torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
