"""Hyperparameter sweeps with Ray Tune: ``cot-ray tune SWEEP.yaml``.

Each trial is one training run (the Trainer of :mod:`cot_ray.loop`) with its own generator and
mediator actors. The trial's resource request is a placement group: bundle 0 (1 CPU) for the
trial driver, which runs the schedule and the evaluations, then one bundle per worker
(:func:`cot_ray.runtime.learner_names`: ``runtime.cpus_per_worker`` CPUs and, where the
cluster has GPUs, one GPU each, or ``runtime.gpus_per_worker``); the workers are placed into
bundles 1..n of the trial's group, so Tune packs whole trials onto the cluster. After every
evaluation the trial reports ``iteration``, ``elapsed_s`` (training seconds) and the eval
metrics as ``eval/<name>`` (``eval/balanced_nll``, ``eval/nll_oracle``, ``eval/nll_test``,
``eval/jsd``, ``eval/jsd_mediator``; text data: ``eval/nll_test``, ``eval/bleu2`` ...), with
the run's checkpoint as a Tune checkpoint.

Sweep file
----------
A YAML mapping with three sections::

    base:                 # any `cot-ray train --config` content: the config every trial starts from
      mediator: {emb_dim: 16, hidden_dim: 16}
    search:               # dotted training config key -> spec
      cot.g_steps: {randint: [1, 4]}          # an integer in 1..4, both ends included
      cot.m_steps: {choice: [1, 2, 3]}        # one of the values
      mediator.dropout: {uniform: [0.0, 0.7]} # a float in [lo, hi)
      m_optim.lr: {loguniform: [1.0e-3, 1.0e-2]}
      run.seed: {grid_search: [0, 1]}         # every value (multiplies the trial count)
      cot.batch_size: 32                      # a plain value: set for every trial
    tune:
      metric: eval/balanced_nll   # an eval metric the runs report (default eval/balanced_nll; text: eval/nll_test)
      mode: min                   # min | max
      num_samples: 4              # samples of the search space (times every grid_search combination)
      scheduler: asha             # asha (default) | pbt | fifo, or a mapping {name: asha, <options>}
      max_concurrent: 0           # trials at once; 0: as many as the cluster holds
      per_trial: {iters: 200}     # each trial's budget: iters and/or minutes (default: base run.iters/minutes)
      storage_path: runs/tune     # experiments go to STORAGE_PATH/NAME (a local path or a URI such as s3://...)
      name: ""                    # "" : <sweep file name>-<date>-<time>
      seed: 0                     # seed of the search-space sampling
      keep_checkpoints: 0         # Tune checkpoints kept per trial; 0: 2, or 4 with pbt
      max_failures: 0             # times a failed trial is restarted from its last checkpoint

Both bounds of ``uniform``/``loguniform``/``randint`` must be valid values of the key
(``loguniform`` needs lo > 0; lo < hi); ``uniform``/``loguniform`` are for float keys,
``randint`` for integer keys. Every value a spec can take is checked by building the training
config with it and validating it, so an impossible range is an error before anything starts.
Keys the sweep itself manages cannot be searched: ``run.logdir``, ``run.name``, ``run.iters``,
``run.minutes`` (use ``tune.per_trial``), ``runtime.mode`` (trials always use actors) and
``runtime.address``.

Schedulers (options, all optional)
    ``asha``: ``time_attr`` (``iteration``: training iterations, the default, or
    ``training_iteration``: evaluations), ``grace_period`` (default: ``eval.every`` iterations,
    or 1 evaluation), ``reduction_factor`` (2), ``max_t`` (default: the per-trial budget in
    ``time_attr`` units; required with a minutes-only budget).
    ``pbt``: ``time_attr``, ``perturbation_interval`` (default ``eval.every`` iterations, or 1
    evaluation), ``quantile_fraction`` (0.25), ``resample_probability`` (0.25), ``synch``
    (false). PBT perturbs the search keys among :data:`PERTURBABLE` (update ratios, dropout,
    optimizer settings) by x0.8 / x1.2 or resampling, clipped to the spec's range, and a trial
    that exploits another continues from that trial's checkpoint with the perturbed values:
    dropout and ratios take effect at once, and the restored optimizers get the new learning
    rates and betas. Other search keys are sampled once per trial and travel with the
    checkpoints they belong to.
    ``fifo``: no early stopping.

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
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import typing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

import ray
from ray import tune

from . import loop, runtime
from .checkpoint import CHECKPOINT, CONFIG, load_checkpoint, save_checkpoint
from .config import (TEXT_SOURCES, Config, ConfigError, _check, _overlay, _source_of, default_config, from_dict,
                     parse_overrides, read_yaml, save_config, write_yaml)
from .data import VOCAB_FILE, load_dataset
from .metrics import metric_keys

SWEEP_SECTIONS = ("base", "search", "tune")
SPEC_KINDS = ("uniform", "loguniform", "randint", "choice", "grid_search")
SCHEDULERS = ("asha", "pbt", "fifo")
SCHEDULER_OPTIONS = {
    "asha": ("time_attr", "grace_period", "reduction_factor", "max_t"),
    "pbt": ("time_attr", "perturbation_interval", "quantile_fraction", "resample_probability", "synch"),
    "fifo": (),
}
TIME_ATTRS = ("iteration", "training_iteration")
# Keys the sweep manages itself (trial directories, budgets, where trials run).
SWEEP_MANAGED = ("run.logdir", "run.name", "run.iters", "run.minutes", "runtime.mode", "runtime.address")
# Keys PBT may change in the middle of a run: a restored checkpoint stays valid under new values.
PERTURBABLE = ("cot.g_steps", "cot.m_steps", "cot.sync_every", "generator.dropout", "mediator.dropout",
               "g_optim.lr", "g_optim.beta1", "g_optim.beta2", "g_optim.grad_clip",
               "m_optim.lr", "m_optim.beta1", "m_optim.beta2", "m_optim.grad_clip")
SWEEP_FILE = "sweep.yaml"
BEST_CONFIG = "best_config.yaml"
TRIAL_LOG = "train.log"  # in every trial directory: the progress lines of its runs
TRIAL_INFO = "trial.json"  # in every Tune checkpoint: whose it is
TRIAL_SESSIONS = "sessions.jsonl"  # in every trial directory: one line per session (fresh or restored)
DRIVER_BUNDLE = {"CPU": 1.0}  # bundle 0 of a trial: the trial driver (schedule and evaluation)


@dataclass
class ParamSpec:
    """One ``search`` entry: a training config key and the values trials give it."""

    key: str  # dotted training config key, e.g. "mediator.dropout"
    kind: str  # "value" or one of SPEC_KINDS
    args: list  # [value] | [lo, hi] | the values of choice / grid_search
    int_key: bool = False  # the key holds integers

    @property
    def varies(self) -> bool:
        """Whether trials can differ in this key."""
        return self.kind != "value" and not (self.kind in ("choice", "grid_search") and len(self.args) == 1)

    def candidates(self) -> list:
        """The values checked before the sweep starts: the bounds of a range, or every value."""
        return list(self.args)

    def domain(self) -> Any:
        """The Tune search-space entry."""
        lo_hi = self.args
        if self.kind == "uniform":
            return tune.uniform(lo_hi[0], lo_hi[1])
        if self.kind == "loguniform":
            return tune.loguniform(lo_hi[0], lo_hi[1])
        if self.kind == "randint":
            return tune.randint(lo_hi[0], lo_hi[1] + 1)  # Tune's upper bound is exclusive
        if self.kind == "choice":
            return tune.choice(list(self.args))
        if self.kind == "grid_search":
            return tune.grid_search(list(self.args))
        return self.args[0]

    def mutation(self) -> Any:
        """What PBT resamples this key from (a Tune domain, or the list of values)."""
        if self.kind in ("choice", "grid_search"):
            return list(self.args)
        return self.domain()

    def clip(self, value: Any) -> Any:
        """A perturbed value brought back into the spec's range (and to an int for int keys)."""
        if self.kind in ("uniform", "loguniform", "randint"):
            value = min(max(value, self.args[0]), self.args[1])
        if self.int_key:
            value = int(round(value))
        return value

    def to_yaml(self) -> Any:
        return self.args[0] if self.kind == "value" else {self.kind: list(self.args)}


@dataclass
class SchedulerSpec:
    """``tune.scheduler``: which trial scheduler, and its options (0 means: the default)."""

    name: str = "asha"  # asha | pbt | fifo
    time_attr: str = "iteration"  # iteration (training iterations) | training_iteration (evaluations)
    grace_period: int = 0  # asha: minimum time_attr before a trial may be stopped; 0: one evaluation
    reduction_factor: float = 2.0  # asha: keep 1/reduction_factor of the trials at each rung
    max_t: int = 0  # asha: the time_attr of a full trial; 0: the per-trial budget
    perturbation_interval: int = 0  # pbt: time_attr between perturbations; 0: one evaluation
    quantile_fraction: float = 0.25  # pbt: the bottom fraction exploits the top fraction
    resample_probability: float = 0.25  # pbt: resample a value instead of scaling it by 0.8 / 1.2
    synch: bool = False  # pbt: perturb all trials at once (waits for the slowest)


@dataclass
class BudgetSpec:
    """``tune.per_trial``: each trial's stopping rule (whichever comes first)."""

    iters: int = 0  # training iterations; 0: no limit
    minutes: float = 0.0  # minutes of training; 0: no limit


@dataclass
class TuneSpec:
    """The ``tune`` section of a sweep file."""

    metric: str = ""  # "": eval/balanced_nll (oracle) or eval/nll_test (text)
    mode: str = "min"  # min | max
    num_samples: int = 1  # samples of the search space (times every grid_search combination)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    max_concurrent: int = 0  # trials at once; 0: as many as the cluster holds
    per_trial: Optional[BudgetSpec] = None  # None: the base config's run.iters / run.minutes
    storage_path: str = "runs/tune"  # experiments go to STORAGE_PATH/NAME (local path or URI)
    name: str = ""  # "": <sweep file name>-<YYYYmmdd-HHMMSS>
    seed: int = 0  # seed of the search-space sampling
    keep_checkpoints: int = 0  # Tune checkpoints kept per trial; 0: 2, or 4 with pbt (donors' must outlive exploits)
    max_failures: int = 0  # times Tune restarts a failed trial from its last checkpoint


@dataclass
class Sweep:
    """A validated sweep: the base training config, the search space and the Tune settings."""

    path: str  # the sweep file
    base: Config  # every trial's starting config, the per-trial budget applied
    params: list[ParamSpec]
    tune: TuneSpec

    @property
    def varying(self) -> list[str]:
        """The keys trials can differ in (the table's columns)."""
        return [p.key for p in self.params if p.varies]

    def param_space(self) -> dict:
        return {p.key: p.domain() for p in self.params}

    def trial_config(self, values: dict) -> Config:
        """The training config of a trial with these sampled values (dotted keys), validated."""
        cfg = copy.deepcopy(self.base)
        known = {p.key for p in self.params}
        picked = {k: _plain(v) for k, v in values.items() if k in known}
        return from_dict(_nest(picked), cfg).validate()

    def to_dict(self) -> dict:
        """The resolved sweep, as saved in the experiment's sweep.yaml."""
        return {"base": self.base.to_dict(), "search": {p.key: p.to_yaml() for p in self.params},
                "tune": dataclasses.asdict(self.tune)}


# ----------------------------------------------------------------------------- reading a sweep file


def _plain(v: Any) -> Any:
    """numpy scalars (Tune samples them) as Python values, so the config's type checks hold."""
    return v.item() if hasattr(v, "item") and not isinstance(v, (str, bytes)) else v


def _nest(flat: dict) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _leaf_type(key: str) -> type:
    """The field type of a dotted training config key; ConfigError naming the valid keys."""
    obj: Any = Config()
    parts = key.split(".")
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(obj)]
        where = ".".join(parts[:i])
        if part not in names:
            raise ConfigError(f"unknown config key '{key}' in search (valid keys"
                              f"{' of ' + repr(where) if where else ''}: {', '.join(names)})")
        tp = typing.get_type_hints(type(obj))[part]
        if dataclasses.is_dataclass(tp):
            if i == len(parts) - 1:
                raise ConfigError(f"search key '{key}' names a section: give one of its keys, e.g. "
                                  f"'{key}.{dataclasses.fields(tp)[0].name}'")
            obj = getattr(obj, part)
        elif i < len(parts) - 1:
            raise ConfigError(f"unknown config key '{key}' in search ('{'.'.join(parts[:i + 1])}' is a value, "
                              "not a section)")
        else:
            return tp
    raise ConfigError(f"unknown config key '{key}' in search")  # pragma: no cover - empty key


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _parse_param(key: str, spec: Any) -> ParamSpec:
    """One ``search`` entry -> ParamSpec, checking the spec's shape (values are checked later)."""
    if not isinstance(key, str) or not key:
        raise ConfigError(f"search key {key!r} must be a dotted config key such as 'mediator.dropout'")
    tp = _leaf_type(key)
    if key in SWEEP_MANAGED:
        hint = "use tune.per_trial" if key in ("run.iters", "run.minutes") else "the sweep sets it for every trial"
        raise ConfigError(f"search key '{key}' cannot be searched: {hint}")
    int_key = tp is int
    shown = json.dumps(spec, default=str)
    if isinstance(spec, list):
        raise ConfigError(f"search key '{key}' has a list {shown}: write {{choice: {shown}}} or "
                          f"{{grid_search: {shown}}}")
    if not isinstance(spec, dict):
        return ParamSpec(key, "value", [spec], int_key)
    if len(spec) != 1 or next(iter(spec)) not in SPEC_KINDS:
        raise ConfigError(f"search key '{key}' has spec {shown}: give a plain value or one of "
                          "{uniform: [lo, hi]}, {loguniform: [lo, hi]}, {randint: [lo, hi]}, {choice: [...]}, "
                          "{grid_search: [...]}")
    kind, args = next(iter(spec.items()))
    if kind in ("choice", "grid_search"):
        if not isinstance(args, list) or not args:
            raise ConfigError(f"search key '{key}' {kind} needs a non-empty list of values, got {shown}")
        return ParamSpec(key, kind, list(args), int_key)
    if not (isinstance(args, list) and len(args) == 2 and all(_is_number(a) for a in args)):
        raise ConfigError(f"search key '{key}' {kind} needs [lo, hi], two numbers, got {shown}")
    lo, hi = args
    if kind == "randint" and not int_key:
        raise ConfigError(f"search key '{key}' holds {tp.__name__} values: use uniform or loguniform, not randint")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"search key '{key}' randint needs integer bounds, got {shown}")
    if kind in ("uniform", "loguniform") and tp is not float:
        alt = "randint or choice" if int_key else "choice"
        raise ConfigError(f"search key '{key}' holds {tp.__name__} values: use {alt}, not {kind}")
    if not lo < hi:
        raise ConfigError(f"search key '{key}' {kind} needs lo < hi, got {shown}")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"search key '{key}' loguniform needs lo > 0 (a log scale), got {shown}")
    return ParamSpec(key, kind, [float(lo), float(hi)] if tp is float else [lo, hi], int_key)


def reported_metrics(cfg: Config) -> list[str]:
    """The metric names a trial of ``cfg`` reports to Tune (besides iteration and elapsed_s)."""
    keys = metric_keys(cfg.data.source in TEXT_SOURCES, cfg.cot.algo == "cot", cfg.eval.num_train > 0)
    return [f"eval/{k}" for k in keys]


def _absolute_paths(cfg: Config) -> None:
    """Trials run in their own directories (and on other nodes): data paths must be absolute."""
    for key in ("cache_dir", "train_path", "test_path", "vocab_path"):
        value = getattr(cfg.data, key)
        if value and not _is_uri(value):
            setattr(cfg.data, key, os.path.abspath(os.path.expanduser(value)))


def _parse_tune(data: Any, base: Config) -> TuneSpec:
    """The ``tune`` section -> TuneSpec (keys and types checked; ranges in :func:`_check_tune`)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"section 'tune' must be a mapping of settings, got {type(data).__name__}")
    data = dict(data)
    spec = TuneSpec()
    sched = data.pop("scheduler", "asha")
    if isinstance(sched, str):
        sched = {"name": sched}
    if not isinstance(sched, dict):
        raise ConfigError("config key 'tune.scheduler' must be a name (asha, pbt, fifo) or a mapping "
                          f"{{name: asha, <options>}}, got {type(sched).__name__}")
    sched = dict(sched)
    name = sched.get("name", "asha")
    if name not in SCHEDULERS:
        raise ConfigError(f"config key 'tune.scheduler' must be one of {', '.join(SCHEDULERS)}, got {name!r}")
    _overlay(spec.scheduler, sched, "tune.scheduler.")
    for opt in sched:
        if opt != "name" and opt not in SCHEDULER_OPTIONS[name]:
            owners = [s for s, opts in SCHEDULER_OPTIONS.items() if opt in opts]
            raise ConfigError(f"config key 'tune.scheduler.{opt}' is an option of {' and '.join(owners)}, not of "
                              f"{name}: drop it" + (f" (valid for {name}: {', '.join(SCHEDULER_OPTIONS[name])})"
                                                    if SCHEDULER_OPTIONS[name] else ""))
    budget = data.pop("per_trial", None)
    _overlay(spec, data, "tune.")
    if budget is not None:
        if not isinstance(budget, dict):
            raise ConfigError("config key 'tune.per_trial' must be a mapping such as {iters: 200} or {minutes: 1.5}")
        b = spec.per_trial = BudgetSpec()
        _overlay(b, budget, "tune.per_trial.")
        _check(b.iters >= 0, "tune.per_trial.iters", f"must be >= 0, got {b.iters}")
        _check(b.minutes >= 0, "tune.per_trial.minutes", f"must be >= 0, got {b.minutes}")
        _check(b.iters > 0 or b.minutes > 0, "tune.per_trial",
               "needs iters > 0 or minutes > 0 (trials must be able to stop)")
    if not spec.metric:
        spec.metric = "eval/nll_test" if base.data.source in TEXT_SOURCES else "eval/balanced_nll"
    return spec


def _check_tune(t: TuneSpec, sweep_base: Config, params: list[ParamSpec], checked: list[Config]) -> None:
    """Ranges and cross-checks of the ``tune`` section against what trials will do."""
    _check(t.mode in ("min", "max"), "tune.mode", f"must be 'min' or 'max', got {t.mode!r}")
    _check(t.num_samples >= 1, "tune.num_samples", f"must be >= 1, got {t.num_samples}")
    _check(t.max_concurrent >= 0, "tune.max_concurrent", f"must be >= 0 (0: no limit), got {t.max_concurrent}")
    _check(t.keep_checkpoints >= 0, "tune.keep_checkpoints", f"must be >= 0 (0: automatic), got {t.keep_checkpoints}")
    t.keep_checkpoints = t.keep_checkpoints or (4 if t.scheduler.name == "pbt" else 2)
    _check(t.max_failures >= 0, "tune.max_failures", f"must be >= 0, got {t.max_failures}")
    _check(bool(t.storage_path), "tune.storage_path", "must name a directory (or a URI such as s3://bucket/path)")
    _check("/" not in t.name and t.name not in (".", ".."), "tune.name",
           f"must be a plain directory name, got {t.name!r}")
    allowed = [m for m in reported_metrics(checked[0]) if all(m in reported_metrics(c) for c in checked)]
    _check(t.metric in allowed, "tune.metric",
           f"must be a metric every trial reports ({', '.join(allowed)}), got {t.metric!r}")
    s = t.scheduler
    if s.name == "fifo":
        return
    _check(s.time_attr in TIME_ATTRS, "tune.scheduler.time_attr",
           f"must be one of {', '.join(TIME_ATTRS)}, got {s.time_attr!r}")
    every = sweep_base.eval.every
    _check(every >= 1, "eval.every",
           f"must be >= 1 for the {s.name} scheduler, which acts on intermediate evaluations: set base eval.every")
    unit = every if s.time_attr == "iteration" else 1  # time_attr of one evaluation
    if s.name == "asha":
        iters = sweep_base.run.iters
        full = iters if s.time_attr == "iteration" else (math.ceil(iters / every) if iters else 0)
        s.grace_period = s.grace_period or unit
        s.max_t = s.max_t or full
        _check(s.max_t >= 1, "tune.scheduler.max_t",
               "is needed when trials stop by minutes only: give the time_attr of a full trial")
        _check(s.grace_period >= 1, "tune.scheduler.grace_period", f"must be >= 1, got {s.grace_period}")
        _check(s.grace_period <= s.max_t, "tune.scheduler.grace_period",
               f"must be <= max_t ({s.max_t}), got {s.grace_period}")
        _check(s.reduction_factor > 1, "tune.scheduler.reduction_factor", f"must be > 1, got {s.reduction_factor}")
        return
    s.perturbation_interval = s.perturbation_interval or unit
    _check(s.perturbation_interval >= 1, "tune.scheduler.perturbation_interval",
           f"must be >= 1, got {s.perturbation_interval}")
    _check(s.perturbation_interval % unit == 0, "tune.scheduler.perturbation_interval",
           f"must be a multiple of eval.every ({every}): trials report (and checkpoint) at evaluations")
    _check(0 < s.quantile_fraction <= 0.5, "tune.scheduler.quantile_fraction",
           f"must be in (0, 0.5], got {s.quantile_fraction}")
    _check(0 <= s.resample_probability <= 1, "tune.scheduler.resample_probability",
           f"must be in [0, 1], got {s.resample_probability}")
    mutable = [p for p in params if p.varies and p.key in PERTURBABLE]
    _check(bool(mutable), "tune.scheduler",
           f"pbt needs a search key it can perturb (a range or choice over one of: {', '.join(PERTURBABLE)})")
    if sweep_base.runtime.schedule == "async":
        _check(all(p.key != "cot.m_steps" for p in mutable), "tune.scheduler",
               "pbt cannot perturb cot.m_steps with runtime.schedule 'async' (the pipeline's queued batches "
               "are sized by it): search cot.m_steps with asha, or use the sync schedule")


def load_sweep(path: str, overrides: typing.Sequence[str] = (), num_samples: Optional[int] = None,
               max_concurrent: Optional[int] = None, storage: Optional[str] = None,
               name: Optional[str] = None) -> Sweep:
    """Read and validate a sweep file; ``overrides`` (``key=value``) change the base training config.

    Every error is a one-line :class:`ConfigError` that starts with the file's path.
    """
    try:
        raw = read_yaml(path)
        unknown = [k for k in raw if k not in SWEEP_SECTIONS]
        if unknown:
            raise ConfigError(f"unknown section '{unknown[0]}' (valid sections: {', '.join(SWEEP_SECTIONS)})")
        base_raw = raw.get("base") or {}
        extra = parse_overrides(list(overrides)) if overrides else {}
        base = default_config(_source_of(base_raw, extra))
        for layer in (base_raw, extra):
            base = from_dict(layer, base)
        base.validate()
        t = _parse_tune(raw.get("tune"), base)
        for value, attr in ((num_samples, "num_samples"), (max_concurrent, "max_concurrent"),
                            (storage, "storage_path"), (name, "name")):
            if value is not None:
                setattr(t, attr, value)
        if t.per_trial is not None:
            base.run.iters, base.run.minutes = t.per_trial.iters, t.per_trial.minutes
        _check(base.runtime.mode == "actors", "runtime.mode",
               "must be 'actors' in a sweep (each trial's workers are actors in its placement group): "
               "drop runtime.mode 'local' from base")
        _absolute_paths(base)
        base.validate()
        search = raw.get("search") or {}
        if not isinstance(search, dict):
            raise ConfigError(f"section 'search' must map config keys to specs, got {type(search).__name__}")
        params = [_parse_param(k, v) for k, v in search.items()]
        checked = [base]
        for p in params:
            for value in p.candidates():
                try:
                    checked.append(from_dict(_nest({p.key: value}), copy.deepcopy(base)).validate())
                except ConfigError as e:
                    raise ConfigError(f"search key '{p.key}' {json.dumps(p.to_yaml(), default=str)}: {e}") from None
        _check_tune(t, base, params, checked)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return Sweep(path, base, params, t)


# ----------------------------------------------------------------------------- inside a trial


def set_optimizer_hyperparameters(state: dict, cfg: Config) -> None:
    """Give the optimizers of a checkpoint ``cfg``'s learning rates and betas (PBT's new values;
    a checkpoint's optimizer state would otherwise bring back the old ones)."""
    for learner, ocfg in (("g", cfg.g_optim), ("m", cfg.m_optim)):
        sub = state.get(learner)
        if not sub or "optim" not in sub:
            continue
        for group in sub["optim"]["param_groups"]:
            group["lr"] = ocfg.lr
            group["betas"] = (ocfg.beta1, ocfg.beta2)


def _session_dir(trial_dir: str) -> str:
    """The first unused run directory of the trial: run, run-2, run-3, ..."""
    n = 1
    while os.path.exists(os.path.join(trial_dir, "run" if n == 1 else f"run-{n}")):
        n += 1
    return os.path.join(trial_dir, "run" if n == 1 else f"run-{n}")


def _restore_session(ckpt_dir: str, run_dir: str, cfg: Config) -> dict:
    """Make ``run_dir`` a copy of a Tune checkpoint, continued under ``cfg``; -> what it holds:
    ``trial_id`` (whose checkpoint it is), ``iteration``, ``elapsed``, ``last_eval``."""
    os.makedirs(run_dir)
    for name in (loop.METRICS_FILE, VOCAB_FILE):
        if os.path.exists(os.path.join(ckpt_dir, name)):
            shutil.copy2(os.path.join(ckpt_dir, name), os.path.join(run_dir, name))
    if os.path.exists(os.path.join(run_dir, VOCAB_FILE)):
        cfg.data.vocab_path = os.path.abspath(os.path.join(run_dir, VOCAB_FILE))
    state = load_checkpoint(os.path.join(ckpt_dir, CHECKPOINT))
    set_optimizer_hyperparameters(state, cfg)
    save_checkpoint(os.path.join(run_dir, CHECKPOINT), state)
    save_config(cfg, os.path.join(run_dir, CONFIG))
    info = {}
    if os.path.exists(os.path.join(ckpt_dir, TRIAL_INFO)):
        with open(os.path.join(ckpt_dir, TRIAL_INFO), encoding="utf-8") as f:
            info = json.load(f)
    return {"trial_id": info.get("trial_id"), "iteration": int(state["iteration"]),
            "elapsed": float(state["elapsed"]), "last_eval": state.get("last_eval") or {}}


def read_sessions(trial_dir: str) -> list[dict]:
    """The sessions of a trial, oldest first: ``run`` (its run directory's name),
    ``restored_from`` (the trial whose checkpoint it continued; None: a fresh start) and
    ``iteration`` (where it started)."""
    path = os.path.join(trial_dir, TRIAL_SESSIONS)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _bundle_nodes(pg) -> str:
    """The nodes (first 8 hex digits of their ids) of the trial's bundles, comma-separated in
    bundle order: the trial driver's, then each worker's."""
    nodes = ray.util.placement_group_table(pg).get("bundles_to_node_id") or {}
    return ",".join(str(nodes[i])[:8] for i in sorted(nodes))


class _Reporter:
    """The Trainer's ``on_eval`` hook in a trial: the metrics and the checkpoint to Tune."""

    def __init__(self, cfg: Config, trial_dir: str, trial_id: str, nodes: str):
        self.cfg, self.trial_dir, self.trial_id, self.nodes = cfg, trial_dir, trial_id, nodes
        sessions = read_sessions(trial_dir)
        self.restores = sum(s["restored_from"] is not None for s in sessions)
        self.exploits = sum(s["restored_from"] not in (None, trial_id) for s in sessions)

    def result(self, iteration: int, metrics: dict, elapsed: float) -> dict:
        run = self.cfg.run
        done = (run.iters > 0 and iteration >= run.iters) or (run.minutes > 0 and elapsed >= run.minutes * 60)
        out = {"iteration": iteration, "elapsed_s": elapsed, "restores": self.restores,
               "exploits": self.exploits, "budget_done": bool(done), "nodes": self.nodes}
        out.update({f"eval/{k}": v for k, v in metrics.items() if v is not None})
        return out

    def __call__(self, iteration: int, metrics: dict, run_dir: str, elapsed: float) -> None:
        with tempfile.TemporaryDirectory(prefix=".report-", dir=self.trial_dir) as tmp:
            for name in (CHECKPOINT, CONFIG, loop.METRICS_FILE, VOCAB_FILE):
                src = os.path.join(run_dir, name)
                if os.path.exists(src):
                    try:
                        os.link(src, os.path.join(tmp, name))  # the Trainer replaces files, never edits them
                    except OSError:
                        shutil.copy2(src, os.path.join(tmp, name))
            with open(os.path.join(tmp, TRIAL_INFO), "w", encoding="utf-8") as f:
                json.dump({"trial_id": self.trial_id}, f)
            tune.report(self.result(iteration, metrics, elapsed), checkpoint=tune.Checkpoint.from_directory(tmp))


def run_trial(sweep: Sweep, values: dict, exp: str) -> None:
    """The body of one trial: build its config, start or restore its run, train, report.

    The trial's run directories go into its directory in the experiment (``exp``) when that is
    a file system path (local, or NFS on a cluster); with cloud storage they stay in the
    trial's working directory on its node, and only Tune's checkpoints are uploaded.
    """
    cfg = sweep.trial_config(values)
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    trial_dir = ctx.get_trial_dir() if _is_uri(exp) else os.path.join(exp, _TRIAL_DIR.format(trial_id))
    os.makedirs(trial_dir, exist_ok=True)
    if cfg.run.threads == 0:
        cfg.run.threads = int(DRIVER_BUNDLE["CPU"])  # the trial driver holds one CPU
    run_dir = _session_dir(trial_dir)
    cfg.run.logdir, cfg.run.name = trial_dir, os.path.basename(run_dir)
    checkpoint = tune.get_checkpoint()
    saved: Optional[dict] = None
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            saved = _restore_session(ckpt_dir, run_dir, cfg)
    with open(os.path.join(trial_dir, TRIAL_SESSIONS), "a", encoding="utf-8") as f:
        f.write(json.dumps({"run": os.path.basename(run_dir),
                            "restored_from": saved and (saved["trial_id"] or trial_id),
                            "iteration": saved["iteration"] if saved else 0}) + "\n")
    pg = ray.util.get_current_placement_group()
    reporter = _Reporter(cfg, trial_dir, trial_id, _bundle_nodes(pg) if pg is not None else "")
    if saved is not None and reporter.result(saved["iteration"], {}, saved["elapsed"])["budget_done"]:
        # Restored at the end of its budget (PBT exploited a final result): nothing to train,
        # but the trial's last result must describe the state it now holds.
        reporter(saved["iteration"], saved["last_eval"], run_dir, saved["elapsed"])
        return
    with open(os.path.join(trial_dir, TRIAL_LOG), "a", encoding="utf-8") as log:
        def echo(msg: str) -> None:
            log.write(msg + "\n")
            log.flush()

        runtime.train(cfg, resume_dir=run_dir if saved else None, echo=echo, on_eval=reporter, placement=pg,
                      bundle_offset=1 if pg is not None else 0)


_TRIAL_DIR = "trial_{}"


def _trial_dirname(trial) -> str:
    """Short trial directory names: trial_<id> (the sampled values are in params.json)."""
    return _TRIAL_DIR.format(trial.trial_id)


def make_trainable(sweep: Sweep, exp: str) -> Callable[[dict], None]:
    """The Tune function trainable of ``sweep``, whose experiment directory is ``exp``."""

    def cot_trial(config: dict) -> None:
        run_trial(sweep, config, exp)

    return cot_trial


def trial_resources(cfg: Config, worker_bundle: dict) -> "tune.PlacementGroupFactory":
    """A trial's placement group: its driver, then one bundle per worker of ``cfg``."""
    n = len(runtime.learner_names(cfg))
    return tune.PlacementGroupFactory([dict(DRIVER_BUNDLE)] + [dict(worker_bundle)] * n,
                                      strategy="SPREAD" if cfg.runtime.spread else "PACK")


# ----------------------------------------------------------------------------- the driver


def _autoscaling() -> bool:
    """Whether this is the head of a cluster started by the cluster launcher (``ray up``), whose
    autoscaler adds nodes for pending trials."""
    return Path("~/ray_bootstrap_config.yaml").expanduser().exists()


def connect(address: str, trial_cpus: float) -> bool:
    """Connect to Ray; -> whether a local Ray was started here (then shut it down at the end).

    An already connected driver is used as it is. A local Ray gets at least one trial's worth
    of logical CPUs, so a sweep runs (one trial at a time) even on a 2-core machine.
    """
    cfg = Config()
    cfg.runtime.address = address
    rcfg = cfg.validate().runtime  # a malformed address is a one-line ConfigError
    if ray.is_initialized():
        return False
    if address:
        return runtime.connect(rcfg)
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(math.ceil(trial_cpus))),
             include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             _system_config={"worker_niceness": 0})
    return True


def _max_workers(sweep: Sweep) -> int:
    """The most workers a trial of the sweep can have (cot.algo or nesting may be searched)."""
    configs = [sweep.base] + [from_dict(_nest({p.key: v}), copy.deepcopy(sweep.base))
                              for p in sweep.params for v in p.candidates()]
    return max(len(runtime.learner_names(c)) for c in configs)


def _check_cluster(sweep: Sweep, bundle: dict, echo: Callable[[str], None]) -> None:
    """One trial must fit on the cluster (else a one-line PlacementError), unless an autoscaler
    can add the nodes it needs."""
    n = _max_workers(sweep)
    bundles = [dict(DRIVER_BUNDLE)] + [dict(bundle)] * n
    problem = runtime.placement_problem(bundles, False, runtime.alive_nodes(), ray.cluster_resources())
    if problem is None:
        return
    msg = (f"a trial needs {runtime._fmt_res(DRIVER_BUNDLE)} for its driver plus {n} worker(s) with "
           f"{runtime._fmt_res(bundle)}: {problem}")
    if _autoscaling():
        echo(f"[cot-ray] {msg} (waiting for the autoscaler to add nodes)")
        return
    raise runtime.PlacementError(msg)


def _experiment_dir(sweep: Sweep) -> tuple[str, str]:
    """(storage path, experiment name) of a new sweep; refuses to reuse an existing experiment."""
    storage = sweep.tune.storage_path
    if not _is_uri(storage):
        storage = os.path.abspath(os.path.expanduser(storage))
    name = sweep.tune.name or f"{Path(sweep.path).stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    exp = _join(storage, name)
    if _exists(exp):
        raise ConfigError(f"experiment directory '{exp}' already exists: continue it with --resume {exp} "
                          "or pick another --name")
    return storage, name


def _is_uri(path: str) -> bool:
    return "://" in path


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if _is_uri(base) else os.path.join(base, name)


def _uri_fs(uri: str):
    import pyarrow.fs  # comes with ray[tune]

    return pyarrow.fs.FileSystem.from_uri(uri)


def _exists(path: str) -> bool:
    """Whether a local path or a storage URI (s3://, gs://, ...) exists."""
    if not _is_uri(path):
        return os.path.exists(path)
    import pyarrow.fs

    fs, p = _uri_fs(path)
    return fs.get_file_info(p).type != pyarrow.fs.FileType.NotFound


def _write_yaml(data: dict, path: str) -> None:
    """Write YAML to a local path (temp file, then rename) or a storage URI (one upload)."""
    if not _is_uri(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_yaml(data, path)
        return
    import yaml

    fs, p = _uri_fs(path)
    with fs.open_output_stream(p) as f:
        f.write(yaml.safe_dump(data, sort_keys=False).encode("utf-8"))


def _read_yaml(path: str) -> dict:
    if not _is_uri(path):
        return read_yaml(path)
    import yaml

    fs, p = _uri_fs(path)
    with fs.open_input_stream(p) as f:
        return yaml.safe_load(f.read().decode("utf-8")) or {}


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
            return {k: (mutable[k].clip(_plain(v)) if k in mutable else v) for k, v in config.items()}

        return tune.schedulers.PopulationBasedTraining(
            time_attr=s.time_attr, perturbation_interval=s.perturbation_interval,
            hyperparam_mutations={k: p.mutation() for k, p in mutable.items()},
            quantile_fraction=s.quantile_fraction, resample_probability=s.resample_probability,
            custom_explore_fn=explore, synch=s.synch)
    return tune.schedulers.FIFOScheduler()


@dataclass
class TrialRow:
    """One line of the final table."""

    trial_id: str
    values: dict  # the varying search keys -> this trial's (final) values
    metric: Optional[float]  # the last reported value of tune.metric
    iteration: int  # training iterations done
    restores: int  # restarts from a Tune checkpoint (PBT, resume, failures)
    status: str  # done (full budget) | stopped (by the scheduler) | error | unfinished
    config: dict  # the trial's whole Tune config


def trial_rows(exp: str, sweep: Sweep) -> list[TrialRow]:
    """The trials of the experiment in ``exp``, from Tune's saved experiment state."""
    analysis = tune.ExperimentAnalysis(exp)
    rows = []
    for t in sorted(analysis.trials, key=lambda t: t.trial_id):
        r = t.last_result or {}
        if t.status == "ERROR":
            status = "error"
        elif t.status == "TERMINATED":
            status = "done" if r.get("budget_done") else "stopped"
        else:
            status = "unfinished"
        metric = r.get(sweep.tune.metric)
        rows.append(TrialRow(t.trial_id, {k: _plain(t.config.get(k)) for k in sweep.varying},
                             None if metric is None else float(metric), int(r.get("iteration", 0)),
                             int(r.get("restores", 0)), status, dict(t.config)))
    return rows


def best_row(rows: list[TrialRow], mode: str) -> Optional[TrialRow]:
    """The trial with the best final metric among those that did not fail."""
    ok = [r for r in rows if r.status != "error" and r.metric is not None and math.isfinite(r.metric)]
    if not ok:
        return None
    return (min if mode == "min" else max)(ok, key=lambda r: r.metric)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def format_table(rows: list[TrialRow], sweep: Sweep) -> str:
    """The trials as an aligned text table, best metric first."""
    sign = 1 if sweep.tune.mode == "min" else -1
    ordered = sorted(rows, key=lambda r: (r.metric is None, sign * (r.metric or 0.0)))
    head = ["trial"] + sweep.varying + [sweep.tune.metric, "iters", "restores", "status"]
    body = [[r.trial_id] + [_fmt(r.values.get(k)) for k in sweep.varying]
            + [_fmt(r.metric), str(r.iteration), str(r.restores), r.status] for r in ordered]
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head] + body)


def best_config(sweep: Sweep, row: TrialRow) -> Config:
    """The best trial's full training config, as ``cot-ray train --config`` takes it: the base
    config (its own run.logdir / run.name, the per-trial budget) with the trial's values."""
    return sweep.trial_config(row.config)


def run_sweep(sweep: Sweep, address: str = "", resume_dir: Optional[str] = None,
              echo: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
              callbacks: Optional[list] = None, verbose: int = 1) -> dict:
    """Run (or with ``resume_dir`` continue) the sweep; -> a summary.

    The summary holds ``experiment`` (its directory), ``rows`` (:class:`TrialRow` s), ``table``,
    ``best`` (the best row or None), ``best_config`` (the path of best_config.yaml, written
    when every trial has finished) and ``interrupted`` (Ctrl-C: resume with ``resume_dir``).
    ``callbacks`` are Tune callbacks (tests use them).
    """
    load_dataset(sweep.base.data)  # unusable data fails here, before any trial starts
    if resume_dir is not None:
        exp = resume_dir.rstrip("/") if _is_uri(resume_dir) else os.path.abspath(resume_dir)
        _check_resume(sweep, exp)
    else:
        storage_name = _experiment_dir(sweep)
        exp = _join(*storage_name)
    started = False
    try:
        started = connect(address, DRIVER_BUNDLE["CPU"] + _max_workers(sweep) * sweep.base.runtime.cpus_per_worker)
        n_workers = len(runtime.learner_names(sweep.base))
        bundle = runtime.worker_bundle(sweep.base.runtime, n_workers)
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
                 f"{runtime._fmt_res(bundle)} each")
            t = sweep.tune
            tuner = tune.Tuner(
                trainable, param_space=sweep.param_space(),
                tune_config=tune.TuneConfig(
                    metric=t.metric, mode=t.mode, num_samples=t.num_samples, scheduler=_scheduler(sweep),
                    search_alg=tune.search.BasicVariantGenerator(random_state=t.seed),
                    max_concurrent_trials=t.max_concurrent or None, trial_dirname_creator=_trial_dirname,
                    reuse_actors=True),  # a trial driver process serves the next trial (or session)
                run_config=tune.RunConfig(
                    name=storage_name[1], storage_path=storage_name[0], verbose=verbose,
                    callbacks=callbacks,
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=t.keep_checkpoints),
                    failure_config=tune.FailureConfig(max_failures=t.max_failures)))
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
            "best_config": best_path, "interrupted": interrupted}
