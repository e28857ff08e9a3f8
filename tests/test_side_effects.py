"""The library changes no process state: run_trainer and runtime.train leave torch's thread
count, the signal handlers, sys.stdout/sys.stderr and the config they were given as they
were (the command line sets its own process up: tests/test_cli.py, tests/test_reliability.py)."""

import copy
import signal
import sys

import pytest
import torch

from cot_ray import loop

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _process() -> dict:
    return {"threads": torch.get_num_threads(), "handlers": {s: signal.getsignal(s) for s in SIGNALS},
            "stdout": sys.stdout, "stderr": sys.stderr}


def _watching(seen: list):
    """An on_eval hook recording the process state while the run runs."""
    return lambda iteration, metrics, run_dir, elapsed: seen.append(_process())


def _check(train, cfg, **kw):
    before, given = _process(), copy.deepcopy(cfg)
    threads = before["threads"] + 1  # not the process's count: the run's own, while it runs
    cfg.run.threads = threads
    given.run.threads = threads
    seen: list = []
    summary = train(cfg, echo=lambda s: None, on_eval=_watching(seen), **kw)
    assert summary["iteration"] == 2 and seen
    assert _process() == before  # threads, handlers, stdout and stderr as they were
    assert cfg == given  # the config passed in is not the run's scratch pad
    assert all(s["handlers"] == before["handlers"] for s in seen)  # no handler installed for the run
    assert all(s["threads"] == threads for s in seen)  # the run's float sums use run.threads


def test_run_trainer_changes_no_process_state_and_not_its_config(tiny):
    _check(loop.run_trainer, tiny("run.iters=2", "eval.every=1", "runtime.mode=local"))


def test_a_chosen_thread_count_is_recorded_in_the_run_not_in_the_given_config(tiny):
    cfg = tiny("run.iters=1", "run.threads=0", "runtime.mode=local")
    given = copy.deepcopy(cfg)
    summary = loop.run_trainer(cfg, echo=lambda s: None)
    assert cfg == given
    from cot_ray.rundir import resume_config
    assert resume_config(summary["run_dir"]).run.threads >= 1  # the run's own config holds the choice


def test_runtime_train_with_actors_changes_no_process_state_in_the_driver(tiny):
    ray = pytest.importorskip("ray")
    from cot_ray import runtime
    from tests.conftest import CPU_ONLY_WORKERS

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env=CPU_ONLY_WORKERS)
    try:
        _check(runtime.train, tiny("run.iters=2", "eval.every=1", "runtime.mode=actors"))
    finally:
        ray.shutdown()
