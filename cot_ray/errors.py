"""The one error type of bad input: :class:`ConfigError`, whose message is one line naming the
key and the fix, and :func:`check`, which raises it. Imports nothing of the project."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad configuration: the message is one line naming the key and the fix."""


def check(ok: bool, key: str, msg: str) -> None:
    """Raise the one-line ConfigError "config key 'KEY' MSG" unless ``ok``."""
    if not ok:
        raise ConfigError(f"config key '{key}' {msg}")
