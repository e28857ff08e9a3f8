"""Sweep files: their schema and validation, without Ray (``cot-ray tune SWEEP.yaml`` runs them).

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
      max_failures: 2             # times a failed trial (a lost node) is restarted from its last checkpoint

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

Everything here is plain Python: a sweep file is checked (every value a spec can take built
as a training config and validated) before Ray starts. :mod:`cot_ray.sweep.tune` runs a sweep.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from ..config import TEXT_SOURCES, Config, default_config, learned_mediator
from ..config_loading import (
    from_dict,
    nest_keys,
    overlay,
    parse_overrides,
    read_yaml,
    source_of,
)
from ..errors import ConfigError, check
from ..metric_names import metric_keys
from ..model_config import ARCH_CONFIGS, ModelConfig, arch_fields, arch_having
from ..run_policy import smoke_budget

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
    max_failures: int = 2  # times Tune restarts a failed trial (a lost node, an error) from its last checkpoint


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

    def trial_config(self, values: dict) -> Config:
        """The training config of a trial with these sampled values (dotted keys), validated."""
        cfg = copy.deepcopy(self.base)
        known = {p.key for p in self.params}
        picked = {k: plain(v) for k, v in values.items() if k in known}
        picked = {k: v for k, v in picked.items() if _applies(cfg, picked, k)}
        return from_dict(nest_keys(picked), cfg).validate()

    def to_dict(self) -> dict:
        """The resolved sweep, as saved in the experiment's sweep.yaml."""
        return {"base": self.base.to_dict(), "search": {p.key: p.to_yaml() for p in self.params},
                "tune": dataclasses.asdict(self.tune)}


# ----------------------------------------------------------------------------- reading a sweep file


def is_uri(path: str) -> bool:
    """Whether ``path`` is a storage URI (s3://, gs://, ...) rather than a file system path."""
    return "://" in path


def plain(v: Any) -> Any:
    """numpy scalars (Tune samples them) as Python values, so the config's type checks hold."""
    return v.item() if hasattr(v, "item") and not isinstance(v, (str, bytes)) else v


def _leaf_type(key: str) -> type:
    """The field type of a dotted training config key; ConfigError naming the valid keys."""
    obj: Any = Config()
    parts = key.split(".")
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(obj)]
        where = ".".join(parts[:i])
        if isinstance(obj, ModelConfig) and part not in names and arch_having(part):
            obj = ARCH_CONFIGS[arch_having(part)]()  # a key of another architecture: its type there
            names = [f.name for f in dataclasses.fields(obj)]
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


def _applies(base: Config, picked: dict, key: str) -> bool:
    """Whether the search key ``key`` applies to the trial ``picked`` of ``base``: False for a key
    of a model section whose architecture (``picked``'s SECTION.arch, else ``base``'s) lacks it
    (``mediator.num_heads`` in a trial with an LSTM mediator), a key that only another
    architecture has."""
    section, _, name = key.rpartition(".")
    model = getattr(base, section, None) if "." not in section else None
    if not isinstance(model, ModelConfig) or name == "arch":
        return True
    arch = picked.get(f"{section}.arch", model.arch)
    return arch not in ARCH_CONFIGS or name in arch_fields(ARCH_CONFIGS[arch]) or arch_having(name) is None


def _checked_on(base: Config, key: str) -> Config:
    """A copy of ``base`` on which the values of search key ``key`` can be checked: for a key
    that only another architecture has, with that model section switched to that architecture."""
    cfg = copy.deepcopy(base)
    section, _, name = key.rpartition(".")
    if not _applies(base, {}, key):
        cfg = from_dict({section: {"arch": arch_having(name)}}, cfg)
    return cfg


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
    keys = metric_keys(cfg.data.source in TEXT_SOURCES, learned_mediator(cfg), cfg.eval.num_train > 0,
                       cfg.data.num_valid != 0)
    return [f"eval/{k}" for k in keys]


def _absolute_paths(cfg: Config) -> None:
    """Trials run in their own directories (and on other nodes): data paths must be absolute."""
    for key in ("cache_dir", "train_path", "test_path", "vocab_path"):
        value = getattr(cfg.data, key)
        if value and not is_uri(value):
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
    overlay(spec.scheduler, sched, "tune.scheduler.")
    for opt in sched:
        if opt != "name" and opt not in SCHEDULER_OPTIONS[name]:
            owners = [s for s, opts in SCHEDULER_OPTIONS.items() if opt in opts]
            raise ConfigError(f"config key 'tune.scheduler.{opt}' is an option of {' and '.join(owners)}, not of "
                              f"{name}: drop it" + (f" (valid for {name}: {', '.join(SCHEDULER_OPTIONS[name])})"
                                                    if SCHEDULER_OPTIONS[name] else ""))
    budget = data.pop("per_trial", None)
    overlay(spec, data, "tune.")
    if budget is not None:
        if not isinstance(budget, dict):
            raise ConfigError("config key 'tune.per_trial' must be a mapping such as {iters: 200} or {minutes: 1.5}")
        b = spec.per_trial = BudgetSpec()
        overlay(b, budget, "tune.per_trial.")
        check(b.iters >= 0, "tune.per_trial.iters", f"must be >= 0, got {b.iters}")
        check(b.minutes >= 0, "tune.per_trial.minutes", f"must be >= 0, got {b.minutes}")
        check(b.iters > 0 or b.minutes > 0, "tune.per_trial",
               "needs iters > 0 or minutes > 0 (trials must be able to stop)")
    if not spec.metric:
        spec.metric = "eval/nll_test" if base.data.source in TEXT_SOURCES else "eval/balanced_nll"
    return spec


def _check_tune(t: TuneSpec, sweep_base: Config, params: list[ParamSpec], checked: list[Config]) -> None:
    """Ranges and cross-checks of the ``tune`` section against what trials will do."""
    check(t.mode in ("min", "max"), "tune.mode", f"must be 'min' or 'max', got {t.mode!r}")
    check(t.num_samples >= 1, "tune.num_samples", f"must be >= 1, got {t.num_samples}")
    check(t.max_concurrent >= 0, "tune.max_concurrent", f"must be >= 0 (0: no limit), got {t.max_concurrent}")
    check(t.keep_checkpoints >= 0, "tune.keep_checkpoints", f"must be >= 0 (0: automatic), got {t.keep_checkpoints}")
    t.keep_checkpoints = t.keep_checkpoints or (4 if t.scheduler.name == "pbt" else 2)
    check(t.max_failures >= 0, "tune.max_failures", f"must be >= 0, got {t.max_failures}")
    check(bool(t.storage_path), "tune.storage_path", "must name a directory (or a URI such as s3://bucket/path)")
    check("/" not in t.name and t.name not in (".", ".."), "tune.name",
           f"must be a plain directory name, got {t.name!r}")
    allowed = [m for m in reported_metrics(checked[0]) if all(m in reported_metrics(c) for c in checked)]
    check(t.metric in allowed, "tune.metric",
           f"must be a metric every trial reports ({', '.join(allowed)}), got {t.metric!r}")
    s = t.scheduler
    if s.name == "fifo":
        return
    check(s.time_attr in TIME_ATTRS, "tune.scheduler.time_attr",
           f"must be one of {', '.join(TIME_ATTRS)}, got {s.time_attr!r}")
    every = sweep_base.eval.every
    check(every >= 1, "eval.every",
           f"must be >= 1 for the {s.name} scheduler, which acts on intermediate evaluations: set base eval.every")
    unit = every if s.time_attr == "iteration" else 1  # time_attr of one evaluation
    if s.name == "asha":
        iters = sweep_base.run.iters
        full = iters if s.time_attr == "iteration" else (math.ceil(iters / every) if iters else 0)
        s.grace_period = s.grace_period or unit
        s.max_t = s.max_t or full
        check(s.max_t >= 1, "tune.scheduler.max_t",
               "is needed when trials stop by minutes only: give the time_attr of a full trial")
        check(s.grace_period >= 1, "tune.scheduler.grace_period", f"must be >= 1, got {s.grace_period}")
        check(s.grace_period <= s.max_t, "tune.scheduler.grace_period",
               f"must be <= max_t ({s.max_t}), got {s.grace_period}")
        check(s.reduction_factor > 1, "tune.scheduler.reduction_factor", f"must be > 1, got {s.reduction_factor}")
        return
    s.perturbation_interval = s.perturbation_interval or unit
    check(s.perturbation_interval >= 1, "tune.scheduler.perturbation_interval",
           f"must be >= 1, got {s.perturbation_interval}")
    check(s.perturbation_interval % unit == 0, "tune.scheduler.perturbation_interval",
           f"must be a multiple of eval.every ({every}): trials report (and checkpoint) at evaluations")
    check(0 < s.quantile_fraction <= 0.5, "tune.scheduler.quantile_fraction",
           f"must be in (0, 0.5], got {s.quantile_fraction}")
    check(0 <= s.resample_probability <= 1, "tune.scheduler.resample_probability",
           f"must be in [0, 1], got {s.resample_probability}")
    mutable = [p for p in params if p.varies and p.key in PERTURBABLE]
    check(bool(mutable), "tune.scheduler",
           f"pbt needs a search key it can perturb (a range or choice over one of: {', '.join(PERTURBABLE)})")
    if sweep_base.runtime.schedule == "async":
        check(all(p.key != "cot.m_steps" for p in mutable), "tune.scheduler",
               "pbt cannot perturb cot.m_steps with runtime.schedule 'async' (the pipeline's queued batches "
               "are sized by it): search cot.m_steps with asha, or use the sync schedule")


SMOKE_TRIALS = 2  # --smoke: at most this many samples of the search space


def smoke_sweep(base: Config, t: TuneSpec) -> None:
    """Shrink a sweep's budget, and only its budget, for ``--smoke``: at most :data:`SMOKE_TRIALS`
    samples, each trial with the smoke budget of a training run (:func:`cot_ray.run_policy.smoke_budget`),
    and the scheduler's periods (ASHA's grace period and max_t, PBT's perturbation interval)
    derived again from that budget, so the sweep runs every stage of itself in seconds."""
    t.num_samples = min(t.num_samples, SMOKE_TRIALS)
    smoke_budget(base)
    t.per_trial = BudgetSpec(iters=base.run.iters, minutes=0.0)
    t.scheduler.grace_period = t.scheduler.max_t = t.scheduler.perturbation_interval = 0  # 0: from eval.every


def load_sweep(path: str, overrides: typing.Sequence[str] = (), num_samples: Optional[int] = None,
               max_concurrent: Optional[int] = None, storage: Optional[str] = None,
               name: Optional[str] = None, smoke: bool = False) -> Sweep:
    """Read and validate a sweep file; ``overrides`` (``key=value``) change the base training config;
    ``smoke`` shrinks its budget (:func:`smoke_sweep`).

    Every error is a one-line :class:`ConfigError` that starts with the file's path.
    """
    try:
        raw = read_yaml(path)
        unknown = [k for k in raw if k not in SWEEP_SECTIONS]
        if unknown:
            raise ConfigError(f"unknown section '{unknown[0]}' (valid sections: {', '.join(SWEEP_SECTIONS)})")
        base_raw = raw.get("base") or {}
        extra = parse_overrides(list(overrides)) if overrides else {}
        base = default_config(source_of(base_raw, extra))
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
        if smoke:
            smoke_sweep(base, t)
        check(base.runtime.mode == "actors", "runtime.mode",
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
                    checked.append(from_dict(nest_keys({p.key: value}), _checked_on(base, p.key)).validate())
                except ConfigError as e:
                    raise ConfigError(f"search key '{p.key}' {json.dumps(p.to_yaml(), default=str)}: {e}") from None
        _check_tune(t, base, params, checked)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return Sweep(path, base, params, t)
