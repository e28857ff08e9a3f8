"""Reading and writing the configuration (:mod:`cot_ray.config`): defaults <- a YAML file <-
``key=value`` overrides <- the command line's flags, keys and types checked with one-line errors;
the resolved config written back as YAML::

    >>> cfg = load_config(None, ["cot.m_steps=2", "mediator.dropout=0.3"])
    >>> cfg.cot.m_steps
    2
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from typing import Any, Optional

import yaml

from .config import Config, default_config
from .errors import ConfigError
from .files import atomic_file
from .model_config import ModelConfig, model_section
from .run_policy import BUDGETED_EVAL_KEYS, budgeted_eval


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against a field type; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}: give a number")
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
    overlay(cfg, data, prefix)
    return cfg


def overlay(obj: Any, data: Any, prefix: str) -> None:
    """Set the fields of the dataclass ``obj`` from the nested dict ``data``, checking keys and
    types; ``prefix`` ("section.") names the keys in errors."""
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
        if isinstance(tp, type) and issubclass(tp, ModelConfig) and isinstance(value, dict):
            model, rest = model_section(getattr(obj, key), value, full)
            setattr(obj, key, model)
            overlay(model, rest, full + ".")
        elif dataclasses.is_dataclass(tp):
            overlay(getattr(obj, key), value, full + ".")
        else:
            setattr(obj, key, _coerce(value, tp, full))


def flat_keys(nested: dict, prefix: str = "") -> dict:
    """The inverse of :func:`nest_keys`: ``{"cot": {"m_steps": 2}}`` -> ``{"cot.m_steps": 2}``."""
    out = {}
    for k, v in nested.items():
        if isinstance(v, dict):
            out.update(flat_keys(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def nest_keys(flat: dict, what: str = "key") -> dict:
    """``{"cot.m_steps": 2, "run.name": "x"}`` -> ``{"cot": {"m_steps": 2}, "run": {"name": "x"}}``."""
    out: dict = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{what} '{key}' conflicts with an earlier value of '{p}'")
        node[parts[-1]] = value
    return out


class _Loader(yaml.SafeLoader):
    """YAML as people write numbers: ``1e-4`` is a float (YAML 1.1, PyYAML's, reads an exponent
    without a dot as a string), as in YAML 1.2 and in Python."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def load_yaml(stream) -> Any:
    """YAML text (or a stream of it) read safely, with ``1e-4`` a float (:class:`_Loader`)."""
    return yaml.load(stream, Loader=_Loader)


def parse_overrides(items: list[str]) -> dict:
    """``["cot.m_steps=2", "run.name=x"]`` -> nested dict; values are parsed as YAML scalars."""
    flat: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value, e.g. cot.m_steps=2")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        try:
            value = load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        flat[key] = value
    return nest_keys(flat, "override")


def read_yaml(path: str) -> dict:
    """Read a YAML mapping with one-line errors for the usual mistakes."""
    if not os.path.exists(path):
        raise ConfigError(f"config file '{path}' does not exist: check the path")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = load_yaml(f)
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


def source_of(*layers: dict) -> str:
    """The data.source that the last layer naming one sets ("oracle" if none does)."""
    source = "oracle"
    for layer in layers:
        data = layer.get("data") if isinstance(layer, dict) else None
        if isinstance(data, dict) and isinstance(data.get("source"), str):
            source = data["source"]
    return source


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None,
                base: Optional[Config] = None, values: Optional[dict] = None) -> Config:
    """Defaults <- YAML file <- ``key=value`` overrides <- ``values`` (dotted key -> typed value,
    what command-line flags set), then validate.

    Without ``base`` the defaults are :func:`default_config` of the data source that the file,
    the overrides or the values name, so text runs start from the text model sizes.
    """
    layers = [read_yaml(path) if path else {}, parse_overrides(overrides) if overrides else {},
              nest_keys(values, "flag") if values else {}]
    if path and {"base", "search", "tune"} & set(layers[0]):
        raise ConfigError(f"'{path}' is a sweep file (sections base, search, tune), not a training config: "
                          f"run it with `cot-ray tune {path}`")
    cfg = base if base is not None else default_config(source_of(*layers))
    for layer in layers:
        cfg = from_dict(layer, cfg)
    given = {key for layer in layers for key in flat_keys(layer)}
    sized = budgeted_eval(cfg.eval, cfg.run.minutes)
    for key in BUDGETED_EVAL_KEYS:
        if key not in given:
            setattr(cfg.eval, key.split(".")[1], getattr(sized, key.split(".")[1]))
    return cfg.validate()


def write_yaml(data: dict, path: str) -> None:
    """Write ``data`` as YAML, atomically."""
    with atomic_file(path) as f:
        yaml.safe_dump(data, f, sort_keys=False)


def save_config(cfg: Config, path: str) -> None:
    """Write the resolved config as YAML, atomically."""
    write_yaml(cfg.to_dict(), path)
