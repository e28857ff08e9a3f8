"""Placement on a two-node cluster: --spread puts G and M on different nodes, PACK keeps them
together, and requests the nodes cannot meet fail at once with a one-line error.

The cluster (``ray.cluster_utils.Cluster``: a head with 3 CPUs and a second node with 1 CPU,
no GPUs) lives in this module only; test_runtime.py uses a plain local Ray of its own.
"""

from __future__ import annotations

import time

import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from cot_ray import runtime  # noqa: E402
from cot_ray.data import load_dataset  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def two_nodes():
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "num_gpus": 0})
    cluster.add_node(num_cpus=1, num_gpus=0)
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def _placements(cfg) -> dict:
    rt = runtime.ActorRuntime(cfg.runtime)
    try:
        rt.make_learners(cfg, load_dataset(cfg.data))
        return rt.placements()
    finally:
        rt.shutdown()


def test_spread_puts_the_workers_on_different_nodes(tiny):
    where = _placements(tiny("runtime.spread=true"))
    assert where["generator"]["node_id"] != where["mediator"]["node_id"]
    assert all(p["gpu_ids"] == [] and p["device"] == "cpu" for p in where.values())  # auto: no GPUs here


def test_pack_keeps_the_workers_together(tiny):
    where = _placements(tiny())
    assert where["generator"]["node_id"] == where["mediator"]["node_id"]


@pytest.mark.parametrize("overrides,match", [
    (("runtime.spread=true", "runtime.cpus_per_worker=2"), r"runtime.spread.*only 1 alive node"),
    (("runtime.cpus_per_worker=2",), "cannot host 2 workers with 2 CPU each"),
    (("runtime.gpus_per_worker=1",), r"runtime.gpus_per_worker.*has 0"),
    (("runtime.cpus_per_worker=3",), r"runtime.cpus_per_worker.*6 CPUs.*has 4"),
])
def test_requests_the_nodes_cannot_meet_fail_fast(tiny, overrides, match):
    cfg = tiny(*overrides, "runtime.placement_timeout_s=600", "runtime.scale_timeout_s=30")
    t0 = time.monotonic()
    with pytest.raises(runtime.PlacementError, match=match) as err:
        _placements(cfg)
    assert time.monotonic() - t0 < 10
    assert "\n" not in str(err.value)
    assert not any(pg["state"] == "CREATED" for pg in ray.util.placement_group_table().values())


# ----------------------------------------------------------------------------- autoscaling clusters

def test_on_an_autoscaling_cluster_a_run_asks_for_the_nodes_and_waits_for_them(tiny, two_nodes, monkeypatch):
    """No node has a GPU; the 'autoscaler' (here: a GPU node added when it is asked, as a cloud
    one would minutes later) is asked for the bundles, and the run starts on the new node."""
    import ray.autoscaler.sdk as sdk

    requests: list = []
    added: list = []

    def autoscaler(bundles):
        requests.append(bundles)
        if bundles:
            added.append(two_nodes.add_node(num_cpus=2, num_gpus=2))

    monkeypatch.setattr(sdk, "request_resources", lambda bundles: autoscaler(bundles))
    lines: list = []
    cfg = tiny("runtime.gpus_per_worker=1", "runtime.autoscaling=always", "runtime.scale_timeout_s=120")
    rt = runtime.ActorRuntime(cfg.runtime, echo=lines.append)
    try:
        rt.make_learners(cfg, load_dataset(cfg.data))
        where = rt.placements()
    finally:
        rt.shutdown()
        for node in added:
            two_nodes.remove_node(node)
    assert requests == [[{"CPU": 1.0, "GPU": 1.0}] * 2, []]  # asked for the bundles, then the request cleared
    assert any("asking the autoscaler for 2 x 1 CPU, 1 GPU and waiting up to 120s" in line for line in lines), lines
    assert all(len(p["gpu_ids"]) == 1 for p in where.values())


def test_an_autoscaler_that_adds_nothing_ends_the_wait_in_one_line(tiny, monkeypatch):
    import ray.autoscaler.sdk as sdk

    monkeypatch.setattr(sdk, "request_resources", lambda bundles: None)
    cfg = tiny("runtime.gpus_per_worker=1", "runtime.autoscaling=always", "runtime.scale_timeout_s=3")
    lines: list = []
    t0 = time.monotonic()
    with pytest.raises(runtime.PlacementError, match=r"within 3s: the autoscaler did not add the nodes") as err:
        runtime.create_placement_group([{"CPU": 1.0, "GPU": 1.0}] * 2, cfg.runtime, lines.append, every_s=1.0)
    assert 3 <= time.monotonic() - t0 < 15 and "\n" not in str(err.value)
    assert any("still waiting for 2 x 1 CPU, 1 GPU" in line and "ray status" in line for line in lines), lines
    assert not any(pg["state"] == "CREATED" for pg in ray.util.placement_group_table().values())


def _fake_proc(root, *cmdlines):
    for pid, args in enumerate(cmdlines, start=100):
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in args) + b"\0")
    return root


def test_auto_detects_a_ray_up_head_by_its_autoscaler_not_by_a_leftover_bootstrap_file(tmp_path):
    """`ray up` leaves ~/ray_bootstrap_config.yaml behind after `ray down`; a later plain local
    cluster must not make every impossible request wait 15 minutes for an autoscaler."""
    py = "/usr/bin/python3"
    plain = _fake_proc(tmp_path / "plain", [py, "-u", "/ray/autoscaler/_private/monitor.py", "--logs-dir=/tmp/x"],
                       [py, "-u", "/ray/_private/log_monitor.py", "--gcs-address=1.2.3.4:6379"])
    (tmp_path / "plain" / "ray_bootstrap_config.yaml").write_text("cluster_name: old\n")
    assert not runtime.autoscaler_running(plain)
    head = _fake_proc(tmp_path / "head", [py, "-u", "/ray/autoscaler/_private/monitor.py",
                                          "--autoscaling-config=/root/ray_bootstrap_config.yaml"])
    assert runtime.autoscaler_running(head)
    v2 = _fake_proc(tmp_path / "v2", [py, "/ray/autoscaler/v2/monitor.py", "--autoscaling-config", "/root/b.yaml"])
    assert runtime.autoscaler_running(v2)
    assert not runtime.autoscaler_running(tmp_path / "nothing")


def test_a_cluster_without_an_autoscaler_still_fails_at_once(tiny):
    cfg = tiny("runtime.gpus_per_worker=1", "runtime.scale_timeout_s=600")  # auto: Cluster's monitor has no config
    t0 = time.monotonic()
    with pytest.raises(runtime.PlacementError, match="runtime.gpus_per_worker"):
        runtime.create_placement_group([{"CPU": 1.0, "GPU": 1.0}] * 2, cfg.runtime)
    assert time.monotonic() - t0 < 10
