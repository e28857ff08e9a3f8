"""The ``cot-ray`` command line, in-process: every command, pinned results, one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import re

import pytest
from click.testing import CliRunner

from cot_ray.checkpoint import CHECKPOINT, load_checkpoint
from cot_ray.cli import main
from cot_ray.data import load_dataset
from cot_ray.metrics import make_evaluator
from cot_ray.models import model_from_weights
from cot_ray.rundir import resume_config
from tests.conftest import TINY, event_scalars

# Flags every CLI training run here gets: the in-process loop keeps this module Ray-free.
LOCAL: list[str] = []


@pytest.fixture
def cli(tmp_path, data_cache):
    runner = CliRunner()
    sets = [a for kv in TINY + [f"data.cache_dir={data_cache}"] for a in ("--set", kv)]

    def invoke(*args, tiny=True, as_json=True):
        args = list(args)
        if as_json and args and args[0] == "train":
            args.insert(1, "--json")  # scripts (and these tests) read the summary as JSON
        if tiny and args and args[0] == "train" and "--resume" not in args:
            args = args[:1] + LOCAL + ["--logdir", str(tmp_path / "runs")] + sets + args[1:]
        elif args and args[0] == "train":
            args = args[:1] + LOCAL + args[1:]
        return runner.invoke(main, args, catch_exceptions=False)

    return invoke


def _summary(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def test_train_eval_sample_end_to_end(cli):
    out = _summary(cli("train", "--iters", "3", "--seed", "1", "--set", "run.name=e2e",
                       "--set", "g_optim.lr=0.05", "--set", "m_optim.lr=0.05"))
    run_dir, metrics = out["run_dir"], out["metrics"]
    assert out["iteration"] == 3
    # Pinned: 3 tiny CoT iterations from seed 1. A change here must be explained (last: the
    # mediator's default embedding dropout 0.25, from 8.4944 / 11.3857).
    assert metrics["nll_test"] == pytest.approx(8.4969, abs=1e-3)
    assert metrics["nll_oracle"] == pytest.approx(11.4280, abs=1e-3)

    res = cli("eval", run_dir, "--json")
    assert res.exit_code == 0, res.output
    assert "[cot-ray] evaluating" in res.output and "[cot-ray] evaluated in" in res.output
    ev = json.loads(res.output.strip().splitlines()[-1])
    assert set(ev) >= {"nll_oracle", "nll_test", "balanced_nll", "jsd", "jsd_mediator"}
    assert ev["balanced_nll"] == pytest.approx(ev["nll_oracle"] + ev["nll_test"])
    # `eval` scores the checkpoint's G and M with the seed it is given (default 0)
    cfg = resume_config(run_dir)
    state, data = load_checkpoint(os.path.join(run_dir, CHECKPOINT)), load_dataset(cfg.data)
    g, m = (model_from_weights(data.vocab_size, mcfg, state[k]["model"])
            for k, mcfg in (("g", cfg.generator), ("m", cfg.mediator)))
    direct = make_evaluator(data, cfg.eval).evaluate(g, m, 0)
    assert (ev["checkpoint"], ev["temperature"]) == ("last", 1.0)
    got = {k: v for k, v in ev.items() if v is not None and k not in ("iteration", "checkpoint", "temperature")}
    assert set(got) == set(direct) and all(got[k] == pytest.approx(direct[k], rel=1e-6) for k in direct)
    assert ev["nll_test"] == pytest.approx(metrics["nll_test"], rel=1e-6)  # same checkpoint, same test set

    res = cli("sample", run_dir, "-n", "4", "--ids")
    assert res.exit_code == 0, res.output
    rows = [list(map(int, line.split())) for line in res.output.strip().splitlines()]
    assert len(rows) == 4 and all(len(r) == 20 and all(0 <= t < 5000 for t in r) for r in rows)


@pytest.mark.parametrize("args,name,train_tags", [
    (["--algo", "mixce", "--set", "mixce.eta=0.2"], "mixce-oracle-lstm", {"g_loss", "g_nll", "g_weight"}),
    (["--algo", "tailr", "--set", "tailr.gamma=0.5"], "tailr-oracle-lstm", {"g_loss", "g_nll", "g_weight"}),
    (["--set", "cot.mediator=exact"], "cot-exact-oracle-lstm", {"g_kl"}),
])
def test_the_rivals_and_the_exact_mediator_train_evaluate_and_sample(cli, args, name, train_tags):
    """``--algo mixce``, ``--algo tailr`` and ``cot.mediator=exact`` through the front door: no
    mediator is trained or scored, the run says what it is, eval and sample read it back."""
    out = _summary(cli("train", *args, "--iters", "2"))
    run_dir = out["run_dir"]
    assert os.path.basename(run_dir).startswith(name + "-")
    assert "m_nll_test" not in out["metrics"] and "nll_oracle" in out["metrics"]
    tags = {t.split("/", 1)[1] for t in event_scalars(run_dir) if t.startswith("train/")}
    assert train_tags <= tags and not any(t.startswith("m_") for t in tags), tags
    state = load_checkpoint(os.path.join(run_dir, CHECKPOINT))
    assert state["m"] is None
    res = cli("eval", run_dir, "--json")
    assert res.exit_code == 0, res.output
    ev = json.loads(res.output.strip().splitlines()[-1])
    assert ev["nll_test"] == pytest.approx(out["metrics"]["nll_test"], rel=1e-6) and ev["jsd_mediator"] is None
    res = cli("sample", run_dir, "-n", "2", "--ids")
    assert res.exit_code == 0 and len(res.output.strip().splitlines()) == 2, res.output


def test_resume_continues_to_more_iterations(cli):
    out = _summary(cli("train", "--algo", "mle", "--iters", "2", "--set", "run.name=r"))
    res = _summary(cli("train", "--resume", out["run_dir"], "--iters", "4", tiny=False))
    assert res["iteration"] == 4 and res["run_dir"] == out["run_dir"]


def test_the_budget_given_on_resume_replaces_the_saved_one(cli):
    """The quick start's path: a run stopped by --minutes, resumed with the --iters its summary
    prints, trains on to those iterations (the saved minutes limit would stop it at once)."""
    res = cli("train", "--minutes", "0.00001", "--set", "run.name=clock", as_json=False)
    assert res.exit_code == 0, res.output
    run_dir = next(line.split()[-1] for line in res.output.splitlines() if "run directory" in line)
    assert f"train longer   cot-ray train --resume {run_dir} --iters" in res.output
    stopped = load_checkpoint(os.path.join(run_dir, CHECKPOINT))["iteration"]
    res = _summary(cli("train", "--resume", run_dir, "--iters", str(stopped + 2), tiny=False))
    assert res["iteration"] == stopped + 2
    assert (resume_config(run_dir, iters=9).run.minutes, resume_config(run_dir, minutes=3).run.iters) == (0, 0)
    assert resume_config(run_dir, patience=5).run.minutes == 0.00001  # patience alone keeps the budget


def test_an_early_stopped_run_points_to_its_best_model_and_goes_on_with_more_patience(cli, monkeypatch):
    """More iterations cannot move a run stopped by its patience (it would stop again at once):
    its summary and a resume say how to take the best model or to raise the patience, and a
    resume with --patience trains on until that patience runs out."""
    import cot_ray.cli as cli_module

    overfit = ["--algo", "mle", "--iters", "400", "--patience", "2", "--set", "g_optim.lr=0.05",
               "--set", "generator.hidden_dim=32", "--set", "generator.emb_dim=32", "--set", "eval.every=5"]
    res = cli("train", *overfit, "--set", "run.name=patient", as_json=False)
    assert res.exit_code == 0, res.output
    run_dir = next(line.split()[-1] for line in res.output.splitlines() if "run directory" in line)
    first = load_checkpoint(os.path.join(run_dir, CHECKPOINT))
    assert first["iteration"] < 400 and first["stale_evals"] == 2
    assert "done, stopped early (run.patience 2: 2 evaluations without a better validation metric)" in res.output
    assert f"best model     cot-ray eval {run_dir} --checkpoint best" in res.output
    assert f"train past it  cot-ray train --resume {run_dir} --patience 4" in res.output
    assert "--iters" not in res.output

    more = _summary(cli("train", "--resume", run_dir, "--patience", "4", tiny=False))
    state = load_checkpoint(os.path.join(run_dir, CHECKPOINT))
    assert more["iteration"] == state["iteration"] > first["iteration"]
    assert state["stale_evals"] == 4 and state["iteration"] < 400

    def no_training(*a, **k):
        raise AssertionError("an early-stopped run started training (and Ray)")

    monkeypatch.setattr(cli_module, "_run_training", no_training)
    res = cli("train", "--resume", run_dir, "--iters", "400", tiny=False, as_json=False)
    assert res.exit_code == 0
    # the saved rule (patience 2) stops it, 4 evaluations after its best: the next patience is above 4
    assert f"{run_dir} is already finished: {more['iteration']} iterations (run.patience 2: 4 evaluations" in res.output
    assert f"train past it  cot-ray train --resume {run_dir} --patience 8" in res.output


def test_resume_refuses_config_changes(cli, tmp_path):
    out = _summary(cli("train", "--iters", "1", "--set", "run.name=x"))
    res = CliRunner().invoke(main, ["train", *LOCAL, "--resume", out["run_dir"], "--set", "cot.m_steps=2"])
    assert res.exit_code != 0 and "cannot change a resumed run" in res.output


def test_data_synthetic_writes_token_files(cli, tmp_path):
    res = cli("data", "synthetic", "--out", str(tmp_path / "d"), "--num-train", "5", "--num-test", "3", "--seed", "7")
    assert res.exit_code == 0, res.output
    train = (tmp_path / "d" / "train.txt").read_text().splitlines()
    test = (tmp_path / "d" / "test.txt").read_text().splitlines()
    assert len(train) == 5 and len(test) == 3
    assert all(len(line.split()) == 20 for line in train + test)
    again = tmp_path / "d2"
    cli("data", "synthetic", "--out", str(again), "--num-train", "5", "--num-test", "3", "--seed", "7")
    assert (again / "train.txt").read_text().splitlines() == train  # seeded


@pytest.mark.parametrize("args, message", [
    (["--set", "cot.m_step=2"], "unknown config key 'cot.m_step'"),
    (["--set", "cot.m_steps=two"], "config key 'cot.m_steps' must be of type int"),
    (["--set", "mediator.dropout=1.5"], "config key 'mediator.dropout' must be in [0, 1)"),
    (["--set", "cot.batch_size=0"], "config key 'cot.batch_size' must be >= 1"),
    (["--set", "nonsense"], "must look like key=value"),
    (["--config", "missing.yaml"], "config file 'missing.yaml' does not exist"),
    (["--nested", "--nest-depth", "0"], "config key 'nested.depth' must be >= 1"),
    (["--nest-depth", "2"], "--nest-depth sets the depth of nested CoT: add --nested"),
    (["--inner-actor"], "config key 'runtime.inner_actor' places the inner mediator of a nested run"),
    (["--nested", "--algo", "mle"], "config key 'nested.enabled' needs cot.algo 'cot'"),
    (["--nested", "--local", "--inner-actor"], "config key 'runtime.inner_actor' needs actors"),
    (["--algo", "mixce", "--set", "mixce.eta=1.5"], "config key 'mixce.eta' must be in [0, 1] (1: MLE), got 1.5"),
    (["--algo", "tailr", "--set", "tailr.gamma=-0.1"], "config key 'tailr.gamma' must be in [0, 1] (0: MLE)"),
    (["--algo", "tailr", "--set", "tailr.min_weight=2"], "config key 'tailr.min_weight' must be in [0, 1]"),
    (["--set", "cot.mediator=perfect"], "config key 'cot.mediator' must be 'learned' or 'exact', got 'perfect'"),
    (["--algo", "mle", "--set", "cot.mediator=exact"], "config key 'cot.mediator' 'exact' is CoT's mediator"),
    (["--data", "coco", "--set", "cot.mediator=exact"], "'exact' needs the data's own probabilities, which only "
                                                        "the oracle has (data.source is 'coco')"),
    (["--nested", "--set", "cot.mediator=exact"], "config key 'nested.enabled' trains a learned mediator"),
    (["--nested", "--algo", "tailr"], "config key 'nested.enabled' needs cot.algo 'cot' (tailr trains no mediator)"),
])
def test_bad_config_is_one_line_error(cli, args, message):
    res = CliRunner().invoke(main, ["train", *LOCAL, "--iters", "1", *args])
    assert res.exit_code != 0
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.output


def test_malformed_yaml_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cot:\n  m_steps: [1,\n")
    res = CliRunner().invoke(main, ["train", *LOCAL, "--config", str(bad)])
    assert res.exit_code != 0 and "is not valid YAML at line" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_eval_of_a_directory_that_is_not_a_run(tmp_path):
    res = CliRunner().invoke(main, ["eval", str(tmp_path)])
    assert res.exit_code != 0 and "is not a cot-ray run directory" in res.output


# ----------------------------------------------------------------------------- the first ten minutes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_minutes_must_be_positive():
    res = CliRunner().invoke(main, ["train", "--minutes", "0"])
    assert res.exit_code == 2 and "Invalid value for '--minutes': 0.0 is not in the range x>0" in res.output


def test_a_run_that_could_never_stop_is_named():
    res = CliRunner().invoke(main, ["train", "--set", "run.iters=0"])
    assert res.exit_code == 1
    assert "config key 'run.iters' and run.minutes are both 0, so the run could never stop: give --iters N or " \
           "--minutes M" in res.output


def test_data_folder_is_named_with_its_files(tmp_path):
    (tmp_path / "train.txt").write_text("1 2 3\n")
    res = CliRunner().invoke(main, ["train", "--data", str(tmp_path)])
    assert res.exit_code == 2
    assert f"--data {tmp_path} is a folder" in res.output and f"--data {tmp_path / 'train.txt'}" in res.output
    assert f"--test-data {tmp_path / 'test.txt'}" in res.output


def test_a_sweep_file_given_to_train_says_to_run_tune():
    smoke = os.path.join(ROOT, "tune_configs", "smoke.yaml")
    res = CliRunner().invoke(main, ["train", "--config", smoke])
    assert res.exit_code == 1
    assert f"'{smoke}' is a sweep file (sections base, search, tune), not a training config: run it with " \
           f"`cot-ray tune {smoke}`" in res.output


def test_data_is_checked_before_ray_starts(tmp_path, monkeypatch):
    """An actors run with a missing test file fails on the file, never reaching Ray."""
    import cot_ray.runtime as runtime

    def no_ray(*a, **k):
        raise AssertionError("Ray was started before the inputs were checked")

    monkeypatch.setattr(runtime, "connect", no_ray)
    (tmp_path / "train.txt").write_text("a b c\n")
    res = CliRunner().invoke(main, ["train", "--data", str(tmp_path / "train.txt"), "--test-data",
                                    str(tmp_path / "missing.txt")])
    assert res.exit_code == 1 and "test file" in res.output and "does not exist" in res.output


def test_a_run_ends_with_its_summary_and_the_next_commands(cli):
    res = cli("train", "--iters", "2", "--set", "run.name=ending", as_json=False)
    assert res.exit_code == 0, res.output
    out = res.output
    run_dir = next(line.split()[-1] for line in out.splitlines() if "run directory" in line)
    assert "[cot-ray] done: 2 iterations" in out and "kl_forward" in out and "nll_oracle" in out
    for command in (f"cot-ray eval {run_dir}", f"cot-ray sample {run_dir} -n 10",
                    f"tensorboard --logdir {os.path.dirname(run_dir)}", f"cot-ray train --resume {run_dir} --iters"):
        assert command in out, command
    assert "{" not in out.splitlines()[-1]  # no JSON unless --json


def test_the_curves_hint_installs_tensorboard_where_it_is_missing(monkeypatch):
    import importlib.util

    from cot_ray.cli import tensorboard_command

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    assert tensorboard_command("runs") == "pip install tensorboard && tensorboard --logdir runs"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert tensorboard_command("runs") == "tensorboard --logdir runs"


def test_name_names_the_run_and_default_names_say_algo_data_and_architecture(cli, tmp_path):
    out = _summary(cli("train", "--iters", "1", "--name", "mine"))
    assert out["run_dir"] == str(tmp_path / "runs" / "mine")
    out = _summary(cli("train", "--iters", "1", "--algo", "mle", "--set", "generator.arch=transformer",
                       "--set", "generator.num_heads=2"))
    assert re.fullmatch(r"mle-oracle-transformer-\d{8}-\d{6}", os.path.basename(out["run_dir"])), out["run_dir"]
    res = cli("train", "--resume", out["run_dir"], "--name", "other")
    assert res.exit_code == 2 and "--name cannot change a resumed run" in res.output


def test_resuming_a_finished_run_says_so_without_training(cli, monkeypatch):
    import cot_ray.cli as cli_module

    out = _summary(cli("train", "--iters", "2", "--set", "run.name=finished"))

    def no_training(*a, **k):
        raise AssertionError("a finished run started training (and Ray)")

    monkeypatch.setattr(cli_module, "_run_training", no_training)
    res = cli("train", "--resume", out["run_dir"], tiny=False, as_json=False)
    assert res.exit_code == 0
    assert f"{out['run_dir']} is already finished: 2 iterations (run.iters 2)" in res.output
    assert _summary(cli("train", "--resume", out["run_dir"], tiny=False))["iteration"] == 2


@pytest.mark.parametrize("signame,code,said", [("SIGINT", 130, "Ctrl-C"), ("SIGTERM", 143, "SIGTERM"),
                                               ("SIGHUP", 129, "SIGHUP")])
def test_a_stop_signal_is_acknowledged_checkpoints_and_exits_128_plus_it(tmp_path, data_cache, signame, code, said):
    """The real thing: a signal to the `cot-ray train` process during its progress lines, as
    Ctrl-C, `ray job stop` and Kubernetes (SIGTERM) or a closed terminal (SIGHUP) send it."""
    import signal
    import subprocess
    import sys

    sets = [a for kv in TINY + [f"data.cache_dir={data_cache}", "run.iters=100000", "eval.every=0",
                                "run.name=stopped"] for a in ("--set", kv)]
    proc = subprocess.Popen([sys.executable, "-m", "cot_ray.cli", "train", "--local", "--logdir", str(tmp_path), *sets],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "it 3/" in line:
            proc.send_signal(getattr(signal, signame))
            break
    rest, _ = proc.communicate(timeout=120)
    out = "".join(lines) + rest
    assert proc.returncode == code, out
    assert f"{said}: stopping after this iteration" in out
    state = load_checkpoint(os.path.join(tmp_path, "stopped", CHECKPOINT))
    assert 3 <= state["iteration"] <= 5
    assert f"cot-ray train --resume {tmp_path / 'stopped'}" in out
    assert f"stopped by {said}" in out


# ----------------------------------------------------------------------------- selection and temperature

def test_best_checkpoint_is_the_validation_minimum_and_eval_and_sample_take_it(cli):
    from cot_ray.rundir import read_metrics

    out = _summary(cli("train", "--iters", "6", "--set", "eval.every=2", "--set", "run.name=best"))
    rows = read_metrics(out["run_dir"])
    assert [r["iteration"] for r in rows] == [2, 4, 6]
    best_row = min(rows, key=lambda r: r["balanced_valid"])  # CoT on the oracle: NLL_oracle + NLL_valid
    best = load_checkpoint(os.path.join(out["run_dir"], "best.pt"))
    assert best["iteration"] == best_row["iteration"]
    assert best["best"] == {"iteration": best_row["iteration"], "metric": "balanced_valid",
                            "value": best_row["balanced_valid"]}
    ev = json.loads(cli("eval", out["run_dir"], "--json", "--checkpoint", "best").output.strip().splitlines()[-1])
    assert ev["iteration"] == best_row["iteration"] and ev["checkpoint"] == "best"
    assert ev["nll_test"] == pytest.approx(best_row["nll_test"], rel=1e-6)  # the same G as at that evaluation
    res = cli("sample", out["run_dir"], "-n", "3", "--ids", "--checkpoint", "best", "--temperature", "0.5")
    assert res.exit_code == 0 and len(res.output.strip().splitlines()) == 3


def test_eval_at_a_temperature_scores_the_tempered_generator(cli):
    out = _summary(cli("train", "--iters", "2", "--set", "run.name=temp"))
    at = {t: json.loads(cli("eval", out["run_dir"], "--json", "--temperature", t, "--samples", "4000")
                        .output.strip().splitlines()[-1]) for t in ("0.7", "1", "1.5")}
    assert at["1"]["nll_test"] == pytest.approx(out["metrics"]["nll_test"], rel=1e-6)  # T = 1: the run's own
    assert at["0.7"]["temperature"] == 0.7
    assert at["0.7"]["entropy_g"] < at["1"]["entropy_g"] < at["1.5"]["entropy_g"]
    assert at["0.7"]["nll_test"] != at["1"]["nll_test"]


def test_a_run_without_a_validation_set_has_no_best_checkpoint(cli):
    out = _summary(cli("train", "--iters", "2", "--set", "run.name=nobest", "--set", "data.num_valid=0"))
    assert not os.path.exists(os.path.join(out["run_dir"], "best.pt"))
    res = cli("eval", out["run_dir"], "--checkpoint", "best")
    assert res.exit_code == 1 and "has no best checkpoint (best.pt)" in res.output


def test_compare_groups_seeds_over_temperatures_and_writes_table_json_and_plot(cli, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    runs = [_summary(cli("train", "--algo", algo, "--iters", "2", "--seed", str(s), "--set", f"run.name={algo}{s}"))
            ["run_dir"] for algo in ("cot", "mle") for s in (0, 1)]
    out = tmp_path / "cmp"
    drawn = []

    def savefig(fig, path, **kw):  # keep the figure to look at its points
        drawn.append(fig)
        real_savefig(fig, path, **kw)

    import matplotlib.figure

    real_savefig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    res = cli("compare", *runs, "--temperatures", "0.8:1.2:0.2", "--out", str(out), "--samples", "32",
              "--reference", "CoT (paper)=8.19/8.03", "--reference", "MLE=9.43/7.67")
    assert res.exit_code == 0, res.output
    result = json.loads((out / "compare.json").read_text())
    assert result["temperatures"] == [0.8, 1.0, 1.2]
    assert [g["group"] for g in result["groups"]] == ["cot", "cot", "mle", "mle"]  # seeds 0 and 1 grouped
    assert [g["checkpoint"] for g in result["groups"]] == ["best", "last"] * 2
    cot_last = result["groups"][1]
    assert cot_last["seeds"] == [0, 1] and [r["temperature"] for r in cot_last["rows"]] == [0.8, 1.0, 1.2]
    # mean and std over the seeds of exactly the per-run numbers
    per_run = [r["checkpoints"]["last"]["metrics"]["1"]["nll_test"] for r in result["runs"] if r["group"] == "cot"]
    row = cot_last["rows"][1]["nll_test"]
    assert row["mean"] == pytest.approx(sum(per_run) / 2)
    assert row["std"] == pytest.approx(abs(per_run[0] - per_run[1]) / 2 ** 0.5)
    # at T = 1 the last checkpoint's NLL_test is the run's own final one
    assert per_run[0] == pytest.approx(json.loads((tmp_path / "runs" / "cot0" / "metrics.jsonl").read_text()
                                                  .splitlines()[-1])["nll_test"], rel=1e-6)
    table = (out / "compare.md").read_text()
    assert "| cot | last | 2 | 0.8 |" in table and "± " in table
    side = table.split("The curves side by side:\n\n")[1].splitlines()  # and the curves side by side
    assert side[0].startswith("| T | cot, best (2 seeds): nll_oracle / nll_test |") and side[2].startswith("| 0.8 | ")
    # published points: in the JSON under the metric names, under the table, and as stars in the plot
    assert result["references"] == [{"label": "CoT (paper)", "nll_oracle": 8.19, "nll_test": 8.03},
                                    {"label": "MLE", "nll_oracle": 9.43, "nll_test": 7.67}]
    assert "| CoT (paper) | 8.190 | 8.030 |" in table and "| published point | nll_oracle | nll_test |" in table
    assert (out / "quality_diversity.png").stat().st_size > 1000
    (ax,) = drawn[0].axes
    stars = [(tuple(line.get_xdata()), tuple(line.get_ydata())) for line in ax.get_lines()
             if line.get_marker() == "*"]
    assert stars == [((8.03,), (8.19,)), ((7.67,), (9.43,))]  # x = NLL_test, y = NLL_oracle
    assert {t.get_text() for t in ax.texts} >= {"CoT (paper)", "MLE"}
    assert "[compare] run 1/4" in res.output


def test_compare_without_matplotlib_writes_table_and_json_and_one_seed_shows_no_spread(cli, tmp_path,
                                                                                     monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails, as where it is missing
    run = _summary(cli("train", "--iters", "2", "--set", "run.name=one_seed"))["run_dir"]
    out = tmp_path / "cmp"
    res = cli("compare", run, "--temperatures", "1", "--checkpoints", "last", "--out", str(out), "--samples", "16")
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(out)) == ["compare.json", "compare.md"]
    skipped = [line for line in res.output.splitlines() if "plot skipped" in line]
    assert len(skipped) == 1 and 'pip install -e ".[bench]"' in skipped[0]
    table = (out / "compare.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| cot | last |"))
    assert "±" not in row and row.startswith("| cot | last | 1 | 1 |")
    result = json.loads((out / "compare.json").read_text())
    assert result["groups"][0]["rows"][0]["nll_test"]["std"] is None  # one seed: no spread, not 0
    res = cli("compare", run, "--temperatures", "1", "--checkpoints", "last", "--out", str(tmp_path / "np"),
              "--samples", "16", "--no-plot")
    assert res.exit_code == 0 and "plot skipped" not in res.output


def test_compare_saves_each_sweep_and_compares_from_it_once_the_checkpoints_are_gone(cli, tmp_path):
    run = _summary(cli("train", "--iters", "2", "--set", "run.name=kept"))["run_dir"]
    args = ("--temperatures", "0.9,1.1", "--samples", "16", "--no-plot")
    res = cli("compare", run, *args, "--out", str(tmp_path / "a"))
    assert res.exit_code == 0 and "saved sweep" not in res.output, res.output
    first = json.loads((tmp_path / "a" / "compare.json").read_text())
    saved = json.loads(open(os.path.join(run, "sweep_last.json")).read())
    assert saved["sha256"] == hashlib.sha256(open(os.path.join(run, "checkpoint.pt"), "rb").read()).hexdigest()
    assert saved["settings"] == {"num_samples": 16, "seed": 0} and sorted(saved["metrics"]) == ["0.9", "1.1"]
    # the checkpoints gone (a curve committed without its weights): the same numbers, from the sweeps
    hidden = tmp_path / "weights"
    hidden.mkdir()
    for f in ("checkpoint.pt", "best.pt"):
        os.replace(os.path.join(run, f), hidden / f)
    res = cli("compare", run, *args, "--out", str(tmp_path / "b"))
    assert res.exit_code == 0 and res.output.count("from its saved sweep") == 2, res.output
    assert json.loads((tmp_path / "b" / "compare.json").read_text())["runs"] == first["runs"]
    # a temperature it does not hold, or other evaluation settings: not made up, skipped and said why
    for other in (("--temperatures", "1"), ("--temperatures", "0.9,1.1", "--seed", "1")):
        res = cli("compare", run, "--samples", "16", "--no-plot", *other, "--out", str(tmp_path / "c"))
        assert res.exit_code == 0 and "holds other settings or temperatures, skipped" in res.output, res.output
        assert json.loads((tmp_path / "c" / "compare.json").read_text())["groups"] == []
    # the run continued (new checkpoints): evaluated again, and its sweep follows the new checkpoint
    for f in ("checkpoint.pt", "best.pt"):
        os.replace(hidden / f, os.path.join(run, f))
    assert cli("train", "--resume", run, "--iters", "4").exit_code == 0
    res = cli("compare", run, *args, "--out", str(tmp_path / "d"))
    assert res.exit_code == 0 and "saved sweep" not in res.output, res.output
    last = json.loads((tmp_path / "d" / "compare.json").read_text())["runs"][0]["checkpoints"]["last"]
    assert last["iteration"] == 4 and json.loads(open(os.path.join(run, "sweep_last.json")).read())["iteration"] == 4


def test_compare_says_what_is_wrong_with_its_input(cli, tmp_path):
    res = cli("compare", str(tmp_path), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "is not a run with a checkpoint" in res.output
    out = _summary(cli("train", "--iters", "1", "--set", "run.name=one"))
    res = cli("compare", out["run_dir"], "--out", str(tmp_path / "o"), "--temperatures", "1.3:0.7:0.1")
    assert res.exit_code == 1 and "give START:STOP:STEP" in res.output
    for bad in ("8.19/8.03", "paper=8.19", "paper=8.19/x", "=1/2", "paper=nan/1"):
        res = cli("compare", out["run_dir"], "--out", str(tmp_path / "o"), "--reference", bad)
        assert res.exit_code == 1 and "give LABEL=QUALITY/COVERAGE" in res.output, (bad, res.output)
    assert not os.path.exists(tmp_path / "o")  # checked before any evaluation
