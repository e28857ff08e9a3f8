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
    cfg = tiny(*overrides, "runtime.placement_timeout_s=600")
    t0 = time.monotonic()
    with pytest.raises(runtime.PlacementError, match=match) as err:
        _placements(cfg)
    assert time.monotonic() - t0 < 10
    assert "\n" not in str(err.value)
    assert not any(pg["state"] == "CREATED" for pg in ray.util.placement_group_table().values())
