"""Where a run goes: Ray's convention for the cluster address, and how loud Ray may be there.

``ray.init`` is replaced by a recorder: these tests check the decision, not Ray itself (the
local-cluster check script joins a real cluster through $RAY_ADDRESS under `ray job submit`).
"""

from __future__ import annotations

import json
import os

import pytest

ray = pytest.importorskip("ray")

from cot_ray import connection  # noqa: E402
from cot_ray.config_loading import load_config  # noqa: E402
from cot_ray.errors import ConfigError  # noqa: E402


@pytest.fixture
def init_calls(monkeypatch):
    calls: list = []
    monkeypatch.setattr(connection.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(connection.ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return calls


def test_no_address_starts_a_private_quiet_local_ray(init_calls):
    assert connection.connect(load_config(None, []).runtime) is True
    (kw,) = init_calls
    assert kw["address"] == "local" and kw["log_to_driver"] is False


def test_ray_address_from_ray_job_submit_is_joined_with_the_cluster_logs(init_calls, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    rcfg = load_config(None, []).runtime
    assert connection.cluster_address(rcfg) == "10.0.0.5:6379"
    assert connection.connect(rcfg) is False  # joined: not ours to shut down
    (kw,) = init_calls
    assert kw["address"] == "10.0.0.5:6379"
    assert kw["log_to_driver"] is True and kw["logging_level"] <= 30  # worker tracebacks, resource waits


def test_an_explicit_address_wins_over_ray_address(init_calls, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    connection.connect(load_config(None, ["runtime.address=auto"]).runtime)
    assert init_calls[0]["address"] == "auto"


def test_an_unreachable_ray_address_is_one_line_naming_it(monkeypatch):
    monkeypatch.setattr(connection.ray, "is_initialized", lambda: False)

    def refuse(**kw):
        raise ConnectionError("Could not find any running Ray instance.\nmore")

    monkeypatch.setattr(connection.ray, "init", refuse)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    with pytest.raises(ConfigError, match=r"^\$RAY_ADDRESS '10.0.0.5:6379': cannot connect to a Ray cluster "
                                          r"\(Could not find any running Ray instance.\): start one"):
        connection.connect(load_config(None, []).runtime)


PACKAGE = os.path.dirname(os.path.abspath(connection.__file__))  # cot_ray/, what the workers must run
REPO = os.path.dirname(PACKAGE)


@pytest.mark.parametrize("address", ["auto", "10.0.0.5:6379", "ray://10.0.0.5:10001"])
def test_joining_a_cluster_ships_this_package_to_its_workers(init_calls, monkeypatch, address):
    # Workers on other nodes may lack cot-ray (or have another version): every join but a
    # private local Ray brings the driver's own package along.
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    connection.connect(load_config(None, [f"runtime.address={address}"]).runtime)
    assert init_calls[0]["runtime_env"] == {"py_modules": [PACKAGE]}


def test_a_private_local_ray_ships_nothing(init_calls, monkeypatch):
    connection.connect(load_config(None, []).runtime)
    assert "runtime_env" not in init_calls[0]


def _job_env(monkeypatch, runtime_env: dict) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": runtime_env}))


def test_a_job_submitted_with_this_package_in_its_working_dir_ships_nothing_more(init_calls, monkeypatch):
    _job_env(monkeypatch, {"working_dir": "gcs://_ray_pkg_abc.zip"})
    monkeypatch.chdir(REPO)  # the driver of `ray job submit --working-dir .` runs in the shipped copy
    connection.connect(load_config(None, []).runtime)
    assert init_calls[0]["runtime_env"] is None


@pytest.mark.parametrize("job_env", [{"working_dir": "gcs://_ray_pkg_abc.zip"}, {"pip": ["numpy"]}])
def test_a_job_whose_working_dir_lacks_this_package_still_ships_it(init_calls, monkeypatch, tmp_path, job_env):
    _job_env(monkeypatch, job_env)
    monkeypatch.chdir(tmp_path)  # a working dir of the user's own; cot-ray installed on the driver's node only
    connection.connect(load_config(None, []).runtime)
    assert init_calls[0]["runtime_env"] == {"py_modules": [PACKAGE]}
