"""Sweeps with Ray Tune on a simulated two-node cluster (``ray.cluster_utils.Cluster``):
ASHA through the CLI, PBT restoring trials from checkpoints, and resuming an interrupted sweep.

Each node has 2 logical CPUs and a CoT trial needs 3 (its driver plus generator and mediator):
every trial spans both nodes, so G's samples and M's weights cross between nodes, and a worker
placed outside its trial's placement group would not fit anywhere.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.tune")

from click.testing import CliRunner  # noqa: E402
from ray import tune as ray_tune  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from cot_ray.checkpoint import CHECKPOINT, CONFIG, load_checkpoint  # noqa: E402
from cot_ray.cli import main  # noqa: E402
from cot_ray.config_loading import load_config, read_yaml  # noqa: E402
from cot_ray.placement import PlacementError  # noqa: E402
from cot_ray.rundir import read_metrics  # noqa: E402
from cot_ray.stopping import stop_signals_as_ctrl_c  # noqa: E402
from cot_ray.sweep import spec as sweep_spec  # noqa: E402
from cot_ray.sweep import trial as sweep_trial  # noqa: E402
from cot_ray.sweep import tune as sweeps  # noqa: E402
from tests.conftest import CPU_ONLY_WORKERS, TINY  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def two_nodes():
    """A head and a worker node of 2 CPUs each, this process connected as the driver."""
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0, "include_dashboard": False})
    cluster.add_node(num_cpus=2, num_gpus=0)  # no GPUs: a machine's real ones would change the numbers
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR", runtime_env=CPU_ONLY_WORKERS)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def _overrides(data_cache: str) -> list[str]:
    return TINY + [f"data.cache_dir={data_cache}", "run.log_every=2"]


def _write_sweep(tmp_path, search: str, tune: str, name: str = "sweep.yaml") -> str:
    path = tmp_path / name
    path.write_text(f"base: {{eval: {{every: 2}}}}\nsearch:\n{search}\ntune: {tune}\n")
    return str(path)


def _trials(exp: str) -> dict:
    """trial id -> Tune's Trial (status, config, last_result, path) from the saved experiment."""
    return {t.trial_id: t for t in ray_tune.ExperimentAnalysis(exp).trials}


def _placement_groups() -> dict:
    return ray.util.placement_group_table()


def _only_trial_placement_groups(before: dict, bundles: int) -> None:
    """Every placement group made since ``before`` is a trial's (driver + one bundle per worker):
    the runtime placed its workers into the trial's group instead of making its own."""
    new = {k: v for k, v in _placement_groups().items() if k not in before}
    assert new and all(len(pg["bundles"]) == bundles for pg in new.values()), new


def test_a_trial_the_cluster_cannot_host_fails_before_anything_starts(two_nodes, tmp_path, data_cache):
    path = _write_sweep(tmp_path, "  mediator.dropout: {uniform: [0.2, 0.6]}", "{per_trial: {iters: 2}}")
    sweep = sweep_spec.load_sweep(path, _overrides(data_cache) + ["runtime.gpus_per_worker=1"],
                              storage=str(tmp_path / "tune"), name="gpu")
    with pytest.raises(PlacementError) as e:
        sweeps.run_sweep(sweep)
    msg = str(e.value)
    assert "\n" not in msg and "2 worker(s)" in msg and "GPU" in msg and "0 trains on CPUs" in msg, msg
    assert not (tmp_path / "tune").exists()


def test_asha_smoke_sweep_across_two_nodes_writes_the_best_config(two_nodes, tmp_path, data_cache):
    """The shipped smoke sweep, through the CLI, on the two nodes."""
    path = os.path.join(ROOT, "tune_configs", "smoke.yaml")
    sets = ["--set", f"data.cache_dir={data_cache}"]
    pgs = _placement_groups()
    res = CliRunner().invoke(main, ["tune", path, "--storage", str(tmp_path / "tune"), "--name", "asha", *sets],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    summary = json.loads(lines[-1])
    exp = summary["experiment"]
    assert exp == str(tmp_path / "tune" / "asha") and summary["trials"] == 4 and not summary["interrupted"]

    trials = _trials(exp)
    assert len(trials) == 4 and all(t.status == "TERMINATED" for t in trials.values())
    results = {tid: t.last_result for tid, t in trials.items()}
    # Every trial reported namespaced eval metrics with a checkpoint; ASHA (rungs at 4 and 8
    # iterations, halving) stopped some early and ran the others to the end.
    for tid, r in results.items():
        assert {"iteration", "eval/balanced_nll", "eval/nll_oracle", "eval/nll_test", "eval/jsd"} <= set(r)
        assert r["eval/balanced_nll"] == pytest.approx(r["eval/nll_oracle"] + r["eval/nll_test"])
        assert r["iteration"] in (4, 8, 12)
        assert os.path.exists(os.path.join(trials[tid].path, "run", CHECKPOINT))
    ends = sorted(r["iteration"] for r in results.values())
    assert ends[-1] == 12 and ends[0] < 12, ends
    assert all(r["budget_done"] == (r["iteration"] == 12) for r in results.values())
    # The table lists every trial with its sampled values, final metric and status.
    table = [line for line in lines if line.split() and line.split()[0] in trials]
    assert len(table) == 4 and all(line.split()[-1] in ("done", "stopped") for line in table)
    assert "cot.g_steps" in res.output and "mediator.dropout" in res.output

    # The best trial is the one with the lowest final metric, and its config runs as is.
    best_id = summary["best_trial"]
    assert results[best_id]["eval/balanced_nll"] == min(r["eval/balanced_nll"] for r in results.values())
    best = load_config(summary["best_config"])
    values = trials[best_id].config
    assert best.cot.g_steps == values["cot.g_steps"] and best.mediator.dropout == values["mediator.dropout"]
    assert best.m_optim.lr == values["m_optim.lr"] and best.run.iters == 12 and best.run.logdir == "runs"
    assert best.mediator.hidden_dim == 16 and best.data.cache_dir == data_cache  # base config and --set
    # Trained again from it (in process, on one thread like each worker), the run ends where
    # the best trial did.
    again = CliRunner().invoke(main, ["train", "--json", "--config", summary["best_config"], "--local",
                                      "--set", "run.threads=1",
                                      "--logdir", str(tmp_path / "runs")], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    rerun = json.loads(again.output.strip().splitlines()[-1])
    assert rerun["iteration"] == 12
    assert rerun["metrics"]["balanced_nll"] == pytest.approx(summary["best_metric"], rel=1e-9)

    # Every trial spanned both nodes: its driver and two workers on 2 + 2 CPUs.
    cluster_nodes = {n["NodeID"][:8] for n in ray.nodes() if n["Alive"]}
    assert len(cluster_nodes) == 2
    for r in results.values():
        assert len(r["nodes"].split(",")) == 3 and set(r["nodes"].split(",")) == cluster_nodes, r["nodes"]
    _only_trial_placement_groups(pgs, 3)

    # A second sweep with the same name would overwrite the first: refused.
    again = CliRunner().invoke(main, ["tune", path, "--storage", str(tmp_path / "tune"), "--name", "asha", *sets])
    assert again.exit_code != 0 and "already exists" in again.output and "--resume" in again.output


def test_pbt_restores_trials_from_checkpoints_with_perturbed_values(two_nodes, tmp_path, data_cache):
    # Evaluations (and PBT's only perturbation) at iteration 2, the end at 3.
    path = _write_sweep(tmp_path, "  mediator.dropout: {uniform: [0.1, 0.6]}\n"
                        "  m_optim.lr: {loguniform: [1.0e-3, 3.0e-2]}",
                        "{num_samples: 2, per_trial: {iters: 3}, seed: 1, scheduler: {name: pbt, synch: true, "
                        "quantile_fraction: 0.5, resample_probability: 0.0}}")
    sweep = sweep_spec.load_sweep(path, _overrides(data_cache), storage=str(tmp_path / "tune"), name="pbt")
    pgs = _placement_groups()
    summary = sweeps.run_sweep(sweep)
    assert not summary["interrupted"] and summary["best_config"]
    trials = _trials(summary["experiment"])
    assert all(t.status == "TERMINATED" and t.last_result["iteration"] == 3 for t in trials.values())
    # Synchronous PBT at iteration 2 pauses both trials: each restarts from a checkpoint, the
    # weaker one from the stronger one's.
    sessions = {tid: sweep_trial.read_sessions(t.path) for tid, t in trials.items()}
    assert all(len(s) == 2 and s[1]["iteration"] == 2 and s[1]["run"] == "run-2" for s in sessions.values())
    (loser,) = [t for tid, t in trials.items() if sessions[tid][1]["restored_from"] != tid]
    (winner,) = [t for t in trials.values() if t is not loser]
    assert sessions[loser.trial_id][1]["restored_from"] == winner.trial_id
    assert loser.last_result["exploits"] == 1 and loser.last_result["restores"] == 1
    assert winner.last_result["exploits"] == 0 and winner.last_result["restores"] == 1
    session = os.path.join(loser.path, "run-2")
    rows, donor_rows = read_metrics(session), read_metrics(os.path.join(winner.path, "run"))
    # The restored session continued the donor's run from iteration 2 (its history included)...
    assert [r["iteration"] for r in rows] == [2, 3] and rows[0] == donor_rows[0]
    # ...under the perturbed values, which reached the restored optimizer too.
    cfg = read_yaml(os.path.join(session, CONFIG))
    assert cfg["mediator"]["dropout"] == loser.config["mediator.dropout"]
    assert cfg["m_optim"]["lr"] == loser.config["m_optim.lr"]
    donor_cfg = read_yaml(os.path.join(winner.path, "run", CONFIG))
    assert cfg["m_optim"]["lr"] != donor_cfg["m_optim"]["lr"]  # perturbed x0.8 or x1.2 (within the range)
    state = load_checkpoint(os.path.join(session, CHECKPOINT))
    assert state["iteration"] == 3
    assert state["m"]["optim"]["param_groups"][0]["lr"] == pytest.approx(loser.config["m_optim.lr"])
    _only_trial_placement_groups(pgs, 3)


class _InterruptAfterFirstTrial(ray_tune.Callback):
    """A stop for the test: SIGTERM (stopping the sweep as Ctrl-C does) to this process once
    the first trial has completed."""

    def __init__(self):
        self.sent = False

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(two_nodes, tmp_path, data_cache):
    grid = "  mediator.dropout: {grid_search: [0.3, 0.5]}"  # two trials, one after the other
    path = _write_sweep(tmp_path, grid, "{scheduler: fifo, max_concurrent: 1, per_trial: {iters: 2}}")
    overrides = _overrides(data_cache) + ["cot.algo=mle"]  # one worker per trial: quicker
    sweep = sweep_spec.load_sweep(path, overrides, storage=str(tmp_path / "tune"), name="resume")
    with stop_signals_as_ctrl_c([]) as came:  # what `cot-ray tune` sets up around the sweep
        first = sweeps.run_sweep(sweep, callbacks=[_InterruptAfterFirstTrial()])
    assert first["interrupted"] and first["best_config"] is None and came == [signal.SIGTERM]
    exp = first["experiment"]
    statuses = sorted(r.status for r in first["rows"])
    assert statuses == ["done", "unfinished"], statuses
    (done,) = [r for r in first["rows"] if r.status == "done"]
    done_dir = _trials(exp)[done.trial_id].path
    before = sorted(os.listdir(done_dir)), _read(os.path.join(done_dir, "result.json"))

    sets = [a for kv in overrides for a in ("--set", kv)]
    # Only the sweep it was started with can be resumed.
    other = _write_sweep(tmp_path, "  mediator.dropout: {grid_search: [0.3, 0.4]}",
                         "{scheduler: fifo, max_concurrent: 1, per_trial: {iters: 2}}", name="other.yaml")
    res = CliRunner().invoke(main, ["tune", other, "--resume", exp, *sets])
    assert res.exit_code != 0 and "differs from" in res.output and "search.mediator.dropout" in res.output
    res = CliRunner().invoke(main, ["tune", path, "--resume", exp, "--num-samples", "3", *sets])
    assert res.exit_code != 0 and "cannot change a resumed sweep" in res.output

    res = CliRunner().invoke(main, ["tune", path, "--resume", exp, *sets], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    # cot-ray's own progress here; the trials' status table in the experiment's tune.log, the
    # last one written when the sweep ended: both trials done
    assert "[tune] trial" in res.output and "Trial status" not in res.output, res.output
    last = _read(os.path.join(exp, "tune.log")).strip().split("\n\n")[-1].splitlines()
    assert last[0].startswith("Trial status: 2 TERMINATED  ("), last
    assert last[1].split()[:2] == ["trial", "mediator.dropout"] and len(last) == 4, last
    assert all(row.split()[-1] == "done" for row in last[2:]), last
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["trials"] == 2 and not summary["interrupted"] and os.path.exists(summary["best_config"])
    trials = _trials(exp)
    assert all(t.status == "TERMINATED" and t.last_result["iteration"] == 2 for t in trials.values())
    assert sorted(t.config["mediator.dropout"] for t in trials.values()) == [0.3, 0.5]
    # The finished trial was not run again: no new session, no new result.
    after = sorted(os.listdir(done_dir)), _read(os.path.join(done_dir, "result.json"))
    assert after == before
    assert len(read_metrics(os.path.join(done_dir, "run"))) == 1
    assert not os.path.exists(os.path.join(done_dir, "run-2"))


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_sweep_exits_128_plus_the_signal(tmp_path, data_cache, monkeypatch, signum, code):
    """`cot-ray tune` stopped by Ctrl-C or SIGTERM exits as `cot-ray train` does (it exited 0)."""
    from cot_ray.sweep import tune as sweep_tune

    path = _write_sweep(tmp_path, "  mediator.dropout: {grid_search: [0.3, 0.5]}", "{scheduler: fifo}")
    monkeypatch.setattr(sweep_tune, "run_sweep", lambda sweep, **kw: {
        "experiment": str(tmp_path / "exp"), "rows": [], "table": "(table)", "best": None, "best_config": None,
        "interrupted": True, "signal": signum})
    sets = [a for kv in _overrides(data_cache) for a in ("--set", kv)]
    res = CliRunner().invoke(main, ["tune", path, *sets])
    assert res.exit_code == code, res.output
    assert f"sweep interrupted ({'Ctrl-C' if code == 130 else 'SIGTERM'}): continue it with: cot-ray tune {path} " \
           f"--resume {tmp_path / 'exp'}" in res.output


def test_a_trial_early_stopped_on_the_sweeps_metric_is_judged_by_its_best_evaluation():
    """With run.patience and tune.metric the selection metric (tune_configs/mixce_eta.yaml), a
    trial's row holds its best report, which its best.pt holds, not the last of the patience
    evaluations after it; other sweeps keep the last report."""
    from types import SimpleNamespace

    from cot_ray.sweep.results import best_row, trial_row

    def trial(tid, last, best):
        return SimpleNamespace(trial_id=tid, status="TERMINATED", config={"mixce.eta": 0.1},
                               last_result={"eval/nll_valid": last, "eval/balanced_nll": last + 9,
                                            "iteration": 8000, "budget_done": False},
                               metric_analysis={"eval/nll_valid": {"min": best, "max": 7.9, "last": last},
                                                "eval/balanced_nll": {"min": best + 8, "last": last + 9}})

    early = sweep_spec.load_sweep(os.path.join(ROOT, "tune_configs", "mixce_eta.yaml"))
    rows = [trial_row(trial("a", 7.773, 7.699), early), trial_row(trial("b", 7.760, 7.720), early)]
    assert [r.metric for r in rows] == [7.699, 7.720] and best_row(rows, "min").trial_id == "a"
    plain = sweep_spec.load_sweep(os.path.join(ROOT, "tune_configs", "smoke.yaml"))  # no patience
    assert trial_row(trial("a", 7.773, 7.699), plain).metric == 7.773 + 9
