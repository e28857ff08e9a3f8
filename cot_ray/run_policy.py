"""The rules a run's budget follows: when a run stops, what ``--smoke`` shrinks, and how the
evaluations of a short run are sized to its time budget. Plain functions of a config."""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

from .config import TEXT_SOURCES, Config, EvalConfig, RunConfig


def stop_reason(run: RunConfig, iteration: int, elapsed_s: float, stale_evals: int = 0) -> Optional[str]:
    """Why a run with the stopping rule ``run`` stops at ``iteration`` after ``elapsed_s`` seconds
    of training, ``stale_evals`` evaluations after its selection metric last improved; None
    while it goes on. The one stopping rule of training runs, resumes and sweep trials."""
    if run.iters > 0 and iteration >= run.iters:
        return f"run.iters {run.iters}"
    if run.minutes > 0 and elapsed_s >= run.minutes * 60:
        return f"run.minutes {run.minutes:g}"
    if run.patience > 0 and stale_evals >= run.patience:
        return f"run.patience {run.patience}: {stale_evals} evaluations without a better validation metric"
    return None


# ``--smoke``: the budget of a run that checks a command end to end in seconds.
SMOKE_ITERS = 4  # training iterations
SMOKE_EVAL_EVERY = 2  # so that a smoke run evaluates (and keeps best.pt) mid-run as well as at the end
SMOKE_SAMPLES = 256  # at most this many samples and sequences per evaluation (text: BLEU samples 64)


def smoke_budget(cfg: Config) -> Config:
    """Shrink ``cfg``'s budget, and only its budget, for ``--smoke``: at most :data:`SMOKE_ITERS`
    iterations (no time limit), an evaluation, a checkpoint and a progress line every
    :data:`SMOKE_EVAL_EVERY` iterations, and small evaluations. Models, data, algorithm and
    where the learners run stay as given, so the smoke run takes the same code paths."""
    r, e = cfg.run, cfg.eval
    r.iters = min(r.iters, SMOKE_ITERS) if r.iters > 0 else SMOKE_ITERS
    r.minutes = 0.0
    r.checkpoint_every = min(r.checkpoint_every, SMOKE_EVAL_EVERY)
    r.log_every = 1
    r.progress_s = 0.0  # a line every iteration
    e.every = SMOKE_EVAL_EVERY
    e.num_samples = min(e.num_samples, SMOKE_SAMPLES)
    e.num_test = min(e.num_test, SMOKE_SAMPLES)
    e.num_train = min(e.num_train, SMOKE_SAMPLES)
    e.bleu_samples = min(e.bleu_samples, SMOKE_SAMPLES // 4)
    return cfg


# A run with a time budget under FULL_EVAL_MINUTES (``--minutes 2``) evaluates on fewer samples and
# sequences, in proportion to its budget (at least a tenth of the full sizes), so that a short run
# spends seconds, not a minute, evaluating; the sizes a run used are in its config.yaml. Sizes that
# a config, --set or a flag gives are kept as given.
FULL_EVAL_MINUTES = 20.0
BUDGETED_EVAL_KEYS = ("eval.num_samples", "eval.num_test", "eval.num_train", "eval.bleu_samples")


def budgeted_eval(full: EvalConfig, minutes: float) -> EvalConfig:
    """``full``'s evaluation sizes for a run of ``minutes`` of training: the full sizes at
    :data:`FULL_EVAL_MINUTES` or more (or no time limit), else scaled by minutes / that, at least
    a tenth, rounded up to a multiple of 64 (2 minutes: 1,024 of 9,984 samples)."""
    if minutes <= 0 or minutes >= FULL_EVAL_MINUTES:
        return dataclasses.replace(full)
    share = max(minutes / FULL_EVAL_MINUTES, 0.1)
    sized = {key.split(".")[1]: getattr(full, key.split(".")[1]) for key in BUDGETED_EVAL_KEYS}
    sized = {k: min(v, -(-math.ceil(v * share) // 64) * 64) for k, v in sized.items()}
    return dataclasses.replace(full, **sized)


def budgeted_eval_note(cfg: Config) -> Optional[str]:
    """What a run's evaluation sizes are, when :func:`budgeted_eval` shrank them to its time
    budget, and how to get the full ones; None otherwise."""
    full = EvalConfig()
    if cfg.eval == full or dataclasses.replace(budgeted_eval(full, cfg.run.minutes), every=cfg.eval.every,
                                               where=cfg.eval.where, select=cfg.eval.select) != cfg.eval:
        return None
    text = cfg.data.source in TEXT_SOURCES
    sizes = (f"{cfg.eval.bleu_samples:,} BLEU samples" if text else f"{cfg.eval.num_samples:,} samples") + \
        f", {cfg.eval.num_test:,} test sequences"
    full_set = (f"eval.bleu_samples={full.bleu_samples}" if text else f"eval.num_samples={full.num_samples}") + \
        f" --set eval.num_test={full.num_test}"
    return (f"evaluations sized to the {cfg.run.minutes:g}-minute budget ({sizes}); the full evaluation: "
            f"--set {full_set}")
