"""Nothing lost, nobody in (README, "Reliability"): a checkpoint is data, never code; one run
directory holds one run; a run that diverges stops and never makes NaN its best; edited or torn
run files get one line; a full disk says so. Each test drives the command a user types.

(Stop signals are tested with the Ctrl-C test in test_cli.py and, with Ray and its sockets, in
test_cli_actors.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from click.testing import CliRunner

from cot_ray.checkpoint import (
    BEST,
    CHECKPOINT,
    CONFIG,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from cot_ray.cli import main
from cot_ray.config_loading import load_config
from cot_ray.rundir import METRICS_FILE, open_run, read_metrics
from tests.conftest import TINY, cpu_only_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sets(data_cache: str, *extra: str) -> list[str]:
    return [a for kv in TINY + [f"data.cache_dir={data_cache}", *extra] for a in ("--set", kv)]


@pytest.fixture
def train(tmp_path, data_cache):
    """``train(*args)`` -> the CliRunner result of ``cot-ray train --local --json`` with a tiny
    config under tmp_path/runs (``--resume`` runs get only the given args)."""

    def invoke(*args: str):
        if "--resume" in args:
            argv = ["train", "--local", "--json", *args]
        else:
            argv = ["train", "--local", "--json", "--logdir", str(tmp_path / "runs"), *_sets(data_cache), *args]
        return CliRunner().invoke(main, argv)

    return invoke


def _run(res) -> dict:
    assert res.exit_code == 0, res.output
    return json.loads(res.output.strip().splitlines()[-1])


def _one_line_error(res, *texts: str) -> str:
    """The error of a failed command: one line, no traceback, holding each of ``texts``."""
    assert res.exit_code not in (0, None), res.output
    assert "Traceback" not in res.output and not isinstance(res.exception, (KeyError, TypeError, IndexError)), \
        res.output
    (line,) = [x for x in res.output.splitlines() if x.startswith("Error:")]
    for t in texts:
        assert t in line, line
    return line


# ----------------------------------------------------------------------------- 1. checkpoints are data


class _RunsCode:
    """Unpickling this calls ``os.system`` (what a crafted checkpoint does)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _craft(path: str, marker: str) -> None:
    state = load_checkpoint(path)
    state["g"]["steps"] = _RunsCode(f"touch {marker}")
    with open(path, "wb") as f:
        torch.save(state, f)


def test_a_crafted_checkpoint_runs_no_code_in_eval_sample_compare_resume_or_a_trial_restore(train, tmp_path):
    run_dir = _run(train("--iters", "2", "--set", "run.name=victim"))["run_dir"]
    marker = tmp_path / "pwned"
    for name in (CHECKPOINT, BEST):
        _craft(os.path.join(run_dir, name), str(marker))
    commands = [["eval", run_dir], ["eval", run_dir, "--checkpoint", "best"], ["sample", run_dir, "-n", "2"],
                ["compare", run_dir, "--samples", "8", "--temperatures", "1", "--out", str(tmp_path / "cmp")],
                ["train", "--local", "--resume", run_dir, "--iters", "4"]]
    for argv in commands:
        res = CliRunner().invoke(main, argv)
        assert not marker.exists(), f"cot-ray {' '.join(argv)} ran the checkpoint's code"
        _one_line_error(res, "refused to load", "holds Python objects", "posix.system")
    # A Tune trial restored from a sweep's storage reads the checkpoint the same way.
    from cot_ray.sweep.trial import _restore_session

    with pytest.raises(CheckpointError, match="refused to load"):
        _restore_session(run_dir, str(tmp_path / "trial-session"), load_config(None, TINY))
    assert not marker.exists()


def test_a_file_that_is_not_a_checkpoint_or_lacks_keys_gets_one_line(train):
    run_dir = _run(train("--iters", "1", "--set", "run.name=r"))["run_dir"]
    path = os.path.join(run_dir, CHECKPOINT)
    good = open(path, "rb").read()
    state = load_checkpoint(path)
    del state["g"]["optim"], state["m_updates"]
    torch.save(state, path)
    _one_line_error(CliRunner().invoke(main, ["eval", run_dir]), "is incomplete", "m_updates", "g.optim")
    with open(path, "w") as f:
        f.write("iteration: 3\n")
    _one_line_error(CliRunner().invoke(main, ["eval", run_dir]), "is not a cot-ray checkpoint")
    with open(path, "wb") as f:
        f.write(good)
    assert CliRunner().invoke(main, ["eval", run_dir]).exit_code == 0


def test_a_checkpoint_holds_only_tensors_and_plain_values(tmp_path):
    import numpy as np

    save_checkpoint(str(tmp_path / "ok.pt"), {"a": [1, 2.5, "x", None, (True,)], "w": torch.ones(2)})
    with pytest.raises(TypeError, match=r"state\.a\[1\]: a numpy\.float64"):
        save_checkpoint(str(tmp_path / "bad.pt"), {"a": [1, np.float64(2.5)]})
    assert not (tmp_path / "bad.pt").exists()


# ----------------------------------------------------------------------------- 2. one run, one directory


def test_a_run_directory_in_use_is_refused_and_a_default_name_is_never_shared(train, tiny, tmp_path):
    cfg = tiny("run.name=busy")
    with open_run(cfg) as claim:  # another cot-ray run holds runs/busy
        line = _one_line_error(train("--iters", "1", "--set", "run.name=busy"), "is in use by a cot-ray run",
                               f"pid {os.getpid()}")
        assert "run.name" in line
        assert os.listdir(claim.run_dir) == ["run.lock"]  # nothing of the refused run was written
    first = _run(train("--iters", "1", "--set", "run.name=busy"))  # free again: the lock went with its holder
    assert first["run_dir"] == claim.run_dir
    with open_run(tiny(), first["run_dir"]):  # a resume of a run that is still going
        _one_line_error(train("--resume", first["run_dir"], "--iters", "2"), "is in use")
    _one_line_error(train("--iters", "1", "--set", "run.name=busy"), "already holds a run", "--resume")
    # Two default names made in one second: the second run gets its own directory.
    a, b = open_run(tiny()), open_run(tiny())
    assert a.run_dir != b.run_dir and os.path.basename(b.run_dir).startswith(os.path.basename(a.run_dir))


def test_two_runs_started_at_once_with_one_name_one_is_refused(tmp_path, data_cache):
    argv = [sys.executable, "-m", "cot_ray.cli", "train", "--local", "--json", "--logdir", str(tmp_path),
            "--iters", "3", *_sets(data_cache, "run.name=twin")]
    procs = [subprocess.Popen(argv, cwd=ROOT, env=cpu_only_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], outs
    (refused,) = [err for p, (_, err) in zip(procs, outs) if p.returncode]
    assert "run directory" in refused and ("in use" in refused or "already holds a run" in refused), refused
    assert "Traceback" not in refused
    rows = read_metrics(str(tmp_path / "twin"))
    assert [r["iteration"] for r in rows] == [3]  # one run's rows only


def test_a_run_killed_before_its_first_checkpoint_starts_over(train):
    run_dir = _run(train("--iters", "2", "--set", "run.name=early", "--set", "eval.every=1"))["run_dir"]
    for name in (CHECKPOINT, BEST):  # as if killed before its first checkpoint
        os.remove(os.path.join(run_dir, name))
    _one_line_error(train("--iters", "2", "--set", "run.name=early"), "stopped before its first checkpoint",
                    f"cot-ray train --resume {run_dir}")
    res = train("--resume", run_dir, "--iters", "2")
    assert "has no checkpoint: it stopped before its first one; starting it over from iteration 0" in res.output
    assert _run(res)["iteration"] == 2
    assert [r["iteration"] for r in read_metrics(run_dir)] == [1, 2]  # the earlier attempt's rows are gone


# ----------------------------------------------------------------------------- 3. divergence stops


def test_a_diverged_loss_stops_the_run_with_one_line(train, tmp_path):
    """A mediator learning rate of 1e30: M's weights overflow in the first update, and with them
    the generator's gradient; nothing diverged is checkpointed."""
    res = train("--iters", "20", "--set", "run.name=boom", "--set", "m_optim.lr=1.0e+30")
    _one_line_error(res, "the run diverged", "is inf at iteration 1", "no checkpoint was written yet",
                    "smaller learning rate")
    assert not os.path.exists(tmp_path / "runs" / "boom" / CHECKPOINT)


def test_a_nan_evaluation_stops_the_run_and_never_becomes_best(train, monkeypatch, tmp_path):
    from cot_ray.metrics import Evaluator

    evaluate = Evaluator.evaluate
    calls = []

    def nan_from_the_second(self, *args, **kwargs):
        out = evaluate(self, *args, **kwargs)
        calls.append(1)
        return {**out, "nll_test": float("nan")} if len(calls) >= 2 else out

    monkeypatch.setattr(Evaluator, "evaluate", nan_from_the_second)
    res = train("--iters", "6", "--set", "run.name=nan", "--set", "eval.every=2", "--set", "run.checkpoint_every=2")
    _one_line_error(res, "the run diverged", "nll_test is nan at iteration 4",
                    f"the last good checkpoint ({CHECKPOINT}) is at iteration 2", f"{BEST} at iteration 2")
    run_dir = str(tmp_path / "runs" / "nan")
    assert load_checkpoint(os.path.join(run_dir, CHECKPOINT))["iteration"] == 2
    best = load_checkpoint(os.path.join(run_dir, BEST))
    assert best["iteration"] == 2 and best["best"]["value"] == best["best"]["value"]  # not NaN
    assert [r["iteration"] for r in read_metrics(run_dir)] == [2]  # no NaN row


def test_infinite_and_nan_config_values_are_refused(train):
    for value in (".inf", "-.inf", ".nan"):
        _one_line_error(train("--iters", "1", "--set", f"g_optim.lr={value}"), "g_optim.lr", "finite number")


# ----------------------------------------------------------------------------- 6. edited and torn files


def test_an_edited_config_yaml_is_refused_naming_the_keys(train):
    run_dir = _run(train("--iters", "2", "--set", "run.name=edited"))["run_dir"]
    path = os.path.join(run_dir, CONFIG)
    original = open(path).read()
    cfg = yaml.safe_load(original)
    cfg["generator"]["hidden_dim"] = 12
    cfg["g_optim"]["lr"] = 0.5
    cfg["run"]["iters"] = 3  # the stopping rule may change
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    for argv in (["train", "--local", "--resume", run_dir, "--iters", "4"], ["eval", run_dir]):
        _one_line_error(CliRunner().invoke(main, argv), "generator.hidden_dim 8 -> 12", "g_optim.lr",
                        f"--config {path}")
    with open(path, "w") as f:  # cut short: the missing keys would silently be the defaults
        f.write(original[: len(original) // 3].rsplit("\n", 1)[0] + "\n")
    _one_line_error(CliRunner().invoke(main, ["eval", run_dir]), "differs from the config its checkpoint")
    with open(path, "w") as f:
        f.write(original.replace("iters: 2", "iters: 3"))
    assert _run(train("--resume", run_dir))["iteration"] == 3


def test_a_torn_last_metrics_line_is_dropped_with_a_note_and_other_damage_is_named(train):
    run_dir = _run(train("--iters", "2", "--set", "run.name=torn", "--set", "eval.every=1"))["run_dir"]
    path = os.path.join(run_dir, METRICS_FILE)
    rows = open(path).read()
    with open(path, "a") as f:
        f.write('{"iteration": 3, "elapsed_s": 1.2, "nll_te')  # a crash mid-append
    res = train("--resume", run_dir, "--iters", "3")
    assert f"'{path}': dropped its last line, which a crash or a full disk cut short" in res.output, res.output
    assert [r["iteration"] for r in read_metrics(run_dir)] == [1, 2, 3]
    with open(path, "w") as f:
        f.write(rows.replace("\n", "\nnot json\n", 1))
    _one_line_error(train("--resume", run_dir, "--iters", "4"), METRICS_FILE, "line 2")


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs `unshare -rm` and a tmpfs mount (a small disk to fill)")
def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_older_checkpoint(tmp_path, data_cache):
    """A 16 MB tmpfs in a private mount namespace: a run checkpoints there (3 MB), the disk is
    filled to 1 MB short, and the resumed run's next checkpoint fails in one line naming the path;
    the old one still loads."""
    disk = tmp_path / "disk"
    disk.mkdir()
    run_dir = disk / "runs" / "full"
    sets = " ".join(f"--set {kv}" for kv in TINY + [f"data.cache_dir={data_cache}", "run.name=full",
                                                     "eval.every=0"])
    cot = f"{sys.executable} -m cot_ray.cli train --local"
    script = f"""
        set -u
        mount -t tmpfs -o size=16m tmpfs {disk}
        {cot} --logdir {disk}/runs --iters 2 {sets} > /dev/null 2>&1 || exit 90
        free=$(df --output=avail -k {disk} | tail -1)
        dd if=/dev/zero of={disk}/filler bs=1k count=$((free - 1024)) > /dev/null 2>&1  # 1 MB left
        {cot} --resume {run_dir} --iters 4 2> {tmp_path}/err.txt; echo $? > {tmp_path}/rc.txt
        {sys.executable} -c "from cot_ray.checkpoint import load_checkpoint; \
print(load_checkpoint('{run_dir}/{CHECKPOINT}')['iteration'])" > {tmp_path}/kept.txt
    """
    subprocess.run(["unshare", "-rm", "bash", "-c", script], cwd=ROOT, env=cpu_only_env(), timeout=300, check=True)
    err = (tmp_path / "err.txt").read_text()
    assert (tmp_path / "rc.txt").read_text().strip() == "1", err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("Error:")]
    assert f"disk full at {run_dir}" in line, err
    assert (tmp_path / "kept.txt").read_text().strip() == "2"


# ----------------------------------------------------------------------------- 7. small ones


def test_1e_4_is_a_float_in_set_and_in_yaml(train, tmp_path):
    path = tmp_path / "lr.yaml"
    path.write_text("m_optim:\n  lr: 2e-3\n")
    run_dir = _run(train("--iters", "1", "--config", str(path), "--set", "g_optim.lr=1e-4",
                         "--set", "run.name=lr"))["run_dir"]
    saved = yaml.safe_load(open(os.path.join(run_dir, CONFIG)))
    assert saved["g_optim"]["lr"] == 1e-4 and saved["m_optim"]["lr"] == 2e-3
