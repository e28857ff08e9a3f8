"""A run's directory: making one, holding it, reading it back, and the logs a run writes into it.

``RUN_DIR/`` holds ``config.yaml`` (the resolved config), ``checkpoint.pt`` (the last
checkpoint), ``best.pt`` (the best by the validation metric), ``metrics.jsonl`` (one row per
evaluation), the tensorboardX event files, ``run.lock`` and, on text, ``vocab.json``. Everything
that opens a run (``train --resume``, ``eval``, ``sample``, ``compare``, the benchmarks) goes
through here, and :func:`build_models` is the one place that makes G and M out of checkpointed
weights.

One run directory, one run: a run holds its directory (:class:`RunLock`, an exclusive lock on
``run.lock``) from before Ray starts until it ends, so a second run with the same name, or a
resume of a run that is still going, is refused in one line. The kernel drops the lock when the
process ends, however it ends (a crash, SIGKILL), so a lock file left behind never blocks anyone.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

from .checkpoint import (
    BEST,
    CHECKPOINT,
    CONFIG,
    CheckpointError,
    G,
    M,
    learner_weights,
    load_checkpoint,
)
from .config import Config, learned_mediator
from .config_loading import flat_keys, from_dict, read_yaml
from .data import EVAL_FILE, VOCAB_FILE, run_vocab_path
from .errors import ConfigError
from .files import DiskFullError, atomic_file, is_disk_full, read_jsonl
from .models import LanguageModel, model_from_weights, vocab_size_of

METRICS_FILE = "metrics.jsonl"
LOCK_FILE = "run.lock"
# What a run writes before its config.yaml: a directory holding only these holds no run yet.
_BEFORE_CONFIG = {LOCK_FILE, VOCAB_FILE, EVAL_FILE}


class RunLock:
    """This process's hold on a run directory: an exclusive ``flock`` on ``RUN_DIR/run.lock``,
    whose contents say who holds it (for the message that refuses the next one). ``fresh``:
    the run starts at iteration 0 (a new run, or one that stopped before its first checkpoint)."""

    def __init__(self, run_dir: str, fd: int, fresh: bool):
        self.run_dir, self.fresh = run_dir, fresh
        self._fd: Optional[int] = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def _lock(run_dir: str) -> Optional[int]:
    """Take ``run_dir``'s lock; -> its descriptor (held until closed), or None when another
    process holds it."""
    fd = os.open(os.path.join(run_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
    return fd


def _holder(run_dir: str) -> str:
    """Who holds ``run_dir``'s lock, as its lock file says ("pid 123 on HOST since ...")."""
    try:
        with open(os.path.join(run_dir, LOCK_FILE), encoding="utf-8") as f:
            h = json.load(f)
        return f"pid {h['pid']} on {h['host']} since {h['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _in_use(run_dir: str) -> ConfigError:
    return ConfigError(f"run directory '{run_dir}' is in use by a cot-ray run that is still going "
                       f"({_holder(run_dir)}): "
                       "wait for it to end or stop it (Ctrl-C), or give this run another name (--set run.name=...)")


def _holds_run(run_dir: str) -> Optional[str]:
    """Why a new run cannot start in the existing ``run_dir`` (one line), or None if it holds
    nothing a run wrote but its lock and its vocabulary."""
    if os.path.exists(os.path.join(run_dir, CONFIG)) or os.path.exists(os.path.join(run_dir, CHECKPOINT)):
        if not os.path.exists(os.path.join(run_dir, CHECKPOINT)):
            return (f"run directory '{run_dir}' holds a run that stopped before its first checkpoint: start it over "
                    f"with `cot-ray train --resume {run_dir}` (from iteration 0, with its saved config), or give "
                    "this run another name (--set run.name=...)")
        return (f"run directory '{run_dir}' already holds a run: continue it with --resume {run_dir} or give this "
                "run another name (--set run.name=...)")
    other = sorted(set(os.listdir(run_dir)) - _BEFORE_CONFIG)
    if other:
        shown = ", ".join(other[:3]) + (", ..." if len(other) > 3 else "")
        return (f"'{run_dir}' exists and holds files that are not a cot-ray run ({shown}): give this run another "
                "name (--set run.name=...) or an empty directory")
    return None


def default_run_name(cfg: Config) -> str:
    """What a run is, for its default directory name: the algorithm (``nested`` added), the data
    (oracle, coco, or the training file's name) and the architecture (G's, and M's where it
    differs), e.g. ``cot-oracle-lstm``, ``mle-coco-transformer``, ``cot-nested-mytext-lstm``."""
    algo = f"{cfg.cot.algo}-nested" if cfg.nested.enabled else cfg.cot.algo
    algo += "-exact" if cfg.cot.mediator == "exact" and cfg.cot.algo == "cot" else ""
    data = cfg.data.source if cfg.data.source != "text" else Path(cfg.data.train_path).stem or "text"
    archs = [cfg.generator.arch] + ([cfg.mediator.arch] if learned_mediator(cfg) and
                                    cfg.mediator.arch != cfg.generator.arch else [])
    name = "-".join([algo, data, *archs])
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def new_run(cfg: Config) -> RunLock:
    """Make and hold ``run.logdir/run.name`` for a new run. A name that was given is refused
    in one line when its directory holds a run or is held by a running one (an empty one is
    taken); a default name (ALGO-DATE-TIME) is never shared: a second run in the same second
    gets ``-2``, ``-3``, ..."""
    explicit = bool(cfg.run.name)
    base = cfg.run.name or f"{default_run_name(cfg)}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    os.makedirs(cfg.run.logdir or ".", exist_ok=True)
    n = 1
    while True:
        run_dir = os.path.join(cfg.run.logdir, base if n == 1 else f"{base}-{n}")
        try:
            os.mkdir(run_dir)  # exclusive: of two runs making it at once, exactly one succeeds
            made = True
        except FileExistsError:
            made = False
            if not explicit:
                n += 1
                continue
        fd = _lock(run_dir)
        if fd is None:
            raise _in_use(run_dir)
        problem = None if made else _holds_run(run_dir)  # decided under the lock: no other run is deciding
        if problem:
            os.close(fd)
            raise ConfigError(problem)
        return RunLock(run_dir, fd, fresh=True)


def hold_run(run_dir: str) -> RunLock:
    """Hold an existing run directory to continue its run; refused in one line while another
    process holds it. ``fresh`` when it has no checkpoint yet (the run starts over)."""
    if not os.path.isdir(run_dir):
        raise CheckpointError(f"'{run_dir}' is not a cot-ray run directory: give the directory that "
                              "`cot-ray train` printed")
    fd = _lock(run_dir)
    if fd is None:
        raise _in_use(run_dir)
    return RunLock(run_dir, fd, fresh=not os.path.exists(os.path.join(run_dir, CHECKPOINT)))


def open_run(cfg: Config, resume_dir: Optional[str] = None) -> RunLock:
    """The run directory of a run of ``cfg``, held: a new one, or ``resume_dir``."""
    return hold_run(resume_dir) if resume_dir is not None else new_run(cfg)


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
    """A run's config and its last checkpoint, or with ``which`` "best" its best one (best.pt),
    checked against each other (:func:`check_saved_config`)."""
    cfg = resume_config(run_dir)
    path = os.path.join(run_dir, BEST if which == "best" else CHECKPOINT)
    if which == "best" and not os.path.exists(path):
        raise CheckpointError(f"'{run_dir}' has no best checkpoint ({BEST}): it was trained without a validation "
                              "set (data.num_valid 0) or with eval.select none; use --checkpoint last")
    return cfg, run_checkpoint(cfg, path)


def run_checkpoint(cfg: Config, path: str) -> dict:
    """The checkpoint at ``path`` of the run whose config.yaml reads as ``cfg``, checked against
    it: the one way a run's checkpoint is read."""
    state = load_checkpoint(path)
    check_saved_config(cfg, state, path)
    return state


# The config keys that may differ between a run's config.yaml and its checkpoint: the stopping
# rule, how often the run logs, evaluates and checkpoints (evaluation draws from its own seed),
# where it runs (its placement, threads and device), and where its files are (the run or its
# corpus moved). Everything else is the run's arithmetic, which the checkpoint carries on.
MAY_CHANGE = ("run.iters", "run.minutes", "run.patience", "run.log_every", "run.progress_s", "run.checkpoint_every",
              "eval.every", "run.threads", "run.threads_host", "run.device", "run.logdir", "run.name", "data.vocab_path",
              "data.cache_dir", "data.train_path", "data.test_path", "eval.where", "runtime.")
FIXED_RUNTIME = ("runtime.schedule", "runtime.staleness")  # the schedule's math: part of the checkpoint's state


def config_changes(cfg: Config, saved: dict) -> list[str]:
    """``KEY SAVED -> NOW`` for each key of the checkpoint's config ``saved`` that ``cfg`` has
    changed and that may not change (:data:`MAY_CHANGE`); keys that only one of them knows
    (a config of another version of cot-ray) are not compared."""
    now, then = flat_keys(cfg.to_dict()), flat_keys(saved)
    fixed = [k for k in now if k in then and now[k] != then[k]
             and (k in FIXED_RUNTIME or not any(k == m or (m.endswith(".") and k.startswith(m)) for m in MAY_CHANGE))]
    return [f"{k} {then[k]!r} -> {now[k]!r}" for k in fixed]


def check_saved_config(cfg: Config, state: dict, path: str) -> None:
    """A one-line ConfigError when the run's config.yaml (read as ``cfg``) was edited against the
    config that the checkpoint at ``path`` was trained with, in keys that may not change: a run
    continues (and is evaluated) with its own config, never half with another."""
    changes = config_changes(cfg, state.get("config") or {})
    if changes:
        run_dir = os.path.dirname(os.path.abspath(path))
        raise ConfigError(f"{CONFIG} of run '{run_dir}' differs from the config its checkpoint "
                          f"({os.path.basename(path)}, iteration {state['iteration']}) was trained with: "
                          f"{', '.join(changes)}; only the stopping rule, the intervals and where the run runs "
                          f"may change: undo the edit, or start a new run with --config {os.path.join(run_dir, CONFIG)}")


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
    return build_models(cfg, vocab_size, learner_weights(state, G), learner_weights(state, M), device)


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
        from tensorboardX import (
            SummaryWriter,  # imported here: only runs that log need it
        )

        self.writer = SummaryWriter(run_dir)
        self.metrics_path = os.path.join(run_dir, METRICS_FILE)
        self.echo = echo

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        for k, v in values.items():
            if v is not None:
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def eval_row(self, iteration: int, elapsed: float, metrics: dict) -> None:
        self.scalars("eval", metrics, iteration)
        line = json.dumps({"iteration": iteration, "elapsed_s": round(elapsed, 3), **metrics}) + "\n"
        try:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as e:
            if is_disk_full(e):
                raise DiskFullError(self.metrics_path) from None
            raise

    def truncate_after(self, iteration: int) -> None:
        """On resume, forget eval rows of work that the checkpoint does not hold (and a last row
        that a crash cut short, saying so)."""
        if not os.path.exists(self.metrics_path):
            return
        rows = [r for r in read_jsonl(self.metrics_path, on_torn=lambda s: self.echo(f"[cot-ray] {s}"))
                if r.get("iteration", 0) <= iteration]
        with atomic_file(self.metrics_path) as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    def close(self) -> None:
        try:
            self.writer.close()
        except OSError as e:  # the event files are a view of the run: a full disk is said elsewhere
            if not is_disk_full(e):
                raise
