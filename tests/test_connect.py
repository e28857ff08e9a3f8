"""Where a run goes: Ray's convention for the cluster address, and how loud Ray may be there.

``ray.init`` is replaced by a recorder: these tests check the decision, not Ray itself (the
local-cluster check script joins a real cluster through $RAY_ADDRESS under `ray job submit`).
"""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

from cot_ray import runtime  # noqa: E402
from cot_ray.config import ConfigError, load_config  # noqa: E402


@pytest.fixture
def init_calls(monkeypatch):
    calls: list = []
    monkeypatch.setattr(runtime.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(runtime.ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return calls


def test_no_address_starts_a_private_quiet_local_ray(init_calls):
    assert runtime.connect(load_config(None, []).runtime) is True
    (kw,) = init_calls
    assert kw["address"] == "local" and kw["log_to_driver"] is False


def test_ray_address_from_ray_job_submit_is_joined_with_the_cluster_logs(init_calls, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    rcfg = load_config(None, []).runtime
    assert runtime.cluster_address(rcfg) == "10.0.0.5:6379"
    assert runtime.connect(rcfg) is False  # joined: not ours to shut down
    (kw,) = init_calls
    assert kw["address"] == "10.0.0.5:6379"
    assert kw["log_to_driver"] is True and kw["logging_level"] <= 30  # worker tracebacks, resource waits


def test_an_explicit_address_wins_over_ray_address(init_calls, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    runtime.connect(load_config(None, ["runtime.address=auto"]).runtime)
    assert init_calls[0]["address"] == "auto"


def test_an_unreachable_ray_address_is_one_line_naming_it(monkeypatch):
    monkeypatch.setattr(runtime.ray, "is_initialized", lambda: False)

    def refuse(**kw):
        raise ConnectionError("Could not find any running Ray instance.\nmore")

    monkeypatch.setattr(runtime.ray, "init", refuse)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    with pytest.raises(ConfigError, match=r"^\$RAY_ADDRESS '10.0.0.5:6379': cannot connect to a Ray cluster "
                                          r"\(Could not find any running Ray instance.\): start one"):
        runtime.connect(load_config(None, []).runtime)
