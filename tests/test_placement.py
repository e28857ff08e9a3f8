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

from cot_ray import placement, runtime  # noqa: E402
from cot_ray.data import load_dataset  # noqa: E402
from tests.conftest import CPU_ONLY_WORKERS  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def two_nodes():
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "num_gpus": 0})
    cluster.add_node(num_cpus=1, num_gpus=0)
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR", runtime_env=CPU_ONLY_WORKERS)
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
    with pytest.raises(placement.PlacementError, match=match) as err:
        _placements(cfg)
    assert time.monotonic() - t0 < 10
    assert "\n" not in str(err.value)
    assert not any(pg["state"] == "CREATED" for pg in ray.util.placement_group_table().values())


def test_automatic_cpus_share_the_nodes_when_there_are_fewer_cpus_than_workers(tiny):
    """cpus_per_worker 0 (the default): one CPU each where the nodes have them; five workers on
    these 3 + 1 CPUs get 0.75 each (0.8, the share of the total, would not fit node by node)."""
    rcfg = tiny().runtime
    assert placement.worker_bundle(rcfg, 2) == ({"CPU": 1.0}, None)
    bundle, note = placement.worker_bundle(rcfg, 5)
    assert bundle == {"CPU": 0.75}
    assert note == "5 workers share the cluster's 4 CPU(s): 0.75 CPU each, one torch thread each " \
                   "(--cpus-per-worker N to choose)"
    assert placement.worker_threads(bundle) == 1 and placement.worker_threads({"CPU": 2.5}) == 2
    given = tiny("runtime.cpus_per_worker=1").runtime  # a count the user gave is kept, and fails with the fix
    assert placement.worker_bundle(given, 5) == ({"CPU": 1.0}, None)
    problem = placement.placement_problem([{"CPU": 1.0}] * 5, False, placement.alive_nodes(), ray.cluster_resources())
    assert problem.endswith("lower --cpus-per-worker (--cpus-per-worker 0.75 fits: the workers then share the CPUs)")


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
    pg = None
    try:
        pg = placement.create_placement_group([{"CPU": 1.0, "GPU": 1.0}] * 2, cfg.runtime, lines.append)
        homes = set(ray.util.placement_group_table(pg)["bundles_to_node_id"].values())
    finally:
        if pg is not None:
            ray.util.remove_placement_group(pg)
        for node in added:
            two_nodes.remove_node(node)
    assert requests == [[{"CPU": 1.0, "GPU": 1.0}] * 2, []]  # asked for the bundles, then the request cleared
    assert any("asking the autoscaler for 2 x 1 CPU, 1 GPU and waiting up to 120s" in line for line in lines), lines
    assert homes == {added[0].node_id}  # both bundles on the node the autoscaler added


def test_an_autoscaler_that_adds_nothing_ends_the_wait_in_one_line(tiny, monkeypatch):
    import ray.autoscaler.sdk as sdk

    monkeypatch.setattr(sdk, "request_resources", lambda bundles: None)
    cfg = tiny("runtime.gpus_per_worker=1", "runtime.autoscaling=always", "runtime.scale_timeout_s=3")
    lines: list = []
    t0 = time.monotonic()
    with pytest.raises(placement.PlacementError, match=r"within 3s: the autoscaler did not add the nodes") as err:
        placement.create_placement_group([{"CPU": 1.0, "GPU": 1.0}] * 2, cfg.runtime, lines.append, every_s=1.0)
    assert 3 <= time.monotonic() - t0 < 15 and "\n" not in str(err.value)
    assert any("still waiting for 2 x 1 CPU, 1 GPU" in line and "ray status" in line for line in lines), lines
    assert not any(pg["state"] == "CREATED" for pg in ray.util.placement_group_table().values())


def test_an_interrupted_wait_leaves_no_request_and_no_pending_group(tiny, monkeypatch):
    """Ctrl-C (or `ray job stop`, or any error) while waiting for the autoscaler: the request is
    cleared and the pending group removed, or the autoscaler would keep (billed) nodes up."""
    import ray.autoscaler.sdk as sdk
    from ray.util.placement_group import PlacementGroup

    requests: list = []
    monkeypatch.setattr(sdk, "request_resources", lambda bundles: requests.append(bundles))

    def interrupted(self, timeout_seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(PlacementGroup, "wait", interrupted)
    cfg = tiny("runtime.gpus_per_worker=1", "runtime.autoscaling=always", "runtime.scale_timeout_s=600")
    with pytest.raises(KeyboardInterrupt):
        placement.create_placement_group([{"CPU": 1.0, "GPU": 1.0}] * 2, cfg.runtime)
    assert requests == [[{"CPU": 1.0, "GPU": 1.0}] * 2, []]
    assert not any(pg["state"] in ("PENDING", "CREATED") for pg in ray.util.placement_group_table().values())


def test_auto_asks_the_cluster_whether_an_autoscaler_can_add_nodes():
    """Ray's view, not this machine's processes: this Cluster's monitor is read-only (each node
    type is node_<node id>), so no autoscaler; a `ray up` or KubeRay cluster names its node types
    from its configuration (scripts/local_cluster_check.sh checks a real `ray up` one)."""
    types = ray.get(ray.remote(num_cpus=0)(placement.cluster_node_types).remote())
    assert len(types) >= 2 and all(t.startswith("node_") for t in types), types  # (nodes gone may linger)
    assert not placement.autoscaler_running()
    assert placement.configured_node_types({"ray.head.default", "node_0af1"})  # ray up: the head's configured type
    assert placement.configured_node_types({"headgroup", "gpu-workers"})  # KubeRay: its groups
    assert not placement.configured_node_types({"node_0af1", "node_77c2"}) and not placement.configured_node_types(set())


def test_a_cluster_without_an_autoscaler_still_fails_at_once(tiny):
    cfg = tiny("runtime.gpus_per_worker=1", "runtime.scale_timeout_s=600")  # auto: Cluster's monitor has no config
    t0 = time.monotonic()
    with pytest.raises(placement.PlacementError, match="runtime.gpus_per_worker"):
        placement.create_placement_group([{"CPU": 1.0, "GPU": 1.0}] * 2, cfg.runtime)
    assert time.monotonic() - t0 < 10
