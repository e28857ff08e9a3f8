"""Hyperparameter sweeps with Ray Tune: ``cot-ray tune SWEEP.yaml`` (the driver and its storage).

A sweep is four jobs, one module each: the sweep file's schema and validation
(:mod:`cot_ray.sweep.spec`, no Ray), the body of a trial (:mod:`cot_ray.sweep.trial`), the
results table (:mod:`cot_ray.sweep.results`) and, here, the driver: connecting to Ray, the
experiment directory (a local path or a storage URI), the scheduler, and running or resuming
the Tune experiment.

Results go to STORAGE_PATH/NAME: Tune's trial directories ``trial_<id>`` (each with its run
directories ``run``, ``run-2``, ... one per session of the trial: a session restored from a
checkpoint starts a new one; ``train.log``, the runs' progress lines; Tune's
``checkpoint_*`` copies, ``params.json`` and ``result.json``), ``sweep.yaml``
(the resolved sweep, used by ``--resume``) and at the end ``best_config.yaml``, the full
training config of the best trial, which ``cot-ray train --config`` runs as is.

This module imports Ray (and Ray Tune); the CLI imports it lazily.
"""

from __future__ import annotations

import copy
import os
import signal
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

import ray
from ray import tune

from .. import connection, placement, runtime
from ..config import RuntimeConfig, check_address
from ..config_loading import from_dict, load_yaml, nest_keys, read_yaml, write_yaml
from ..data import load_dataset
from ..errors import ConfigError
from .results import best_config, best_row, format_table, trial_row, trial_rows
from .spec import PERTURBABLE, ParamSpec, Sweep, is_uri, plain
from .trial import DRIVER_BUNDLE, make_trainable, trial_dirname, trial_resources

SWEEP_FILE = "sweep.yaml"
BEST_CONFIG = "best_config.yaml"
TUNE_LOG = "tune.log"  # the trials' status table every STATUS_EVERY_S, unless --show-tune
STATUS_EVERY_S = 30.0


def tune_domain(p: ParamSpec) -> Any:
    """The Tune search-space entry of a ``search`` spec."""
    lo_hi = p.args
    if p.kind == "uniform":
        return tune.uniform(lo_hi[0], lo_hi[1])
    if p.kind == "loguniform":
        return tune.loguniform(lo_hi[0], lo_hi[1])
    if p.kind == "randint":
        return tune.randint(lo_hi[0], lo_hi[1] + 1)  # Tune's upper bound is exclusive
    if p.kind == "choice":
        return tune.choice(list(p.args))
    if p.kind == "grid_search":
        return tune.grid_search(list(p.args))
    return p.args[0]


def tune_mutation(p: ParamSpec) -> Any:
    """What PBT resamples a key from (a Tune domain, or the list of values)."""
    if p.kind in ("choice", "grid_search"):
        return list(p.args)
    return tune_domain(p)


def connect(address: str, trial_cpus: float) -> bool:
    """Connect to Ray as :func:`cot_ray.connection.connect` does; -> whether a local Ray was started
    here (then shut it down at the end). A local Ray gets at least one trial's worth of logical
    CPUs, so a sweep runs (one trial at a time) even on a 2-core machine."""
    check_address(address)  # a malformed address: one line
    return connection.connect(RuntimeConfig(address=address), min_cpus=trial_cpus)


def _max_workers(sweep: Sweep) -> int:
    """The most workers a trial of the sweep can have (cot.algo or nesting may be searched)."""
    configs = [sweep.base] + [from_dict(nest_keys({p.key: v}), copy.deepcopy(sweep.base))
                              for p in sweep.params for v in p.candidates()]
    return max(len(runtime.learner_names(c)) for c in configs)


def _check_cluster(sweep: Sweep, bundle: dict, echo: Callable[[str], None]) -> None:
    """One trial must fit on the cluster (else a one-line PlacementError), unless an autoscaler
    can add the nodes it needs."""
    n = _max_workers(sweep)
    bundles = [dict(DRIVER_BUNDLE)] + [dict(bundle)] * n
    problem = placement.placement_problem(bundles, False, placement.alive_nodes(), ray.cluster_resources())
    if problem is None:
        return
    msg = (f"a trial needs {placement.format_resources(DRIVER_BUNDLE)} for its driver plus {n} worker(s) with "
           f"{placement.format_resources(bundle)}: {problem}")
    if placement.autoscaling(sweep.base.runtime):
        echo(f"[cot-ray] {msg} (waiting for the autoscaler to add nodes)")
        return
    raise placement.PlacementError(msg)


def _experiment_dir(sweep: Sweep, address: str) -> tuple[str, str]:
    """(storage path, experiment name) of a new sweep; refuses to reuse an existing experiment.

    Through Ray Client (``ray://``) the driver runs on the cluster's head, not here: a local
    path would be this machine's, so only an absolute path (on the cluster) or a URI will do.
    """
    storage = sweep.tune.storage_path
    if address.startswith("ray://") and not is_uri(storage) and not os.path.isabs(storage):
        raise ConfigError(f"config key 'tune.storage_path' {storage!r} is relative to this machine, but with --address "
                          f"{address} the sweep's driver runs on the cluster: give --storage an absolute path on the "
                          "cluster's shared storage or a URI such as s3://bucket/path")
    if not is_uri(storage) and not address.startswith("ray://"):
        storage = os.path.abspath(os.path.expanduser(storage))
    name = sweep.tune.name or f"{Path(sweep.path).stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    exp = _join(storage, name)
    if _exists(exp):
        raise ConfigError(f"experiment directory '{exp}' already exists: continue it with --resume {exp} "
                          "or pick another --name")
    return storage, name


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if is_uri(base) else os.path.join(base, name)


def _uri_fs(uri: str):
    import pyarrow.fs  # comes with ray[tune]

    return pyarrow.fs.FileSystem.from_uri(uri)


def _exists(path: str) -> bool:
    """Whether a local path or a storage URI (s3://, gs://, ...) exists."""
    if not is_uri(path):
        return os.path.exists(path)
    import pyarrow.fs

    fs, p = _uri_fs(path)
    return fs.get_file_info(p).type != pyarrow.fs.FileType.NotFound


def _write_yaml(data: dict, path: str) -> None:
    """Write YAML to a local path (temp file, then rename) or a storage URI (one upload)."""
    if not is_uri(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_yaml(data, path)
        return
    import yaml

    fs, p = _uri_fs(path)
    with fs.open_output_stream(p) as f:
        f.write(yaml.safe_dump(data, sort_keys=False).encode("utf-8"))


def _read_yaml(path: str) -> dict:
    if not is_uri(path):
        return read_yaml(path)
    fs, p = _uri_fs(path)
    with fs.open_input_stream(p) as f:
        return load_yaml(f.read().decode("utf-8")) or {}


def _check_resume(sweep: Sweep, exp: str) -> None:
    """``--resume EXP`` continues the sweep saved there: the sweep file must still say the same."""
    if not tune.Tuner.can_restore(exp):
        raise ConfigError(f"'{exp}' holds no Tune experiment to resume: give the experiment directory that "
                          "cot-ray tune printed")
    saved_path = _join(exp, SWEEP_FILE)
    if not _exists(saved_path):
        raise ConfigError(f"'{exp}' has no {SWEEP_FILE}: it was not started by cot-ray tune")
    saved, now = _read_yaml(saved_path), sweep.to_dict()
    for d in (saved, now):
        for k in ("name", "storage_path"):
            d.get("tune", {}).pop(k, None)
    if saved != now:
        diff = _first_difference(saved, now)
        raise ConfigError(f"the sweep in '{exp}' differs from {sweep.path} at '{diff}': resume with the sweep "
                          "file (and --set/--num-samples options) it was started with")


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
    return path or "(top level)"


def _scheduler(sweep: Sweep):
    s = sweep.tune.scheduler
    if s.name == "asha":
        return tune.schedulers.ASHAScheduler(time_attr=s.time_attr, max_t=s.max_t, grace_period=s.grace_period,
                                             reduction_factor=s.reduction_factor)
    if s.name == "pbt":
        mutable = {p.key: p for p in sweep.params if p.varies and p.key in PERTURBABLE}
        if sweep.base.runtime.schedule == "async":
            mutable.pop("cot.m_steps", None)

        def explore(config: dict) -> dict:
            return {k: (mutable[k].clip(plain(v)) if k in mutable else v) for k, v in config.items()}

        return tune.schedulers.PopulationBasedTraining(
            time_attr=s.time_attr, perturbation_interval=s.perturbation_interval,
            hyperparam_mutations={k: tune_mutation(p) for k, p in mutable.items()},
            quantile_fraction=s.quantile_fraction, resample_probability=s.resample_probability,
            custom_explore_fn=explore, synch=s.synch)
    return tune.schedulers.FIFOScheduler()


class SweepProgress(tune.Callback):
    """cot-ray's own progress lines of a sweep: one per trial result, start, end and error."""

    def __init__(self, metric: str, echo: Callable[[str], None]):
        self.metric, self.echo = metric, echo

    def _counts(self, trials) -> str:
        status = [t.status for t in trials]
        failed = f", {status.count('ERROR')} failed" if "ERROR" in status else ""
        return (f"{status.count('RUNNING')} running, {status.count('PENDING')} pending, "
                f"{status.count('TERMINATED')} done{failed}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        self.echo(f"[tune] trial {trial.trial_id} it {result.get('iteration', 0)}  {self.metric} "
                  + ("-" if value is None else f"{value:.4f}") + f"  ({self._counts(trials)})")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.echo(f"[tune] trial {trial.trial_id} finished  ({self._counts(trials)})")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.echo(f"[tune] trial {trial.trial_id} failed: see {trial.path}/error.txt  ({self._counts(trials)})")


class StatusLog(tune.Callback):
    """The trials' status table, appended to ``path`` every :data:`STATUS_EVERY_S` seconds and
    when the sweep ends: a status line (``Trial status: 1 RUNNING | 2 PENDING``, the time, the
    elapsed time) and :func:`format_table` of the trials, best first. What Ray Tune would print
    on the terminal, written to a file without touching this process's stdout."""

    def __init__(self, path: str, sweep: Sweep):
        self.path, self.sweep = path, sweep
        self.start = self.last = 0.0

    def setup(self, **info):
        self.start, self.last = time.time(), 0.0  # a restored sweep (this object unpickled) starts anew

    def _write(self, trials) -> None:
        now = time.time()
        counts = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        line = " | ".join(f"{n} {status}" for status, n in counts.items())
        table = format_table([trial_row(t, self.sweep, live=True) for t in trials], self.sweep)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"Trial status: {line}  ({time.strftime('%Y-%m-%d %H:%M:%S')}, "
                    f"{now - self.start:.0f} s)\n{table}\n\n")
        self.last = now

    def on_step_end(self, iteration, trials, **info):
        if time.time() - self.last >= STATUS_EVERY_S:
            self._write(trials)

    def on_experiment_end(self, trials, **info):
        self._write(trials)


def _tune_log(exp: str, name: str) -> str:
    """Where Tune's own status tables go: the experiment directory, or beside it in the temp
    directory when the experiment lives in cloud storage."""
    return os.path.join(exp, TUNE_LOG) if not is_uri(exp) else os.path.join(tempfile.gettempdir(), f"{name}-{TUNE_LOG}")


def run_sweep(sweep: Sweep, address: str = "", resume_dir: Optional[str] = None,
              echo: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
              callbacks: Optional[list] = None, show_tune: bool = False) -> dict:
    """Run (or with ``resume_dir`` continue) the sweep; -> a summary.

    The summary holds ``experiment`` (its directory), ``rows`` (:class:`TrialRow` s), ``table``,
    ``best`` (the best row or None), ``best_config`` (the path of best_config.yaml, written
    when every trial has finished), ``interrupted`` (Ctrl-C: resume with ``resume_dir``) and
    ``signal`` (SIGINT when interrupted). No signal handler is installed: Ray Tune stops the
    trials on SIGINT; ``cot-ray tune`` turns SIGTERM and SIGHUP into it
    (:func:`cot_ray.stopping.stop_signals_as_ctrl_c`) and reports the signal that came.
    ``callbacks`` are Tune callbacks (tests use them). Progress is cot-ray's own lines, and the
    trials' status table goes to ``tune.log`` in the experiment directory (:class:`StatusLog`);
    ``show_tune`` lets Ray Tune print its own tables on stdout instead.
    """
    load_dataset(sweep.base.data)  # unusable data fails here, before any trial starts
    if resume_dir is not None:
        exp = resume_dir.rstrip("/") if is_uri(resume_dir) else os.path.abspath(resume_dir)
        _check_resume(sweep, exp)
    else:
        storage_name = _experiment_dir(sweep, address)
        exp = _join(*storage_name)
    log_path = _tune_log(exp, os.path.basename(exp.rstrip("/")))
    started = False
    try:
        started = connect(address, DRIVER_BUNDLE["CPU"] + _max_workers(sweep) * placement.requested_cpus(
            sweep.base.runtime))
        n_workers = len(runtime.learner_names(sweep.base))
        bundle, shared = placement.worker_bundle(sweep.base.runtime, n_workers)
        if shared:
            echo(f"[cot-ray] {shared}")
        _check_cluster(sweep, bundle, echo)
        trainable = tune.with_resources(make_trainable(sweep, exp),
                                        lambda config: trial_resources(sweep.trial_config(config), bundle))
        if resume_dir is not None:
            echo(f"[cot-ray] resuming sweep {exp}")
            tuner = tune.Tuner.restore(exp, trainable=trainable, resume_unfinished=True, resume_errored=True)
        else:
            _write_yaml(sweep.to_dict(), _join(exp, SWEEP_FILE))
            echo(f"[cot-ray] sweep {exp}: {sweep.tune.num_samples} sample(s), scheduler "
                 f"{sweep.tune.scheduler.name}, metric {sweep.tune.metric} ({sweep.tune.mode}), workers "
                 f"{placement.format_resources(bundle)} each")
            t = sweep.tune
            tuner = tune.Tuner(
                trainable, param_space={p.key: tune_domain(p) for p in sweep.params},
                tune_config=tune.TuneConfig(
                    metric=t.metric, mode=t.mode, num_samples=t.num_samples, scheduler=_scheduler(sweep),
                    search_alg=tune.search.BasicVariantGenerator(random_state=t.seed),
                    max_concurrent_trials=t.max_concurrent or None,
                    trial_dirname_creator=lambda trial: trial_dirname(trial.trial_id),
                    reuse_actors=True),  # a trial driver process serves the next trial (or session)
                run_config=tune.RunConfig(
                    name=storage_name[1], storage_path=storage_name[0], verbose=1 if show_tune else 0,
                    callbacks=[SweepProgress(sweep.tune.metric, echo)] + list(callbacks or [])
                    + ([] if show_tune else [StatusLog(log_path, sweep)]),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=t.keep_checkpoints),
                    failure_config=tune.FailureConfig(max_failures=t.max_failures)))
        if not show_tune:
            echo(f"[cot-ray] the trials' status table goes to {log_path} every {STATUS_EVERY_S:.0f} s "
                 "(--show-tune shows Ray Tune's own here)")
        tuner.fit()
    finally:
        if started:
            ray.shutdown()
    rows = trial_rows(exp, sweep)
    interrupted = any(r.status == "unfinished" for r in rows)
    best = best_row(rows, sweep.tune.mode)
    best_path = None
    if best is not None and not interrupted:
        best_path = _join(exp, BEST_CONFIG)
        _write_yaml(best_config(sweep, best).to_dict(), best_path)
    return {"experiment": exp, "rows": rows, "table": format_table(rows, sweep), "best": best,
            "best_config": best_path, "interrupted": interrupted,
            "signal": signal.SIGINT if interrupted else None}
