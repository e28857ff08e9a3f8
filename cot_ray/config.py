"""Typed configuration: one dataclass tree, YAML in and out, ``key=value`` overrides.

Every field documents itself. Validation errors are one line and name the key::

    >>> cfg = load_config(None, ["cot.m_steps=2", "mediator.dropout=0.3"])
    >>> cfg.cot.m_steps
    2
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml


class ConfigError(ValueError):
    """A bad configuration: the message is one line naming the key and the fix."""


@dataclass
class ModelConfig:
    """An autoregressive LSTM language model (used for G, M and inner mediators)."""

    emb_dim: int = 32  # token embedding width
    hidden_dim: int = 32  # LSTM state width
    num_layers: int = 1  # stacked LSTM layers
    dropout: float = 0.0  # drop probability on LSTM outputs, applied only in the model's own training step
    init_std: float = 0.1  # every parameter starts N(0, init_std), as in the authors' code


@dataclass
class OptimConfig:
    """Adam with global-norm gradient clipping."""

    lr: float = 1e-3  # Adam learning rate
    beta1: float = 0.9  # Adam beta1
    beta2: float = 0.95  # Adam beta2 (the authors use 0.95, not 0.999)
    grad_clip: float = 5.0  # clip gradients to this global L2 norm; 0 disables clipping


@dataclass
class CoTConfig:
    """The schedule of one training iteration."""

    algo: str = "cot"  # "cot" (cooperative training) or "mle" (maximum likelihood baseline)
    batch_size: int = 64  # sequences per step; the mediator sees this many real plus as many generated
    g_steps: int = 1  # generator updates per iteration
    m_steps: int = 1  # mediator updates per iteration (cot only)
    sync_every: int = 1  # copy mediator weights to the generator every this many mediator updates


@dataclass
class DataConfig:
    """Where training and test sequences come from."""

    source: str = "oracle"  # "oracle": the bundled SeqGAN oracle (synthetic Turing test)
    num_train: int = 9984  # oracle sequences in the training set
    num_test: int = 9984  # oracle sequences in the held-out test set
    seed: int = 88  # seed of the oracle data sets (fixed, so every run sees the same data)
    cache_dir: str = ""  # where generated data sets are cached; "" means ~/.cache/cot-ray


@dataclass
class EvalConfig:
    """Periodic evaluation of the generator."""

    every: int = 500  # evaluate every this many iterations (and at the end); 0 only at the end
    num_samples: int = 9984  # generator samples for NLL_oracle and JSD (the paper uses 9,984)
    num_test: int = 9984  # held-out sequences for NLL_test (at most data.num_test)


@dataclass
class RunConfig:
    """Bookkeeping of one run."""

    seed: int = 0  # seed of model initialisation, sampling and dropout
    iters: int = 2000  # total training iterations
    minutes: float = 0.0  # if > 0, stop after this many minutes of training (whichever comes first)
    logdir: str = "runs"  # runs are created as LOGDIR/NAME
    name: str = ""  # run directory name; "" means ALGO-YYYYmmdd-HHMMSS
    checkpoint_every: int = 500  # write a checkpoint every this many iterations (and at the end)
    log_every: int = 50  # write train/ scalars and a progress line every this many iterations
    device: str = "cpu"  # torch device of the in-process loop: "cpu", "cuda", "cuda:1", ...
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default


def _default_mediator() -> ModelConfig:
    return ModelConfig(emb_dim=64, hidden_dim=64, dropout=0.5)


@dataclass
class Config:
    """Everything a training run needs. Defaults follow the CoT authors' synthetic setup."""

    cot: CoTConfig = field(default_factory=CoTConfig)
    generator: ModelConfig = field(default_factory=ModelConfig)
    mediator: ModelConfig = field(default_factory=_default_mediator)
    g_optim: OptimConfig = field(default_factory=OptimConfig)
    m_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3))
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "Config":
        """Raise ConfigError for impossible values; return self."""
        c = self
        _check(c.cot.algo in ("cot", "mle"), "cot.algo", f"must be 'cot' or 'mle', got {c.cot.algo!r}")
        _check(c.data.source in ("oracle",), "data.source", f"must be 'oracle', got {c.data.source!r}")
        for key in ("cot.batch_size", "cot.g_steps", "cot.sync_every", "data.num_train",
                    "data.num_test", "eval.num_samples", "eval.num_test", "run.log_every",
                    "run.checkpoint_every"):
            _check(_get(c, key) >= 1, key, f"must be >= 1, got {_get(c, key)}")
        for key in ("cot.m_steps", "run.iters", "eval.every", "run.threads"):
            _check(_get(c, key) >= 0, key, f"must be >= 0, got {_get(c, key)}")
        _check(c.cot.algo == "mle" or c.cot.m_steps >= 1, "cot.m_steps", "must be >= 1 for cot")
        _check(c.run.minutes >= 0, "run.minutes", f"must be >= 0, got {c.run.minutes}")
        _check(c.run.iters > 0 or c.run.minutes > 0, "run.iters",
               "give run.iters > 0 or run.minutes > 0 (the run must be able to stop)")
        _check(c.eval.num_test <= c.data.num_test, "eval.num_test",
               f"must be <= data.num_test ({c.data.num_test}), got {c.eval.num_test}")
        for name in ("generator", "mediator"):
            m: ModelConfig = getattr(c, name)
            for f in ("emb_dim", "hidden_dim", "num_layers"):
                _check(getattr(m, f) >= 1, f"{name}.{f}", f"must be >= 1, got {getattr(m, f)}")
            _check(0.0 <= m.dropout < 1.0, f"{name}.dropout", f"must be in [0, 1), got {m.dropout}")
            _check(m.init_std > 0, f"{name}.init_std", f"must be > 0, got {m.init_std}")
        for name in ("g_optim", "m_optim"):
            o: OptimConfig = getattr(c, name)
            _check(o.lr > 0, f"{name}.lr", f"must be > 0, got {o.lr}")
            for f in ("beta1", "beta2"):
                _check(0.0 <= getattr(o, f) < 1.0, f"{name}.{f}", f"must be in [0, 1), got {getattr(o, f)}")
            _check(o.grad_clip >= 0, f"{name}.grad_clip", f"must be >= 0, got {o.grad_clip}")
        return self


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' {msg}")


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against a field type; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(
                f"config key '{key}' must be of type {tp.__name__}, got {type(value).__name__} {value!r}"
            )
        return value
    raise ConfigError(f"config key '{key}' has an unsupported type {tp}")  # pragma: no cover


def from_dict(data: dict, base: Optional[Config] = None, prefix: str = "") -> Config:
    """Overlay a nested dict onto ``base`` (default: the defaults), checking keys and types."""
    cfg = base if base is not None else Config()
    _overlay(cfg, data, prefix)
    return cfg


def _overlay(obj: Any, data: Any, prefix: str) -> None:
    if not isinstance(data, dict):
        where = f"section '{prefix.rstrip('.')}'" if prefix else "the top level"
        raise ConfigError(f"config {where} must be a mapping of keys to values, got {type(data).__name__}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{full}' (valid keys here: {', '.join(names)})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            _overlay(getattr(obj, key), value, full + ".")
        else:
            setattr(obj, key, _coerce(value, tp, full))


def parse_overrides(items: list[str]) -> dict:
    """``["cot.m_steps=2", "run.name=x"]`` -> nested dict; values are parsed as YAML scalars."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value, e.g. cot.m_steps=2")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with an earlier override of '{p}'")
        node[parts[-1]] = value
    return out


def read_yaml(path: str) -> dict:
    """Read a YAML mapping with one-line errors for the usual mistakes."""
    if not os.path.exists(path):
        raise ConfigError(f"config file '{path}' does not exist: check the path")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file '{path}' is not valid YAML{where}: fix its syntax") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}' is not UTF-8 text: give a YAML file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None,
                base: Optional[Config] = None) -> Config:
    """Defaults <- YAML file <- ``key=value`` overrides, then validate."""
    cfg = base if base is not None else Config()
    if path:
        cfg = from_dict(read_yaml(path), cfg)
    if overrides:
        cfg = from_dict(parse_overrides(overrides), cfg)
    return cfg.validate()


def save_config(cfg: Config, path: str) -> None:
    """Write the resolved config as YAML, atomically."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
    os.replace(tmp, path)
