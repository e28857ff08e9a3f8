"""Where a run's workers go: one placement group of one bundle per worker, on the connected
Ray cluster, and whether an autoscaler can add the nodes it lacks. Imports Ray, not the learners.

Requests the cluster can never meet fail at once with a one-line :class:`PlacementError`
(unless an autoscaler can add nodes: then it is asked, and waited for); requests that could be
met but are not within ``runtime.placement_timeout_s`` (resources busy) fail after that time.
The runtime (:mod:`cot_ray.runtime`) and the sweeps (:mod:`cot_ray.sweep.tune`) place workers so.
"""

from __future__ import annotations

import json
import math
import time
from typing import Callable, Optional

import ray
from ray.util.placement_group import (
    PlacementGroup,
    placement_group,
    remove_placement_group,
)

from .config import RuntimeConfig
from .errors import ConfigError


class PlacementError(ConfigError):
    """The cluster cannot host the workers as configured: the message is one line with the fix."""


def format_resources(bundle: dict) -> str:
    """``{'CPU': 1.0, 'GPU': 1.0}`` -> ``'1 CPU, 1 GPU'``."""
    return ", ".join(f"{v:g} {k}" for k, v in bundle.items())


def _fits(node: dict, bundle: dict) -> bool:
    return all(node.get(k, 0.0) >= v for k, v in bundle.items())


def alive_nodes() -> list[dict]:
    """Total resources of each alive node of the connected cluster."""
    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


def placement_problem(bundles: list[dict], spread: bool, nodes: list[dict], total: dict) -> Optional[str]:
    """Why ``bundles`` can never be placed on a cluster of ``nodes``; None if they can.

    Judged on the nodes' total resources: resources busy with other work are what the wait
    on the placement group (with its timeout) is for.
    """
    n = len(bundles)
    for res, key, flag in (("GPU", "gpus_per_worker", "--gpus-per-worker"),
                           ("CPU", "cpus_per_worker", "--cpus-per-worker")):
        need = sum(b.get(res, 0.0) for b in bundles)
        have = total.get(res, 0.0)
        if need > have:
            share = cpu_share(n, spread, nodes, total) if res == "CPU" else 0.0
            fix = (" (0 trains on CPUs)" if res == "GPU" else
                   f" (--cpus-per-worker {share:g} fits: the workers then share the CPUs)" if share > 0 else "")
            return (f"config key 'runtime.{key}' asks for {need:g} {res}s for the {n} worker(s) but the Ray "
                    f"cluster has {have:g}: lower {flag}{fix}")
    bundle = bundles[0]
    if spread:
        fitting = sum(_fits(node, bundle) for node in nodes)
        if fitting < n:
            return (f"config key 'runtime.spread' puts the {n} workers on different nodes, each with "
                    f"{format_resources(bundle)}, but only {fitting} alive node(s) have that much: add nodes, "
                    "ask for less per worker, or drop --spread")
        return None
    free = [dict(node) for node in nodes]
    for b in bundles:  # PACK may still use several nodes: first fit on what is left
        home = next((node for node in free if _fits(node, b)), None)
        if home is None:
            return (f"the nodes of the Ray cluster cannot host {n} workers with {format_resources(b)} each: lower "
                    "--cpus-per-worker / --gpus-per-worker or add nodes")
        for k, v in b.items():
            home[k] = home.get(k, 0.0) - v
    return None


def cpu_share(num_workers: int, spread: bool, nodes: list[dict], total: dict) -> float:
    """The largest CPU count (in hundredths) that ``num_workers`` equal CPU-only bundles can
    each have on these nodes; 0 if none."""
    share = math.floor(total.get("CPU", 0.0) / num_workers * 100) / 100
    while share > 0 and placement_problem([{"CPU": share}] * num_workers, spread, nodes, total):
        share = round(share - 0.01, 2)  # the share of the total may not fit the nodes one by one
    return share


def requested_cpus(rcfg: RuntimeConfig) -> float:
    """CPUs per worker before the cluster is seen: ``runtime.cpus_per_worker``, or 1 when automatic."""
    return float(rcfg.cpus_per_worker) if rcfg.cpus_per_worker > 0 else 1.0


def worker_threads(bundle: dict) -> int:
    """Torch threads of a worker with ``bundle``: its whole CPUs, at least one."""
    return max(1, int(bundle.get("CPU", 1.0)))


def worker_bundle(rcfg: RuntimeConfig, num_workers: int) -> tuple[dict, Optional[str]]:
    """The resources of one worker's bundle, and a line to say when the workers share CPUs.

    ``cpus_per_worker`` 0 (automatic) means one CPU each, or, when the cluster cannot give every
    worker a CPU and no autoscaler can add one (a 2-CPU laptop running a nested run with
    ``--inner-actor``), an equal share of its CPUs (``ray.cluster_resources``), rounded down to
    a hundredth. ``gpus_per_worker`` -1 means one GPU each if the cluster can give every worker
    one, else none."""
    nodes, total = alive_nodes(), ray.cluster_resources()
    cpus, note = requested_cpus(rcfg), None
    one_each = [{"CPU": cpus}] * num_workers
    if rcfg.cpus_per_worker <= 0 and placement_problem(one_each, rcfg.spread, nodes, total) and not autoscaling(rcfg):
        share = cpu_share(num_workers, rcfg.spread, nodes, total)
        if share > 0:
            cpus = share
            note = (f"{num_workers} workers share the cluster's {total.get('CPU', 0.0):g} CPU(s): {share:g} CPU each, "
                    "one torch thread each (--cpus-per-worker N to choose)")
    gpus = rcfg.gpus_per_worker
    if gpus < 0:
        with_gpu = {"CPU": cpus, "GPU": 1.0}
        gpus = 1.0 if placement_problem([with_gpu] * num_workers, rcfg.spread, nodes, total) is None else 0.0
    bundle = {"CPU": cpus}
    if gpus > 0:
        bundle["GPU"] = float(gpus)
    return bundle, note


READONLY_NODE_TYPE = "node_"  # Ray's read-only "autoscaler" names each node type node_<node id>


def cluster_node_types() -> set[str]:
    """Run on the cluster (a task): the node type of every node, as its autoscaler knows them.

    Every Ray cluster runs an autoscaler monitor; without a cluster config (``ray start``,
    ``ray.init``, ``ray.cluster_utils.Cluster``) it is read-only and names each node's type
    ``node_<node id>``, while the autoscaler of a ``ray up`` or KubeRay cluster uses its
    configuration's node types (``ray.head.default``, a worker group). Ray 2.60 keeps no
    maximum cluster size that a driver could read (``get_max_resources_from_cluster_config``,
    which Ray Train asks, is None on all three), so the node types are what tells them apart.
    Autoscaler v1 reports them in the GCS key ``__autoscaling_status``, v2 through its SDK.
    """
    from ray.experimental.internal_kv import _internal_kv_get

    types: set = set()
    raw = _internal_kv_get("__autoscaling_status")
    if raw:
        report = json.loads(raw).get("autoscaler_report") or {}
        types |= set((report.get("node_type_mapping") or {}).values())
    try:
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(ray.get_runtime_context().gcs_address)
        types |= {n.ray_node_type_name for n in status.active_nodes + status.idle_nodes}
    except Exception:  # noqa: BLE001 - a v1 cluster may not answer the v2 SDK
        pass
    return {t for t in types if t}


def configured_node_types(types: set) -> bool:
    """Whether node types come from a cluster configuration (an autoscaler that can add nodes)."""
    return any(not t.startswith(READONLY_NODE_TYPE) for t in types)


def autoscaler_running() -> bool:
    """Whether the connected cluster has an autoscaler with a node configuration (``ray up``,
    KubeRay), asked of the cluster itself through Ray (:func:`cluster_node_types`, in a task
    of no CPUs): right from a driver on any node, through Ray Client, and for a foreign Ray on
    the same machine alike."""
    try:
        task = ray.remote(num_cpus=0, max_retries=0)(cluster_node_types)
        return configured_node_types(ray.get(task.remote(), timeout=60))
    except Exception:  # noqa: BLE001 - no answer: treat the cluster as fixed (fail fast, not wait 15 min)
        return False


def autoscaling(rcfg: RuntimeConfig) -> bool:
    """Whether the connected cluster's autoscaler can add the nodes a request needs:
    ``runtime.autoscaling`` always/never, or on "auto" what the cluster says of itself
    (:func:`autoscaler_running`; asked once per connection)."""
    if rcfg.autoscaling != "auto":
        return rcfg.autoscaling == "always"
    key = ray.get_runtime_context().gcs_address
    if key not in _AUTOSCALER_SEEN:
        _AUTOSCALER_SEEN[key] = autoscaler_running()
    return _AUTOSCALER_SEEN[key]


_AUTOSCALER_SEEN: dict = {}  # GCS address -> autoscaler_running(), for the life of this process


def wait_timeout(rcfg: RuntimeConfig) -> float:
    """How long to wait for resources: for an autoscaler to add nodes, or for busy ones."""
    return rcfg.scale_timeout_s if autoscaling(rcfg) else rcfg.placement_timeout_s


def create_placement_group(bundles: list[dict], rcfg: RuntimeConfig,
                           echo: Optional[Callable[[str], None]] = None, every_s: float = 30.0) -> PlacementGroup:
    """A ready placement group for ``bundles``, or a one-line :class:`PlacementError` (never a hang).

    Bundles the cluster can never hold fail at once, unless an autoscaler can add nodes: then
    it is asked for them (``ray.autoscaler.sdk.request_resources``) and the wait, up to
    ``runtime.scale_timeout_s``, says every ``every_s`` seconds what it is waiting for.
    """
    say = echo or (lambda msg: None)
    problem = placement_problem(bundles, rcfg.spread, alive_nodes(), ray.cluster_resources())
    # Whether an autoscaler can add nodes is asked only when it matters (it costs a task): when
    # the cluster cannot hold the bundles, or when they are not placed at once.
    scaling = autoscaling(rcfg) if problem else None
    if problem and not scaling:
        raise PlacementError(problem)
    what = f"{len(bundles)} x {format_resources(bundles[0])}"
    timeout_s = rcfg.scale_timeout_s if scaling else rcfg.placement_timeout_s
    from ray.autoscaler.sdk import request_resources

    if problem:
        say(f"[cot-ray] {problem.split(':')[0]}: asking the autoscaler for {what} and waiting up to "
            f"{timeout_s:g}s")
        request_resources(bundles=bundles)
    pg, ready = None, False
    try:
        pg = placement_group(bundles, strategy="STRICT_SPREAD" if rcfg.spread else "PACK")
        start = time.monotonic()
        while not ready:
            left = timeout_s - (time.monotonic() - start)
            if left <= 0:
                break
            ready = pg.wait(timeout_seconds=min(every_s, left))
            if not ready and scaling is None:  # busy: an autoscaler may add nodes meanwhile
                scaling = autoscaling(rcfg)
                timeout_s = rcfg.scale_timeout_s if scaling else rcfg.placement_timeout_s
            if not ready and time.monotonic() - start < timeout_s:
                say(f"[cot-ray] still waiting for {what} ({time.monotonic() - start:.0f}s of {timeout_s:g}s"
                    + ("; `ray status` shows what the autoscaler is doing)" if scaling else ")"))
    finally:
        # Whatever ends the wait (ready, the timeout, an error, Ctrl-C, `ray job stop`): no request
        # stays standing, and a group that was not placed is removed, since either would keep the
        # autoscaler adding (billed) nodes for a run that is not there.
        if problem:
            request_resources(bundles=[])
        if pg is not None and not ready:
            remove_placement_group(pg)
    if not ready:
        why = ("the autoscaler did not add the nodes: check `ray status` and the cluster's node types, or raise "
               "runtime.scale_timeout_s") if scaling else (
            "the resources are busy with other work; free them or raise runtime.placement_timeout_s")
        raise PlacementError(f"the workers ({what}) could not be placed within {timeout_s:g}s: {why}")
    return pg


def given_bundle(pg: PlacementGroup, offset: int, num_workers: int) -> dict:
    """The worker bundle of a placement group made by someone else (a Tune trial's): bundles
    ``offset`` .. ``offset + num_workers - 1`` must exist, one per worker, all alike."""
    specs = [dict(b) for b in pg.bundle_specs[offset:offset + num_workers]]
    if len(specs) < num_workers or any(b != specs[0] for b in specs):
        raise PlacementError(f"the given placement group has {len(pg.bundle_specs)} bundle(s) "
                             f"{pg.bundle_specs}, not {num_workers} equal worker bundles from bundle {offset}: "
                             "request one bundle per worker (runtime.learner_names)")
    return specs[0]
