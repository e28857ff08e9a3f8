"""The Trainer: the run around the schedule (logging, evaluation, checkpoints, resume,
recovery from lost workers, stop requests, divergence), and :func:`run_trainer`, which starts
or continues one.

The Trainer talks to the learners through a :class:`cot_ray.group.LearnerGroup` and runs the
:class:`cot_ray.schedule.Schedule`; it does not know whether the learners live in this process
or on Ray actors (docs/runtime.md, "Determinism"). Run directories and their files are
:mod:`cot_ray.rundir`'s. The library changes no process state: the process set-up (malloc,
signal handlers) is the command line's (:mod:`cot_ray.machine`, :mod:`cot_ray.stopping`).
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from collections import defaultdict, deque
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable, Optional

import torch

from .checkpoint import (
    BEST,
    CHECKPOINT,
    CONFIG,
    G,
    M,
    learner_part,
    learner_weights,
    save_checkpoint,
)
from .config import Config, selection_metric
from .config_loading import save_config
from .data import Dataset, load_dataset, save_run_data
from .group import LearnerGroup, local_group
from .machine import resolve_threads, torch_threads
from .metric_names import METRIC_KEYS
from .metrics import Evaluator, make_evaluator
from .run_policy import budgeted_eval_note, stop_reason
from .rundir import (
    RunLock,
    RunLog,
    check_vocab_size,
    format_values,
    open_run,
    run_checkpoint,
)
from .schedule import Schedule, make_schedule
from .seeds import EVALUATION, derive_seed
from .stopping import StopRequest

# Called after each evaluation and the checkpoint that follows it:
# (iteration, metrics, run directory, training seconds so far).
EvalHook = Callable[[int, dict, str, float], None]


def clock_text(seconds: float) -> str:
    """Seconds as H:MM:SS (or M:SS under an hour)."""
    s = int(round(max(seconds, 0.0)))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


class DivergenceError(RuntimeError):
    """A NaN or Inf loss, metric or weight: the run stops, keeping its last good checkpoints."""


_LEARNERS = (("g_", "generator"), ("m_", "mediator"), ("inner", "inner mediator"))


def _learner_of(key: str) -> str:
    return next((name for prefix, name in _LEARNERS if key.startswith(prefix)), "run")


def first_nonfinite(values: dict) -> Optional[str]:
    """The first key of ``values`` whose number is NaN or infinite, or None."""
    return next((k for k, v in values.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v)), None)


def nonfinite_tensor(state, where: str = "") -> Optional[str]:
    """The dotted key of the first floating-point tensor of ``state`` holding a NaN or Inf, or None."""
    if isinstance(state, torch.Tensor):
        return where if state.is_floating_point() and not bool(torch.isfinite(state).all()) else None
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    for k, v in items:
        found = nonfinite_tensor(v, f"{where}.{k}" if where else str(k))
        if found:
            return found
    return None


# ----------------------------------------------------------------------------- the run


class Stopwatch:
    """Training seconds: running while the run trains, paused while it evaluates.

    ``before`` is the training time of earlier sessions of the run (resume)."""

    def __init__(self, before: float = 0.0):
        self._start = time.perf_counter() - before

    def seconds(self) -> float:
        return time.perf_counter() - self._start

    @contextmanager
    def paused(self):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._start += time.perf_counter() - t0


class _Means:
    """Per-key means of the stats added since the last :meth:`take`, and the iterations/second
    on the training clock over that stretch."""

    def __init__(self, iteration: int, seconds: float):
        self._sums: dict = defaultdict(float)
        self._counts: dict = defaultdict(int)
        self._start = (iteration, seconds)

    def add(self, stats: dict) -> None:
        for k, v in stats.items():
            self._sums[k] += v
            self._counts[k] += 1

    def take(self, iteration: int, seconds: float) -> tuple[dict, float]:
        rate = (iteration - self._start[0]) / max(seconds - self._start[1], 1e-9)
        means = {k: self._sums[k] / self._counts[k] for k in self._sums}
        self.__init__(iteration, seconds)
        return means, rate


class StatsWindow:
    """The training stats of the iterations since the last log row and since the last progress
    line (two windows: rows come every ``run.log_every`` iterations, lines every few seconds),
    and their rates.

    Stats arrive as values or futures (``LearnerGroup.get`` resolves them), one list per
    iteration. :meth:`add` keeps at most ``in_flight`` iterations unresolved (the runtime's
    schedule is asynchronous: without a bound the driver would run ahead, and a Ctrl-C would
    have to wait for everything it had queued); :meth:`collect` waits for every submitted
    iteration; :meth:`flush` returns the per-key means and iterations/second on the training
    clock of one window and starts it anew. A NaN or Inf among an iteration's stats stops the
    run (:class:`DivergenceError`, naming the learner and the iteration).
    """

    def __init__(self, iteration: int, clock: Stopwatch, in_flight: int = 1):
        self._pending: deque = deque()
        self._in_flight = in_flight
        now = clock.seconds()
        self._windows = {"row": _Means(iteration, now), "line": _Means(iteration, now)}

    def add(self, learners: LearnerGroup, stats: list, iteration: int) -> None:
        """``stats``: the values or futures of ``iteration`` (counted from 1)."""
        self._pending.append((iteration, stats))
        while len(self._pending) > self._in_flight:
            self._resolve(learners)

    def drop(self) -> list:
        """Forget the unresolved iterations (a failure made them void); -> their futures."""
        out = [x for _, stats in self._pending for x in stats]
        self._pending.clear()
        return out

    def _resolve(self, learners: LearnerGroup) -> None:
        iteration, stats = self._pending.popleft()
        for s in learners.get(stats):
            if s is None:  # a call without stats (a weight sync): waited for, nothing to count
                continue
            bad = first_nonfinite(s)
            if bad is not None:
                raise DivergenceError(f"the {_learner_of(bad)}'s {bad} is {s[bad]} at iteration {iteration}")
            for window in self._windows.values():
                window.add(s)

    def collect(self, learners: LearnerGroup) -> None:
        while self._pending:
            self._resolve(learners)

    def flush(self, learners: LearnerGroup, iteration: int, clock: Stopwatch, window: str = "row") -> tuple[dict, float]:
        """The means and rate of ``window`` ("row": since the last log row; "line": since the
        last progress line), which starts anew."""
        self.collect(learners)
        return self._windows[window].take(iteration, clock.seconds())


class Trainer:
    """Runs the schedule over a learner group with evaluation, logging and checkpoints.

    ``on_eval`` (a Tune trial's reporter) is called after every evaluation, once the checkpoint
    of that iteration is written: with a hook, every evaluation is followed by a checkpoint.
    ``stop`` (:class:`cot_ray.stopping.StopRequest`) is checked between iterations: once it
    is requested the run checkpoints and ends (it is the caller's to set, e.g. from signals).
    """

    def __init__(self, cfg: Config, run_dir: str, data: Dataset, learners: LearnerGroup,
                 echo: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
                 on_eval: Optional[EvalHook] = None, schedule: Optional[Schedule] = None,
                 stop: Optional[StopRequest] = None):
        self.cfg, self.run_dir, self.data, self.learners, self.echo = cfg, run_dir, data, learners, echo
        self.schedule = schedule if schedule is not None else make_schedule(cfg)
        self.on_eval = on_eval
        self.ckpt_path = os.path.join(run_dir, CHECKPOINT)
        self.iteration = 0
        self.m_updates = 0
        self.elapsed = 0.0  # training seconds, over all sessions of this run
        self.last_eval: dict = {}
        self.select = selection_metric(cfg)  # the metric that picks best.pt, or None
        self.best: dict = {}  # {"iteration", "metric", "value"} of best.pt
        self.stale_evals = 0  # evaluations since the selection metric last improved (run.patience)
        self._evaluator: Optional[Evaluator] = None
        self._restore_point: tuple = ({}, True)  # (last checkpoint state, whether it is a fresh start)
        self._window: Optional[StatsWindow] = None  # the stats of the iterations in flight
        self.stop = stop if stop is not None else StopRequest()

    # -- state
    def checkpoint_state(self) -> dict:
        state = {"iteration": self.iteration, "m_updates": self.m_updates, "elapsed": self.elapsed,
                 "last_eval": self.last_eval, "best": self.best, "stale_evals": self.stale_evals,
                 "config": self.cfg.to_dict(), **self.learners.state()}
        pipeline = self.schedule.state(self.learners)
        if pipeline is not None:
            state["schedule"] = pipeline
        return state

    def save(self) -> None:
        state = self._finite_state()
        save_checkpoint(self.ckpt_path, state)
        self._restore_point = (state, False)

    def _finite_state(self) -> dict:
        """The checkpoint state, when all its weights and optimizer moments are finite: a
        diverged state never overwrites a checkpoint (:class:`DivergenceError` instead)."""
        state = self.checkpoint_state()
        bad = nonfinite_tensor({k: learner_part(state, k) for k in (G, M) if learner_part(state, k) is not None})
        if bad is not None:
            raise DivergenceError(f"the {'generator' if bad.startswith(G + '.') else 'mediator'}'s {bad} holds NaN or "
                                  f"Inf at iteration {self.iteration}")
        return state

    def diverged(self, exc: DivergenceError) -> DivergenceError:
        """``exc`` with what is left on disk and what to do, as one line."""
        state, unsaved = self._restore_point
        kept = ("no checkpoint was written yet" if unsaved else
                f"the last good checkpoint ({CHECKPOINT}) is at iteration {state['iteration']}")
        if self.best:
            kept += f", {BEST} at iteration {self.best['iteration']}"
        return DivergenceError(f"the run diverged: {exc}; it stopped, and {kept} in {self.run_dir}; start a new "
                               "run with a smaller learning rate (g_optim.lr, m_optim.lr) or another seed")

    def restore(self, state: dict) -> None:
        self.learners.load_state(state)
        self.schedule.load_state(self.learners, state.get("schedule"))
        self.iteration = int(state["iteration"])
        self.m_updates = int(state["m_updates"])
        self.elapsed = float(state["elapsed"])
        self.last_eval = dict(state.get("last_eval") or {})
        self.best = dict(state.get("best") or {})
        self.stale_evals = int(state.get("stale_evals", 0))

    # -- evaluation
    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            self._evaluator = make_evaluator(self.data, self.cfg.eval)
        return self._evaluator

    # -- the loop
    def _stop_reason(self, clock: Stopwatch) -> Optional[str]:
        """Why the run stops now (iterations, minutes of training, early stopping), or None."""
        return stop_reason(self.cfg.run, self.iteration, clock.seconds(), self.stale_evals)

    def run(self, fresh: bool = True) -> dict:
        """Train until the stopping rule; return the summary.

        If the learners report a failure (``LearnerGroup.is_failure``), they are recovered and
        the last checkpoint (kept in memory; the start of the run before the first one) is
        loaded back, so the run goes on from there and loses at most one checkpoint interval.
        """
        self._restore_point = (self.checkpoint_state(), fresh)
        try:
            while True:
                try:
                    return self._run(fresh)
                except DivergenceError as exc:
                    raise self.diverged(exc) from None
                except Exception as exc:  # noqa: BLE001 - re-raised unless the learners call it a failure
                    if not self.learners.is_failure(exc):
                        raise
                    state, fresh = self._restore_point
                    self.echo(f"[cot-ray] worker failure ({type(exc).__name__}): restoring both learners "
                              f"from iteration {state['iteration']}")
                    self._recover(state)
        except KeyboardInterrupt:  # a second stop signal, or Ctrl-C with no handler: say what is left, stop
            state, unsaved = self._restore_point
            self.echo("[cot-ray] stopped at once: " + (
                "no checkpoint was written yet" if unsaved else
                f"the last checkpoint is at iteration {state['iteration']}; continue with: "
                f"cot-ray train --resume {self.run_dir}"))
            raise

    def _recover(self, state: dict) -> None:
        """Make the learners callable again and load ``state``; a failure during the recovery
        (another worker lost) starts it over, until the runtime gives up (no restarts left)."""
        if self._window is not None:
            self.learners.discard(self._window.drop())
        while True:
            try:
                self.learners.recover()
                self.restore(state)
                return
            except Exception as exc:  # noqa: BLE001 - as in run()
                if not self.learners.is_failure(exc):
                    raise
                self.echo(f"[cot-ray] another worker failure during the recovery ({type(exc).__name__}): "
                          "recovering again")

    def _start(self, fresh: bool) -> RunLog:
        """Write a fresh run's files (before any log file: a directory killed in between holds no
        run) and open the log; forget the log rows the checkpoint does not hold."""
        cfg = self.cfg
        if fresh:
            # text: vocab.json, eval_data.npz, and the data config that names them
            cfg = self.cfg = replace(cfg, data=save_run_data(self.run_dir, cfg.data, self.data, cfg.eval.num_train))
            save_config(cfg, os.path.join(self.run_dir, CONFIG))
            self.learners.sync_mediator()
        log = RunLog(self.run_dir, self.echo)
        log.truncate_after(self.iteration)
        self.echo(f"[cot-ray] {cfg.cot.algo} run in {self.run_dir} from iteration {self.iteration}"
                  + (f" to {cfg.run.iters}" if cfg.run.iters else "")
                  + (f" (at most {cfg.run.minutes:g} min)" if cfg.run.minutes else ""))
        budget_note = budgeted_eval_note(cfg)
        for note in ([self.data.summary] if self.data.summary else []) + self.data.notes + \
                ([budget_note] if budget_note else []):
            self.echo(f"[cot-ray] {note}")
        return log

    def _log_row(self, log: RunLog, train: dict, rate: float) -> None:
        log.scalars("train", train, self.iteration)
        log.scalars("time", {"iters_per_sec": rate, "elapsed_s": self.elapsed}, self.iteration)

    def _progress(self, train: dict, rate: float) -> None:
        it, run = self.iteration, self.cfg.run
        eta = [t for t in ((run.iters - it) / rate if run.iters and rate > 0 else None,
                           run.minutes * 60 - self.elapsed if run.minutes else None) if t is not None]
        where = f"it {it}/{run.iters}" if run.iters else f"it {it}"
        self.echo(f"[{self.cfg.cot.algo}] {where}  {clock_text(self.elapsed)}"
                  + (f" of {clock_text(run.minutes * 60)}" if run.minutes and not run.iters else "")
                  + f"  {rate:.1f} it/s" + (f"  ETA {clock_text(min(eta))}" if eta else "")
                  + "  " + format_values(train, ("m_mix_nll", "m_kl", "g_kl", "g_nll"))
                  + ("  | " + format_values(self.last_eval, ("kl_forward", "kl_reverse", "nll_oracle", "nll_test", "bleu4"))
                     if self.last_eval else ""))

    def _evaluate(self, log: RunLog, clock: Stopwatch) -> None:
        """Evaluate the current iteration (seeded by it), log the metrics and keep best.pt."""
        c = self.cfg.eval
        what = (f"{min(c.num_test, len(self.data.test)):,} test sequences"
                + (f", {c.num_samples:,} samples" if self.data.oracle is not None else f", {c.bleu_samples:,} samples"))
        self.echo(f"[{self.cfg.cot.algo}] evaluating iteration {self.iteration} ({what})...")
        t0 = time.perf_counter()
        with clock.paused():  # evaluation time is not training time
            metrics = self.learners.evaluate(self.evaluator(), derive_seed(self.cfg.run.seed, self.iteration, EVALUATION))
        bad = first_nonfinite(metrics)
        if bad is not None:  # neither logged nor a candidate for best.pt
            raise DivergenceError(f"the evaluation's {bad} is {metrics[bad]} at iteration {self.iteration}")
        self.last_eval = metrics
        eval_s = time.perf_counter() - t0
        self.elapsed = clock.seconds()
        log.eval_row(self.iteration, self.elapsed, self.last_eval)
        log.scalars("time", {"eval_s": eval_s}, self.iteration)
        self.echo(f"[{self.cfg.cot.algo}] eval @ {self.iteration} ({eval_s:.0f} s): "
                  + format_values(self.last_eval, METRIC_KEYS))
        self._keep_if_best()

    def _keep_if_best(self) -> None:
        """Write best.pt when the selection metric (validation only, never the test set) improves."""
        value = self.last_eval.get(self.select) if self.select else None
        if value is None:
            return
        if self.best and value >= self.best["value"]:
            self.stale_evals += 1
            return
        state = self._finite_state()
        self.stale_evals = 0
        self.best = {"iteration": self.iteration, "metric": self.select, "value": float(value)}
        save_checkpoint(os.path.join(self.run_dir, BEST), {**state, "best": self.best, "stale_evals": 0})
        self.echo(f"[{self.cfg.cot.algo}] best so far by {self.select}: {value:.4f} at iteration {self.iteration} "
                  f"({BEST})")

    def _run(self, fresh: bool) -> dict:
        cfg, learners = self.cfg, self.learners
        log = self._start(fresh)
        clock = Stopwatch(before=self.elapsed)
        window = self._window = StatsWindow(self.iteration, clock)
        stop = self.stop
        saved = -1  # the iteration of this session's last checkpoint
        shown = time.monotonic()  # when the last progress line was printed (wall clock)
        # decided once per iteration: the final one always evaluates and saves; a signal that came
        # while the run started or recovered from a worker failure stops it before any iteration
        last = self._stop_reason(clock) is not None or stop.requested
        try:
            while not last:
                stats, self.m_updates = self.schedule.iteration(learners, cfg, self.iteration, self.m_updates)
                self.iteration += 1
                window.add(learners, stats, self.iteration)
                it = self.iteration
                last = self._stop_reason(clock) is not None or stop.requested
                row_due = it % cfg.run.log_every == 0 or last
                if row_due:
                    train, rate = window.flush(learners, it, clock, "row")
                    self.elapsed = clock.seconds()
                    self._log_row(log, train, rate)
                if last or (time.monotonic() - shown >= cfg.run.progress_s if cfg.run.progress_s > 0 else row_due):
                    train, rate = window.flush(learners, it, clock, "line")
                    self.elapsed = clock.seconds()
                    self._progress(train, rate)
                    shown = time.monotonic()
                # the final iteration evaluates, unless it ends because of a stop signal
                evaluated = not stop.requested and (bool(cfg.eval.every and it % cfg.eval.every == 0) or last)
                if evaluated:
                    window.collect(learners)  # the iteration is complete before its weights are read
                    self._evaluate(log, clock)
                    last = last or self._stop_reason(clock) is not None  # early stopping
                if it % cfg.run.checkpoint_every == 0 or last or stop.requested or (evaluated and self.on_eval):
                    window.collect(learners)
                    self.elapsed = clock.seconds()
                    self.save()
                    saved = it
                if evaluated and self.on_eval is not None:
                    self.on_eval(it, dict(self.last_eval), self.run_dir, self.elapsed)
                last = last or stop.requested
            if stop.requested:
                if saved != self.iteration:
                    self.save()
                self.echo(f"[cot-ray] interrupted: checkpoint at iteration {self.iteration} written; "
                          f"continue with: cot-ray train --resume {self.run_dir}")
        finally:
            log.close()
        return {"run_dir": self.run_dir, "iteration": self.iteration, "elapsed_s": self.elapsed,
                "metrics": self.last_eval, "interrupted": stop.requested, "signal": stop.signum,
                "stopped_by": None if stop.requested else self._stop_reason(clock)}


def run_trainer(cfg: Config, resume_dir: Optional[str] = None, echo: Optional[Callable[[str], None]] = None,
                make_learners: Callable[[Config, Dataset], LearnerGroup] = local_group,
                on_eval: Optional[EvalHook] = None, data: Optional[Dataset] = None,
                threads_note: Optional[str] = None, claim: Optional[RunLock] = None,
                stop: Optional[StopRequest] = None) -> dict:
    """Start (or, with ``resume_dir``, continue) a run with the learners that ``make_learners``
    gives (default: in this process); return its summary. ``on_eval``: see :class:`Trainer`;
    ``data``: the run's data set when the caller has loaded it already; ``threads_note``: what
    :func:`resolve_threads` said when the caller resolved the threads already; ``claim``: the
    run directory when the caller holds it already (:func:`cot_ray.rundir.open_run`; it stays
    the caller's to release). The run holds its directory until it ends; a resumed run with no
    checkpoint yet starts over from iteration 0.

    It changes no process state and not ``cfg``: torch's thread count is ``run.threads`` while
    the run trains and what it was before afterwards; no signal handler is installed. ``stop``
    (:class:`cot_ray.stopping.StopRequest`) asks for a stop after the current iteration, with a
    checkpoint (``cot-ray train`` sets it from Ctrl-C, SIGTERM and SIGHUP with
    :func:`cot_ray.stopping.stop_on_signals`); without it, Ctrl-C (in a notebook: interrupt the
    kernel) raises KeyboardInterrupt as anywhere in Python, after a line saying where the last
    checkpoint is, from which ``resume_dir`` continues."""
    say = echo or (lambda s: print(s, file=sys.stderr, flush=True))
    cfg = copy.deepcopy(cfg)  # the run's own config: what it resolves and records is not the caller's
    if threads_note is None:
        cfg, threads_note = resolve_threads(cfg)
    with torch_threads(cfg.run.threads):  # the run's float sums depend on it; data sets included
        data = data if data is not None else load_dataset(cfg.data)  # unusable data leaves no run directory behind
        own = claim is None
        claim = claim if claim is not None else open_run(cfg, resume_dir)
        try:
            state = None if claim.fresh else run_checkpoint(cfg, os.path.join(claim.run_dir, CHECKPOINT))
            if resume_dir is not None and state is None:
                say(f"[cot-ray] {claim.run_dir} has no checkpoint: it stopped before its first one; starting it over "
                    "from iteration 0 with its saved config")
            if state is not None:
                check_vocab_size(learner_weights(state, G), cfg.generator, data.vocab_size)
            learners = make_learners(cfg, data)
            say(f"[cot-ray] {learners.where}; this process: {threads_note}")
            trainer = Trainer(cfg, claim.run_dir, data, learners, echo=say, on_eval=on_eval, stop=stop)
            if state is not None:
                trainer.restore(state)
            return trainer.run(fresh=state is None)
        finally:
            if own:
                claim.release()
