"""A run's directory: making one, reading one back, and the logs a run writes into it.

``RUN_DIR/`` holds ``config.yaml`` (the resolved config), ``checkpoint.pt`` (the last
checkpoint), ``best.pt`` (the best by the validation metric), ``metrics.jsonl`` (one row per
evaluation), the tensorboardX event files and, on text, ``vocab.json``. Everything that opens a
run (``train --resume``, ``eval``, ``sample``, ``compare``, the benchmarks) goes through here,
and :func:`build_models` is the one place that makes G and M out of checkpointed weights.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Callable, Optional

from .checkpoint import BEST, CHECKPOINT, CONFIG, CheckpointError, load_checkpoint
from .config import Config, ConfigError, from_dict, read_yaml
from .data import VOCAB_FILE, run_vocab_path
from .files import atomic_file, read_jsonl
from .models import LanguageModel, model_from_weights, vocab_size_of

METRICS_FILE = "metrics.jsonl"


def new_run_dir(cfg: Config) -> str:
    """``run.logdir/run.name`` (default name ALGO-DATE-TIME), made; an existing run there is an error."""
    name = cfg.run.name or f"{cfg.cot.algo}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir = os.path.join(cfg.run.logdir, name)
    if os.path.exists(os.path.join(run_dir, CHECKPOINT)) or os.path.exists(os.path.join(run_dir, CONFIG)):
        raise ConfigError(f"run directory '{run_dir}' already holds a run: continue it with "
                          f"--resume {run_dir} or pick another name (--set run.name=...)")
    os.makedirs(run_dir, exist_ok=True)
    return run_dir


def resume_config(run_dir: str, iters: Optional[int] = None, minutes: Optional[float] = None,
                  patience: Optional[int] = None) -> Config:
    """The saved config of ``run_dir``; only the stopping rule may change on resume. A budget given
    here replaces the saved one whole: ``iters`` alone lifts a saved minutes limit and ``minutes``
    alone a saved iteration count (as on a fresh run), so that a run that stopped on one of them
    goes on; ``patience`` replaces only the patience."""
    path = os.path.join(run_dir, CONFIG)
    if not os.path.exists(path):
        raise CheckpointError(f"'{run_dir}' is not a cot-ray run directory (no {CONFIG}): give the "
                              "directory that `cot-ray train` printed")
    cfg = from_dict(read_yaml(path))
    saved_vocab = run_vocab_path(run_dir)
    if saved_vocab is not None:  # the run's own vocabulary, wherever its directory is now
        cfg.data.vocab_path = os.path.abspath(saved_vocab)
    elif cfg.data.vocab_path and not os.path.exists(cfg.data.vocab_path):
        raise CheckpointError(f"run '{run_dir}' has lost its vocabulary (recorded as '{cfg.data.vocab_path}'): "
                              f"copy that {VOCAB_FILE} back into the run directory")
    if iters is not None or minutes is not None:
        cfg.run.iters, cfg.run.minutes = iters or 0, minutes or 0
    if patience is not None:
        cfg.run.patience = patience
    return cfg.validate()


def load_run(run_dir: str, which: str = "last") -> tuple[Config, dict]:
    """A run's config and its last checkpoint, or with ``which`` "best" its best one (best.pt)."""
    cfg = resume_config(run_dir)
    path = os.path.join(run_dir, BEST if which == "best" else CHECKPOINT)
    if which == "best" and not os.path.exists(path):
        raise CheckpointError(f"'{run_dir}' has no best checkpoint ({BEST}): it was trained without a validation "
                              "set (data.num_valid 0) or with eval.select none; use --checkpoint last")
    return cfg, load_checkpoint(path)


def check_vocab_size(weights: dict, cfg, vocab_size: int) -> None:
    """A clear error when a checkpoint's model (of config ``cfg``) was trained on another
    vocabulary than the data's."""
    trained = vocab_size_of(weights, cfg)
    if trained is not None and trained != vocab_size:
        raise CheckpointError(f"the checkpoint's models have a vocabulary of {trained} tokens but the data "
                              f"now has {vocab_size}: the corpus or data settings changed since training; "
                              "restore the run's vocab.json (data.vocab_path) or its data files")


def build_models(cfg: Config, vocab_size: int, g_weights: dict, m_weights: Optional[dict] = None,
                 device: str = "cpu") -> tuple[LanguageModel, Optional[LanguageModel]]:
    """G (and M, given its weights) of a run of ``cfg``, holding checkpointed weights, in eval mode."""
    check_vocab_size(g_weights, cfg.generator, vocab_size)
    g = model_from_weights(vocab_size, cfg.generator, g_weights, device)
    m = model_from_weights(vocab_size, cfg.mediator, m_weights, device) if m_weights is not None else None
    return g, m


def checkpoint_models(cfg: Config, state: dict, vocab_size: int,
                      device: str = "cpu") -> tuple[LanguageModel, Optional[LanguageModel]]:
    """G and M (None for MLE) of a checkpoint's state."""
    return build_models(cfg, vocab_size, state["g"]["model"], state["m"]["model"] if state.get("m") else None,
                        device)


def read_metrics(run_dir: str) -> list[dict]:
    """The run's evaluations, one dict per row of metrics.jsonl, oldest first."""
    return read_jsonl(os.path.join(run_dir, METRICS_FILE))


def format_values(d: dict, keys, digits: int = 3) -> str:
    """``key value  key value`` for the keys of ``d`` that have a value (progress lines)."""
    return "  ".join(f"{k} {d[k]:.{digits}f}" for k in keys if d.get(k) is not None)


class RunLog:
    """What a run writes as it goes: tensorboardX scalars (namespaced ``train/``, ``eval/``,
    ``time/``) and metrics.jsonl, one row per evaluation."""

    def __init__(self, run_dir: str, echo: Callable[[str], None]):
        from tensorboardX import SummaryWriter  # imported here: only runs that log need it

        self.writer = SummaryWriter(run_dir)
        self.metrics_path = os.path.join(run_dir, METRICS_FILE)
        self.echo = echo

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        for k, v in values.items():
            if v is not None:
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def eval_row(self, iteration: int, elapsed: float, metrics: dict) -> None:
        self.scalars("eval", metrics, iteration)
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"iteration": iteration, "elapsed_s": round(elapsed, 3), **metrics}) + "\n")

    def truncate_after(self, iteration: int) -> None:
        """On resume, forget eval rows of work that the checkpoint does not hold."""
        if not os.path.exists(self.metrics_path):
            return
        rows = [r for r in read_jsonl(self.metrics_path) if r["iteration"] <= iteration]
        with atomic_file(self.metrics_path) as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    def close(self) -> None:
        self.writer.close()
