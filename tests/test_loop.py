"""The in-process training loop: exact resume, Ctrl-C, logs, checkpoints, run directories."""

from __future__ import annotations

import os
import signal

import pytest

from cot_ray.checkpoint import CHECKPOINT, CONFIG, CheckpointError, load_checkpoint
from cot_ray.config_loading import read_yaml
from cot_ray.data import load_dataset
from cot_ray.errors import ConfigError
from cot_ray.loop import run_trainer
from cot_ray.metric_names import metric_keys
from cot_ray.metrics import make_evaluator
from cot_ray.models import model_from_weights
from cot_ray.rundir import METRICS_FILE, read_metrics, resume_config
from cot_ray.seeds import EVALUATION, derive_seed
from cot_ray.stopping import StopRequest, stop_on_signals
from tests.conftest import assert_same_tree, event_scalars


def _quiet(_msg: str) -> None:
    pass


def _learner_state(run_dir):
    state = load_checkpoint(os.path.join(run_dir, CHECKPOINT))
    return {"g": state["g"], "m": state["m"], "iteration": state["iteration"], "m_updates": state["m_updates"]}


TRANSFORMERS = ("generator.arch=transformer", "generator.num_layers=2", "generator.num_heads=2",
                "mediator.arch=transformer", "mediator.num_heads=2")


@pytest.mark.parametrize("algo,arch", [("cot", "lstm"), ("mle", "lstm"), ("cot", "transformer"), ("mle", "transformer"),
                                       ("mixce", "lstm"), ("tailr", "lstm"), ("cot-exact", "lstm")])
def test_resumed_run_equals_uninterrupted_run(tiny, algo, arch):
    algo_keys = ("cot.algo=cot", "cot.mediator=exact") if algo == "cot-exact" else (f"cot.algo={algo}",)
    overrides = (*algo_keys, "cot.m_steps=2", "cot.g_steps=2", "eval.every=2", "run.checkpoint_every=100",
                 *(TRANSFORMERS if arch == "transformer" else ()))
    full = run_trainer(tiny(*overrides, "run.iters=6", "run.name=full"), echo=_quiet)
    half = run_trainer(tiny(*overrides, "run.iters=3", "run.name=half"), echo=_quiet)
    assert half["iteration"] == 3
    resumed = run_trainer(resume_config(half["run_dir"], iters=6), resume_dir=half["run_dir"], echo=_quiet)
    assert resumed["iteration"] == full["iteration"] == 6
    assert_same_tree(_learner_state(full["run_dir"]), _learner_state(resumed["run_dir"]))
    # Evaluation is seeded by iteration, so the metrics agree too.
    assert resumed["metrics"] == full["metrics"]
    rows = read_metrics(resumed["run_dir"])
    assert [r["iteration"] for r in rows] == [2, 3, 4, 6]  # 3: end of the first session


def test_ctrl_c_checkpoints_and_resume_completes_exactly(tiny):
    full = run_trainer(tiny("run.iters=5", "run.name=full"), echo=_quiet)
    cfg = tiny("run.iters=5", "run.name=stopped", "run.checkpoint_every=100")

    def interrupt_at_2(msg):
        if msg.startswith("[cot] it 2/"):
            os.kill(os.getpid(), signal.SIGINT)  # the handler asks the loop to stop after this iteration

    with stop_on_signals(StopRequest()) as stop:  # the process set-up of `cot-ray train`
        stopped = run_trainer(cfg, echo=interrupt_at_2, stop=stop)
    assert stopped["interrupted"] and stopped["iteration"] in (2, 3)
    run_dir = stopped["run_dir"]
    assert load_checkpoint(os.path.join(run_dir, CHECKPOINT))["iteration"] == stopped["iteration"]
    resumed = run_trainer(resume_config(run_dir), resume_dir=run_dir, echo=_quiet)
    assert resumed["iteration"] == 5
    assert_same_tree(_learner_state(full["run_dir"]), _learner_state(run_dir))


def test_ctrl_c_without_a_stop_request_raises_keyboard_interrupt_and_says_where_to_resume(tiny):
    """A library caller (a notebook) sets up nothing: Ctrl-C is Python's KeyboardInterrupt, after
    a line naming the last checkpoint."""
    cfg = tiny("run.iters=5", "run.name=plain", "run.checkpoint_every=1", "run.log_every=1")
    lines: list = []

    def interrupt_at_2(msg):
        lines.append(msg)
        if msg.startswith("[cot] it 2/"):
            os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a notebook's: Python's own
    try:
        with pytest.raises(KeyboardInterrupt):
            run_trainer(cfg, echo=interrupt_at_2)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert any(line.startswith("[cot-ray] stopped at once: the last checkpoint is at iteration ") for line in lines)


def test_run_directory_holds_config_checkpoint_metrics_and_namespaced_scalars(tiny):
    cfg = tiny("run.iters=2", "run.name=r", "cot.m_steps=3")
    out = run_trainer(cfg, echo=_quiet)
    run_dir = out["run_dir"]
    saved = read_yaml(os.path.join(run_dir, CONFIG))
    assert saved["cot"]["m_steps"] == 3 and saved["run"]["iters"] == 2
    assert set(out["metrics"]) == set(metric_keys(text=False, mediator=True))
    # the final evaluation is of the checkpoint's G and M, with the evaluation seed of its iteration
    state = load_checkpoint(os.path.join(run_dir, CHECKPOINT))
    data = load_dataset(cfg.data)
    g, m = (model_from_weights(data.vocab_size, mcfg, state[k]["model"])
            for k, mcfg in (("g", cfg.generator), ("m", cfg.mediator)))
    assert make_evaluator(data, cfg.eval).evaluate(g, m, derive_seed(cfg.run.seed, 2, EVALUATION)) == out["metrics"]
    assert os.path.exists(os.path.join(run_dir, METRICS_FILE))
    tags = set(event_scalars(run_dir))
    assert {"train/m_mix_nll", "train/g_kl", "eval/nll_oracle", "eval/jsd", "eval/m_nll_test",
            "eval/kl_forward", "time/iters_per_sec"} <= tags
    assert all(t.split("/")[0] in ("train", "eval", "time") for t in tags)


@pytest.mark.parametrize("progress_s,lines", [(1e-9, ["1/4", "2/4", "3/4", "4/4"]), (1e6, ["4/4"]), (0, ["2/4", "4/4"])])
def test_progress_lines_come_by_wall_clock_and_scalar_rows_by_iteration(tiny, progress_s, lines):
    """A line at least every run.progress_s seconds and at the end (0: with every log row);
    the train/ and time/ scalars every run.log_every iterations whatever the clock says."""
    said = []
    out = run_trainer(tiny("run.iters=4", "run.log_every=2", f"run.progress_s={progress_s}", "eval.every=0",
                           f"run.name=p{len(lines)}"), echo=said.append)
    assert [line.split()[2] for line in said if line.startswith("[cot] it ")] == lines
    assert [step for step, _ in event_scalars(out["run_dir"])["train/g_kl"]] == [2, 4]


def test_existing_run_is_never_overwritten(tiny):
    cfg = tiny("run.iters=1", "run.name=taken")
    out = run_trainer(cfg, echo=_quiet)
    before = open(os.path.join(out["run_dir"], CHECKPOINT), "rb").read()
    with pytest.raises(ConfigError, match="already holds a run.*--resume"):
        run_trainer(tiny("run.iters=1", "run.name=taken"), echo=_quiet)
    assert open(os.path.join(out["run_dir"], CHECKPOINT), "rb").read() == before


def test_corrupt_checkpoint_is_a_clear_error_and_left_alone(tiny):
    out = run_trainer(tiny("run.iters=1", "run.name=c"), echo=_quiet)
    path = os.path.join(out["run_dir"], CHECKPOINT)
    with open(path, "r+b") as f:
        f.truncate(100)
    damaged = open(path, "rb").read()
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        run_trainer(resume_config(out["run_dir"], iters=2), resume_dir=out["run_dir"], echo=_quiet)
    assert open(path, "rb").read() == damaged


def test_progress_says_where_elapsed_rate_eta_and_evaluation(tiny):
    import re

    lines: list = []
    run_trainer(tiny("run.iters=4", "run.name=progress", "eval.every=2"), echo=lines.append)
    assert lines[0] == "[cot-ray] learners in this process on cpu; this process: 1 torch thread(s) (run.threads), " \
                       f"{loop_cpu_count()} CPU(s)"
    progress = [line for line in lines if line.startswith("[cot] it ")]
    assert re.match(r"\[cot\] it 1/4  0:\d\d  [\d.]+ it/s  ETA \d+:\d\d  m_mix_nll [\d.]+", progress[0]), progress[0]
    assert "[cot] evaluating iteration 2 (64 test sequences, 64 samples)..." in lines
    assert any(re.match(r"\[cot\] eval @ 2 \(\d+ s\): kl_forward [\d.]+  kl_reverse", line) for line in lines)
    assert re.search(r"\| kl_forward [\d.]+  kl_reverse [\d.]+  nll_oracle [\d.]+  nll_test", progress[2])  # eval of 2
    # a minutes budget: elapsed out of the budget, and the time left
    lines.clear()
    run_trainer(tiny("run.iters=0", "run.minutes=0.005", "run.name=clock", "eval.every=0"), echo=lines.append)
    assert re.match(r"\[cot\] it 1  0:\d\d of 0:00  [\d.]+ it/s  ETA 0:\d\d", [x for x in lines if "] it " in x][0])


def loop_cpu_count() -> int:
    from cot_ray.machine import cpu_count

    return cpu_count()


def test_early_stopping_ends_the_run_patience_evaluations_after_its_best(tiny):
    """MLE on 256 training sequences at a high learning rate overfits within a few dozen
    iterations: with run.patience 2 the run stops two evaluations after its validation best,
    keeps that one as best.pt, and a resume says it is finished."""
    cfg = tiny("cot.algo=mle", "g_optim.lr=0.05", "generator.hidden_dim=32", "generator.emb_dim=32",
               "eval.every=5", "run.iters=400", "run.patience=2", "run.name=early")
    out = run_trainer(cfg, echo=_quiet)
    rows = read_metrics(out["run_dir"])
    best = min(rows, key=lambda r: r["nll_valid"])
    assert out["iteration"] < 400 and out["iteration"] == best["iteration"] + 2 * 5
    assert [r["iteration"] for r in rows][-3:] == [best["iteration"], best["iteration"] + 5, out["iteration"]]
    assert all(r["nll_valid"] >= best["nll_valid"] for r in rows[-2:])
    assert out["stopped_by"] == "run.patience 2: 2 evaluations without a better validation metric"
    assert load_checkpoint(os.path.join(out["run_dir"], "best.pt"))["iteration"] == best["iteration"]
    state = load_checkpoint(os.path.join(out["run_dir"], CHECKPOINT))
    assert state["iteration"] == out["iteration"] and state["stale_evals"] == 2
    # a resumed run with the same rule has nothing to do: it stops at once, training nothing more
    again = run_trainer(resume_config(out["run_dir"]), resume_dir=out["run_dir"], echo=_quiet)
    assert again["iteration"] == out["iteration"] and again["stopped_by"] == out["stopped_by"]


def test_patience_needs_evaluations_with_a_validation_metric(tiny):
    for bad in (("eval.every=0",), ("eval.select=none",), ("data.num_valid=0",)):
        with pytest.raises(ConfigError, match="config key 'run.patience' stops on the selection metric"):
            tiny("run.patience=3", *bad)
