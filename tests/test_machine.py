"""Thread counts that fit the machine: how busy it is, and what a run then takes."""

from __future__ import annotations

import pytest

from cot_ray import loop, machine
from cot_ray.config import load_config


@pytest.mark.parametrize("cpus,busy,threads", [(2, 0.0, 2), (2, 0.4, 2), (2, 1.0, 1), (2, 1.6, 1), (2, 3.0, 1),
                                               (8, 3.4, 5), (8, 0.0, 8)])
def test_threads_are_the_free_cpus_at_least_one(cpus, busy, threads):
    assert machine.pick_threads(cpus, busy) == threads


def test_busy_cpus_reads_the_share_of_busy_time(monkeypatch):
    readings = iter([(100.0, 1000.0), (175.0, 1100.0)])  # 75 of 100 jiffies busy
    monkeypatch.setattr(machine, "_proc_stat", lambda: next(readings))
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 4)
    assert machine.busy_cpus(interval=0.0) == pytest.approx(3.0)


def test_a_run_without_run_threads_takes_the_free_cpus_and_records_them(monkeypatch):
    monkeypatch.setattr(loop, "cpu_count", lambda: 2)
    monkeypatch.setattr(loop, "busy_cpus", lambda: 1.1)
    cfg = load_config(None, [])
    note = loop.resolve_threads(cfg)
    assert cfg.run.threads == 1  # saved with the run's config: a resumed run keeps it
    assert note == "1 torch thread(s): 2 CPU(s), 1.1 busy with other work (set run.threads to choose)"
    given = load_config(None, ["run.threads=3"])
    assert loop.resolve_threads(given) == "3 torch thread(s) (run.threads), 2 CPU(s)" and given.run.threads == 3
