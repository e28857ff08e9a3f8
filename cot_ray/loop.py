"""The training schedule and the run around it: logging, evaluation, checkpoints, resume.

The schedule talks to learners only through ``Workers.call`` / ``Workers.get``. In process,
``call`` is a method call and ``get`` the identity; the Ray runtime supplies actor handles,
``.remote`` calls and ``ray.get``. Both therefore run the very same schedule, which is what
makes "actors with the sync schedule == in-process loop" hold exactly.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Optional

import torch

from .checkpoint import CHECKPOINT, CONFIG, CheckpointError, load_checkpoint, save_checkpoint
from .config import Config, ConfigError, from_dict, save_config
from .data import VOCAB_FILE, Dataset, checkpoint_vocab_size, load_dataset, run_vocab_path, save_run_data
from .learners import GeneratorLearner, MediatorLearner, sequence_mask
from .metrics import METRIC_KEYS, Evaluator, eval_seed, make_evaluator
from .models import LSTMLM, copy_weights

METRICS_FILE = "metrics.jsonl"

# Called after each evaluation and the checkpoint that follows it:
# (iteration, metrics, run directory, training seconds so far).
EvalHook = Callable[[int, dict, str, float], None]


@dataclass
class Workers:
    """Handles to the generator and mediator learners, and how to call them.

    Optional hooks let a runtime add what the in-process loop does without: ``schedule``
    replaces the sync ``schedule_iteration`` (an object with ``iteration(w, cfg, iteration,
    m_updates)``, ``state(w)`` and ``load_state(w, state)``; its state travels in checkpoints);
    ``is_failure(exc)`` says that an exception means a worker died, and ``recover(w)`` makes
    the workers callable again, after which the Trainer reloads its last checkpoint into them.
    """

    g: Any
    m: Any = None  # None for MLE
    call_fn: Callable[..., Any] = field(default=lambda w, name, *a: getattr(w, name)(*a))
    get_fn: Callable[[Any], Any] = field(default=lambda x: x)
    schedule: Any = None  # None: the sync schedule_iteration
    is_failure: Callable[[BaseException], bool] = field(default=lambda exc: False)
    recover: Callable[["Workers"], None] = field(default=lambda w: None)

    def call(self, worker, method: str, *args):
        return self.call_fn(worker, method, *args)

    def get(self, x):
        return self.get_fn(x)

    def iteration(self, cfg: Config, iteration: int, m_updates: int) -> tuple[list, int]:
        """Submit training iteration ``iteration`` (0-based) with the workers' schedule."""
        if self.schedule is None:
            return schedule_iteration(self, cfg, m_updates)
        return self.schedule.iteration(self, cfg, iteration, m_updates)

    def state(self) -> dict:
        g, m = self.get([self.call(self.g, "state"), self.call(self.m, "state") if self.m else None])
        out = {"g": g, "m": m}
        if self.schedule is not None:
            out["schedule"] = self.schedule.state(self)
        return out

    def load_state(self, state: dict) -> None:
        refs = [self.call(self.g, "load_state", state["g"])]
        if self.m is not None:
            refs.append(self.call(self.m, "load_state", state["m"]))
        self.get(refs)
        if self.schedule is not None:
            self.schedule.load_state(self, state.get("schedule"))


def local_workers(cfg: Config, data: Dataset, device: Optional[str] = None) -> Workers:
    """Both learners in this process."""
    device = device or cfg.run.device
    args = (cfg, data.vocab_size, data.seq_len, data.train, data.eos_id, device)
    g = GeneratorLearner(*args)
    m = MediatorLearner(*args) if cfg.cot.algo == "cot" else None
    return Workers(g, m)


def initial_sync(w: Workers) -> None:
    """G starts with a copy of the freshly initialised M."""
    if w.m is not None:
        w.get(w.call(w.g, "set_mediator_weights", w.call(w.m, "get_weights")))


def schedule_iteration(w: Workers, cfg: Config, m_updates: int) -> tuple[list, int]:
    """Submit one training iteration; return the stats (or futures of them) and the new M update count.

    CoT: one batch of ``(m_steps + 1) * B`` fresh G samples feeds the ``m_steps`` mediator
    updates and the first generator update (G does not change in between, so the chunks are
    independent draws from the current G); M's weights reach G every ``sync_every`` updates;
    each further generator update samples anew from the updated G.
    """
    B = cfg.cot.batch_size
    if cfg.cot.algo == "mle":
        return [w.call(w.g, "step_mle") for _ in range(cfg.cot.g_steps)], m_updates
    stats = []
    fake = w.call(w.g, "sample", B * (cfg.cot.m_steps + 1))
    for i in range(cfg.cot.m_steps):
        stats.append(w.call(w.m, "step", fake, i * B, B))
        m_updates += 1
        if m_updates % cfg.cot.sync_every == 0:
            w.call(w.g, "set_mediator_weights", w.call(w.m, "get_weights"))
    stats.append(w.call(w.g, "step_cot", fake, cfg.cot.m_steps * B, B))
    for _ in range(cfg.cot.g_steps - 1):
        stats.append(w.call(w.g, "step_cot", w.call(w.g, "sample", B)))
    return stats, m_updates


# ----------------------------------------------------------------------------- run directories


def new_run_dir(cfg: Config) -> str:
    name = cfg.run.name or f"{cfg.cot.algo}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir = os.path.join(cfg.run.logdir, name)
    if os.path.exists(os.path.join(run_dir, CHECKPOINT)) or os.path.exists(os.path.join(run_dir, CONFIG)):
        raise ConfigError(f"run directory '{run_dir}' already holds a run: continue it with "
                          f"--resume {run_dir} or pick another name (--set run.name=...)")
    os.makedirs(run_dir, exist_ok=True)
    return run_dir


def resume_config(run_dir: str, iters: Optional[int] = None, minutes: Optional[float] = None) -> Config:
    """The saved config of ``run_dir``; only the stopping rule may change on resume."""
    path = os.path.join(run_dir, CONFIG)
    if not os.path.exists(path):
        raise CheckpointError(f"'{run_dir}' is not a cot-ray run directory (no {CONFIG}): give the "
                              "directory that `cot-ray train` printed")
    from .config import read_yaml  # local import: only resume needs it
    cfg = from_dict(read_yaml(path))
    saved_vocab = run_vocab_path(run_dir)
    if saved_vocab is not None:  # the run's own vocabulary, wherever its directory is now
        cfg.data.vocab_path = os.path.abspath(saved_vocab)
    elif cfg.data.vocab_path and not os.path.exists(cfg.data.vocab_path):
        raise CheckpointError(f"run '{run_dir}' has lost its vocabulary (recorded as '{cfg.data.vocab_path}'): "
                              f"copy that {VOCAB_FILE} back into the run directory")
    if iters is not None:
        cfg.run.iters = iters
    if minutes is not None:
        cfg.run.minutes = minutes
    return cfg.validate()


def check_vocab_size(weights: dict, vocab_size: int) -> None:
    """A clear error when a checkpoint's models were trained on another vocabulary than the data's."""
    trained = checkpoint_vocab_size(weights)
    if trained is not None and trained != vocab_size:
        raise CheckpointError(f"the checkpoint's models have a vocabulary of {trained} tokens but the data "
                              f"now has {vocab_size}: the corpus or data settings changed since training; "
                              "restore the run's vocab.json (data.vocab_path) or its data files")


def model_from_weights(vocab_size: int, mcfg, weights: dict, device: str = "cpu") -> LSTMLM:
    check_vocab_size(weights, vocab_size)
    model = LSTMLM(vocab_size, mcfg).to(device)
    copy_weights(model, weights)
    return model.eval()


# ----------------------------------------------------------------------------- logging


class RunLog:
    """tensorboardX scalars (train/, eval/, time/), metrics.jsonl and a progress line."""

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
        with open(self.metrics_path, encoding="utf-8") as f:
            rows = [r for r in f if r.strip() and json.loads(r)["iteration"] <= iteration]
        tmp = self.metrics_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(rows)
        os.replace(tmp, self.metrics_path)

    def close(self) -> None:
        self.writer.close()


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(r) for r in f if r.strip()]


def _fmt(d: dict, keys) -> str:
    return "  ".join(f"{k} {d[k]:.3f}" for k in keys if d.get(k) is not None)


class _StopFlag:
    """The first Ctrl-C asks the loop to stop at the end of the iteration (and checkpoint);
    a second one interrupts at once."""

    def __init__(self):
        self.stop = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._old = None
        return self

    def _handle(self, signum, frame):
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


# ----------------------------------------------------------------------------- the run


class Trainer:
    """Runs the schedule over ``Workers`` with evaluation, logging and checkpoints.

    ``on_eval`` (a Tune trial's reporter) is called after every evaluation, once the checkpoint
    of that iteration is written: with a hook, every evaluation is followed by a checkpoint.
    """

    def __init__(self, cfg: Config, run_dir: str, data: Dataset, workers: Workers,
                 echo: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
                 eval_device: str = "cpu", on_eval: Optional[EvalHook] = None):
        self.cfg, self.run_dir, self.data, self.w, self.echo = cfg, run_dir, data, workers, echo
        self.eval_device = eval_device
        self.on_eval = on_eval
        self.ckpt_path = os.path.join(run_dir, CHECKPOINT)
        self.iteration = 0
        self.m_updates = 0
        self.elapsed = 0.0  # training seconds, over all sessions of this run
        self.last_eval: dict = {}
        self._evaluator: Optional[Evaluator] = None
        self._last: tuple = ({}, True)  # (last checkpoint state, whether it is a fresh start)

    # -- state
    def checkpoint_state(self) -> dict:
        return {"iteration": self.iteration, "m_updates": self.m_updates, "elapsed": self.elapsed,
                "last_eval": self.last_eval, "config": self.cfg.to_dict(), **self.w.state()}

    def save(self) -> None:
        state = self.checkpoint_state()
        save_checkpoint(self.ckpt_path, state)
        self._last = (state, False)

    def restore(self, state: dict) -> None:
        self.w.load_state(state)
        self.iteration = int(state["iteration"])
        self.m_updates = int(state["m_updates"])
        self.elapsed = float(state["elapsed"])
        self.last_eval = dict(state.get("last_eval") or {})

    # -- evaluation
    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            d = self.data
            self._evaluator = make_evaluator(d, self.cfg.eval, self.mask_fn)
        return self._evaluator

    def mask_fn(self, x):
        return sequence_mask(x, self.data.eos_id)

    def evaluate(self) -> dict:
        g_w, m_w = self.w.get([self.w.call(self.w.g, "get_weights"),
                               self.w.call(self.w.m, "get_weights") if self.w.m else None])
        V = self.data.vocab_size
        g = model_from_weights(V, self.cfg.generator, g_w, self.eval_device)
        m = model_from_weights(V, self.cfg.mediator, m_w, self.eval_device) if m_w is not None else None
        return self.evaluator().evaluate(g, m, eval_seed(self.cfg.run.seed, self.iteration))

    # -- the loop
    def _done(self, session_start: float, elapsed0: float) -> bool:
        """Whether the stopping rule is met; training seconds are ``elapsed0`` (earlier sessions)
        plus the time since ``session_start`` (which evaluation pushes forward)."""
        run = self.cfg.run
        if run.iters > 0 and self.iteration >= run.iters:
            return True
        return run.minutes > 0 and elapsed0 + (time.perf_counter() - session_start) >= run.minutes * 60

    def run(self, fresh: bool = True) -> dict:
        """Train until the stopping rule; return the summary.

        If the workers report a failure (``Workers.is_failure``), they are recovered and
        the last checkpoint (kept in memory; the start of the run before the first one) is
        loaded back, so the run goes on from there and loses at most one checkpoint interval.
        """
        self._last = (self.checkpoint_state(), fresh)
        while True:
            try:
                return self._run(fresh)
            except Exception as exc:  # noqa: BLE001 - re-raised unless the workers call it a failure
                if not self.w.is_failure(exc):
                    raise
                state, fresh = self._last
                self.echo(f"[cot-ray] worker failure ({type(exc).__name__}): restoring both workers "
                          f"from iteration {state['iteration']}")
                self.w.recover(self.w)
                self.restore(state)

    def _run(self, fresh: bool) -> dict:
        cfg, w = self.cfg, self.w
        log = RunLog(self.run_dir, self.echo)
        if fresh:
            save_run_data(self.run_dir, cfg.data, self.data)  # text: vocab.json, recorded in the config
            save_config(cfg, os.path.join(self.run_dir, CONFIG))
            initial_sync(w)
        else:
            log.truncate_after(self.iteration)
        self.echo(f"[cot-ray] {cfg.cot.algo} run in {self.run_dir} from iteration {self.iteration}"
                  + (f" to {cfg.run.iters}" if cfg.run.iters else "")
                  + (f" (at most {cfg.run.minutes:g} min)" if cfg.run.minutes else ""))
        for note in ([self.data.summary] if self.data.summary else []) + self.data.notes:
            self.echo(f"[cot-ray] {note}")
        pending: list = []
        sums: dict = defaultdict(float)
        counts: dict = defaultdict(int)
        t_start = time.perf_counter()
        elapsed0 = self.elapsed
        t_window, it_window = t_start, self.iteration
        stopped_by_user = False
        last = self._done(t_start, elapsed0)  # decided once per iteration: the final one always evaluates and saves
        try:
            with _StopFlag() as flag:
                while not last:
                    stats, self.m_updates = w.iteration(cfg, self.iteration, self.m_updates)
                    pending.extend(stats)
                    self.iteration += 1
                    it = self.iteration
                    last = self._done(t_start, elapsed0) or flag.stop
                    if it % cfg.run.log_every == 0 or last:
                        for s in w.get(pending):
                            for k, v in s.items():
                                sums[k] += v
                                counts[k] += 1
                        pending = []
                        now = time.perf_counter()
                        ips = (it - it_window) / max(now - t_window, 1e-9)
                        t_window, it_window = now, it
                        train = {k: sums[k] / counts[k] for k in sums}
                        sums.clear()
                        counts.clear()
                        self.elapsed = elapsed0 + (now - t_start)
                        log.scalars("train", train, it)
                        log.scalars("time", {"iters_per_sec": ips, "elapsed_s": self.elapsed}, it)
                        self.echo(f"[{cfg.cot.algo}] it {it}" + (f"/{cfg.run.iters}" if cfg.run.iters else "")
                                  + f"  {ips:.1f} it/s  " + _fmt(train, ("m_balanced_nll", "m_kl", "g_kl", "g_nll"))
                                  + ("  | " + _fmt(self.last_eval, ("nll_oracle", "nll_test", "jsd", "bleu4"))
                                     if self.last_eval else ""))
                    evaluated = bool(cfg.eval.every and it % cfg.eval.every == 0) or last
                    if evaluated:
                        w.get(pending)
                        t0 = time.perf_counter()
                        self.last_eval = self.evaluate()
                        eval_s = time.perf_counter() - t0
                        t_start += eval_s  # evaluation time is not training time
                        t_window += eval_s
                        self.elapsed = elapsed0 + (time.perf_counter() - t_start)
                        log.eval_row(it, self.elapsed, self.last_eval)
                        log.scalars("time", {"eval_s": eval_s}, it)
                        self.echo(f"[{cfg.cot.algo}] eval @ {it}: " + _fmt(self.last_eval, METRIC_KEYS))
                    if it % cfg.run.checkpoint_every == 0 or last or flag.stop or (evaluated and self.on_eval):
                        w.get(pending)
                        self.elapsed = elapsed0 + (time.perf_counter() - t_start)
                        self.save()
                    if evaluated and self.on_eval is not None:
                        self.on_eval(it, dict(self.last_eval), self.run_dir, self.elapsed)
                    if flag.stop:
                        stopped_by_user = True
                        self.echo(f"[cot-ray] interrupted: checkpoint at iteration {it} written; "
                                  f"continue with: cot-ray train --resume {self.run_dir}")
                        break
        finally:
            log.close()
        return {"run_dir": self.run_dir, "iteration": self.iteration, "elapsed_s": self.elapsed,
                "metrics": self.last_eval, "interrupted": stopped_by_user}


def train(cfg: Config, resume_dir: Optional[str] = None, echo: Optional[Callable[[str], None]] = None,
          make_workers: Callable[[Config, Dataset], Workers] = local_workers,
          on_eval: Optional[EvalHook] = None) -> dict:
    """Start (or, with ``resume_dir``, continue) a run of the in-process loop; return its summary.

    ``on_eval``: see :class:`Trainer`."""
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    data = load_dataset(cfg.data)  # first: unusable data leaves no empty run directory behind
    if resume_dir is not None:
        state = load_checkpoint(os.path.join(resume_dir, CHECKPOINT))
        run_dir = resume_dir
    else:
        state = None
        run_dir = new_run_dir(cfg)
    if state is not None:
        check_vocab_size(state["g"]["model"], data.vocab_size)
    kwargs = {"echo": echo} if echo else {}
    trainer = Trainer(cfg, run_dir, data, make_workers(cfg, data), eval_device=cfg.run.device,
                      on_eval=on_eval, **kwargs)
    if state is not None:
        trainer.restore(state)
    return trainer.run(fresh=state is None)
