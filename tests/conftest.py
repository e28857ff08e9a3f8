"""Shared fixtures: tiny configurations that exercise the real code paths in seconds."""

from __future__ import annotations

import pytest

from cot_ray.config import load_config

# Small models and data: the oracle keeps its 5,000-token vocabulary and length 20.
TINY = [
    "generator.emb_dim=8", "generator.hidden_dim=8",
    "mediator.emb_dim=16", "mediator.hidden_dim=16",
    "cot.batch_size=16",
    "data.num_train=256", "data.num_test=64",
    "eval.num_samples=64", "eval.num_test=64",
    "run.log_every=1",
]


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> str:
    """One oracle data cache for the whole session, outside the user's home."""
    return str(tmp_path_factory.mktemp("data-cache"))


@pytest.fixture
def tiny(tmp_path, data_cache):
    """``tiny(*overrides)`` -> a validated tiny Config whose runs go under tmp_path."""

    def make(*overrides: str):
        return load_config(None, TINY + [f"data.cache_dir={data_cache}", f"run.logdir={tmp_path / 'runs'}",
                                         *overrides])

    return make
