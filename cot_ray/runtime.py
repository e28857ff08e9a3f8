"""The distributed runtime: the generator and the mediator as Ray actors.

The learners of :mod:`cot_ray.learners` become actors here, at the call site and as they are
(``ray.remote(GeneratorLearner).options(...)``), and the schedules of :mod:`cot_ray.schedule`
drive them through ``Learners(call_fn=<.remote call>, get_fn=ray.get)``. Object refs go from actor to actor: G's
sample batches reach M as refs, and M's weights (CPU tensors, through the object store) reach G
every ``cot.sync_every`` mediator updates; G then computes log pi_M with its local copy of M.
No per-step full-vocabulary tensor crosses between processes.

Schedules
    ``sync`` is :func:`cot_ray.schedule.schedule_iteration`, the in-process loop itself, so with
    the same seed N iterations through the actors give bitwise the parameters of N in-process
    iterations on the CPU. ``async`` is :class:`~cot_ray.schedule.PipelineSchedule`, a fixed pipeline in which G
    and M work on different iterations at once, with staleness exactly K (see there); it is as
    deterministic as the sync schedule, and ``--local --schedule async`` runs the same pipeline
    in one process with the same results.

Nested CoT
    The mediator's inner mediators (``--nested``) live inside the mediator's actor, unless
    ``runtime.inner_actor`` gives them a third actor (a ``MixtureLearner`` of level 1, with the
    levels below it in its process) and bundle; the mediator is then built with an
    :class:`InnerHandle` to it, sending its own samples and the mixture batch and receiving the
    inner weights, with the same numbers as in one process.

Placement
    All actors live in one placement group, one bundle each (``runtime.cpus_per_worker`` CPUs,
    ``runtime.gpus_per_worker`` GPUs), packed by default or on different nodes with
    ``runtime.spread`` (STRICT_SPREAD); in a Tune trial they take bundles 1..n of the trial's
    own group instead (``ActorRuntime(placement=...)``). Requests the cluster cannot meet fail
    at once with a one-line :class:`PlacementError`; requests that could be met but are not within
    ``runtime.placement_timeout_s`` (resources busy) fail after that time. Each actor's process
    is set up before its learner is built (:func:`prepare_process`: ``cpus_per_worker`` torch
    threads, glibc's malloc) and takes its device from what Ray gave it: ``cuda:0`` (its own
    GPU, through CUDA_VISIBLE_DEVICES) when it holds a GPU and CUDA works, else the CPU.

Faults
    Actors restart up to ``runtime.max_restarts`` times, never retrying a task (a retried step on
    a fresh actor would silently diverge); a restarted actor reruns only the learner's cheap
    constructor. When a worker process dies mid-run, the Trainer is told so by
    :func:`is_worker_failure`, :meth:`ActorRuntime.recover` waits until every actor answers
    again and builds the learner of a restarted one, and the Trainer loads its last checkpoint
    (kept in memory) into them, so the run finishes every requested iteration and loses at most
    one checkpoint interval of work.

This is the only module besides ``tune`` that imports Ray; the CLI imports it lazily.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Any, Callable, Optional

import ray
import ray.exceptions
import torch
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from . import loop
from .checkpoint import CheckpointError
from .config import Config, ConfigError, RuntimeConfig
from .data import Dataset, load_dataset
from .learners import GeneratorLearner, LearnerNotBuiltError, MediatorLearner, MixtureLearner, build_inner
from .machine import cpu_count
from .schedule import make_schedule


class PlacementError(ConfigError):
    """The cluster cannot host the workers as configured: the message is one line with the fix."""


class DeviceError(ConfigError):
    """A worker was given a GPU that torch cannot use: the message is one line with the fix."""


class WorkerLostError(RuntimeError):
    """A worker died and did not come back (no restarts left, or it never answered again)."""


# ----------------------------------------------------------------------------- the actors


def nvidia_driver() -> str:
    """The NVIDIA kernel driver's version on this node, or "none found"."""
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as f:
            words = f.readline().split()
    except OSError:
        return "none found"
    return next((w for w in words if w[:1].isdigit() and "." in w), "unknown")


def prepare_process(learner, num_threads: int) -> dict:
    """Run in an actor's process (``actor.__ray_call__``) before its learner is built: set the
    process-wide settings and pick the torch device from the resources Ray gave the actor;
    -> {"device": ..., "problem": None or why the GPU it holds cannot be used}.

    Ray points CUDA_VISIBLE_DEVICES at the actor's own GPUs, so its first GPU is ``cuda:0``.
    A GPU that Ray assigned but torch cannot use (a driver older than the torch wheel's CUDA
    needs, a CPU-only torch) is a problem the run stops on: training on the CPU of a paid GPU
    node would be tens of times slower, without a word.
    """
    loop.configure_process(max(1, int(num_threads)))
    # What Ray gave the actor (the GPU ids it would see can be fewer, e.g. CUDA_VISIBLE_DEVICES="")
    gpus = ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0)
    if not gpus:
        return {"device": "cpu", "problem": None}
    if torch.cuda.is_available():
        return {"device": "cuda:0", "problem": None}
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA (a CPU-only build)"
    return {"device": "cpu", "problem": (
        f"holds {gpus:g} GPU on node {ray.util.get_node_ip_address()} but torch cannot use it "
        f"(torch {torch.__version__} with {build}, NVIDIA driver {nvidia_driver()}, "
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}): install the torch build for that "
        "driver on the node, or train on CPUs with --gpus-per-worker 0")}


def _build_inner_here(learner, device: str) -> None:
    """Run in the inner actor's process: build its level-1 learner with the levels below it."""
    c = learner
    learner.build(device, build_inner(c.cfg, c.vocab_size, c.seq_len, c.eos_id, device, level=2))


def _build_mediator_here(learner, device: str, train: torch.Tensor) -> None:
    """Run in the mediator's process: build M with its inner mediators (nested CoT) beside it,
    in the same process and on the same device, every level of them."""
    c = learner
    learner.build(device, train, build_inner(c.cfg, c.vocab_size, c.seq_len, c.eos_id, device, level=1))


def _evaluate_here(learner, evaluator, m_weights: Optional[dict], seed: int) -> dict:
    """Run in the generator's process: evaluate its model (and M with ``m_weights``) on its device."""
    g = learner.model
    m = None
    if m_weights is not None:
        m = loop.model_from_weights(learner.vocab_size, learner.cfg.mediator, m_weights, str(learner.device))
    return evaluator.to(learner.device).evaluate(g, m, seed)


def _where(learner) -> dict:
    """Run in an actor's process: node, assigned GPU ids, torch device, threads, process id."""
    return {"node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
            "device": str(getattr(learner, "device", "")), "threads": torch.get_num_threads(), "pid": os.getpid()}


class InnerHandle:
    """The mediator's view of the inner actor: the four calls of a local inner learner, each a
    blocking call to the actor (samples go as arguments, weights come back)."""

    def __init__(self, actor):
        self.actor = actor

    def fit(self, groups: list) -> dict:
        # CPU tensors between processes: the inner actor may sit on another GPU or node.
        return ray.get(self.actor.fit.remote([(x.cpu(), w) for x, w in groups]))

    def get_weights(self) -> dict:
        return ray.get(self.actor.get_weights.remote())

    def state(self) -> dict:
        return ray.get(self.actor.state.remote())

    def load_state(self, state: dict) -> None:
        ray.get(self.actor.load_state.remote(state))


LEARNER_CLASSES = {"generator": GeneratorLearner, "mediator": MediatorLearner, "inner": MixtureLearner}


def learner_names(cfg: Config) -> list[str]:
    """The actors a run of ``cfg`` needs, in placement-bundle order (one bundle each)."""
    if cfg.cot.algo == "mle":
        return ["generator"]
    return ["generator", "mediator"] + (["inner"] if cfg.nested.enabled and cfg.runtime.inner_actor else [])


def remote_call(actor, method: str, *args):
    """``Learners.call_fn`` for actors: submit ``actor.method(*args)``; -> an object ref."""
    return getattr(actor, method).remote(*args)


def root_cause(exc: BaseException) -> BaseException:
    """What was raised first, under the task errors that carried it from actor to actor to here
    (a task fails when its argument, another task's result, failed)."""
    seen = 0
    while isinstance(exc, ray.exceptions.RayTaskError) and seen < 8:
        cause = getattr(exc, "cause", None)
        if cause is None or cause is exc:
            break
        exc, seen = cause, seen + 1
    return exc


def input_error(exc: BaseException) -> Optional[BaseException]:
    """The project's own one-line input error (a :class:`ConfigError` or :class:`CheckpointError`)
    that a learner raised in its actor, or None."""
    cause = root_cause(exc)
    return cause if isinstance(cause, (ConfigError, CheckpointError)) else None


def ray_get(x: Any) -> Any:
    """``Learners.get_fn`` for actors: ``ray.get`` that lets plain values through, and raises a
    learner's own input error (a checkpoint that cannot be resumed here) as the one line it is.

    A list may mix object refs and values (schedules add plain stats, restored pipelines hold
    values); the refs are fetched in one ``ray.get`` and the values kept in place.
    """
    try:
        if isinstance(x, ray.ObjectRef):
            return ray.get(x)
        if isinstance(x, list):
            idx = [i for i, v in enumerate(x) if isinstance(v, ray.ObjectRef)]
            out = list(x)
            for i, v in zip(idx, ray.get([x[i] for i in idx]) if idx else []):
                out[i] = v
            return out
    except ray.exceptions.RayTaskError as exc:
        own = input_error(exc)
        if own is None:
            raise
        raise own from None
    return x


def discard(futures: list, timeout_s: float = 30.0) -> None:
    """``Learners.discard`` for actors: wait for refs that a failure made void and drop their
    errors, so that Ray does not print them as unhandled tracebacks (the run already said, in
    one line, that it recovers)."""
    refs = [x for x in futures if isinstance(x, ray.ObjectRef)]
    if refs:
        ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    for ref in refs:
        try:
            ray.get(ref, timeout=0)
        except Exception:  # noqa: BLE001 - the failure is being recovered from; its details are in Ray's logs
            pass


def actor_gone(actor) -> bool:
    """Whether Ray has given up on an actor (no restarts left), by its state in Ray's control
    store (GCS): the kind of error does not say so, since a process lost during a task can raise
    ``ActorDiedError`` while the actor still restarts. ``ray.util.state`` would need the
    dashboard, which a local Ray runs without; where the state cannot be read (Ray Client), an
    ``ActorDiedError`` is taken at its word."""
    try:
        from ray._private.state import actors

        state = actors(actor._actor_id.hex()).get("State")
    except Exception:  # noqa: BLE001 - no control store to ask
        try:
            ray.get(actor.is_built.remote(), timeout=5)
            return False
        except ray.exceptions.ActorDiedError:
            return True
        except Exception:  # noqa: BLE001 - restarting, or slow
            return False
    return state == "DEAD"


_FAILURES = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, ray.exceptions.WorkerCrashedError,
             ray.exceptions.NodeDiedError, LearnerNotBuiltError)


def is_worker_failure(exc: BaseException) -> bool:
    """Whether ``exc`` means a worker process (or its node, or its results) was lost.

    An ordinary exception raised inside a learner (a bug, bad input) is not a failure: it
    propagates instead of being retried from a checkpoint.
    """
    return isinstance(root_cause(exc), _FAILURES)


# ----------------------------------------------------------------------------- placement


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
    import json

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


# ----------------------------------------------------------------------------- the runtime


class ActorRuntime:
    """G and M as actors in one placement group of the connected Ray cluster.

    ``make_learners`` is the ``make_learners`` argument of :func:`cot_ray.loop.run_trainer`;
    ``shutdown`` kills the actors and frees their placement group.
    """

    def __init__(self, rcfg: RuntimeConfig, echo: Optional[Callable[[str], None]] = None,
                 placement: Optional[PlacementGroup] = None, bundle_offset: int = 0):
        """``placement``: an existing, ready placement group (a Tune trial's) whose bundles
        ``bundle_offset``, ``bundle_offset + 1``, ... host the actors, one each; it is
        neither created nor removed here. None: the runtime makes (and frees) its own."""
        self.rcfg = rcfg
        self.echo = echo
        self.given_pg = placement
        self.bundle_offset = bundle_offset if placement is not None else 0
        self.pg: Optional[PlacementGroup] = None
        self.actors: dict = {}
        self.train_ref: Optional[ray.ObjectRef] = None
        self._evaluator_ref: Optional[tuple] = None  # (evaluator, its object ref)
        self.bundle: dict = {}  # one worker's resources, set by make_learners

    def make_learners(self, cfg: Config, data: Dataset) -> loop.Learners:
        r = self.rcfg
        names = learner_names(cfg)
        if self.given_pg is None:
            bundle, shared = worker_bundle(r, len(names))
            if shared and self.echo is not None:
                self.echo(f"[cot-ray] {shared}")
            self.pg = create_placement_group([bundle] * len(names), r, self.echo)
        else:
            self.pg = self.given_pg
            bundle = given_bundle(self.pg, self.bundle_offset, len(names))
        self.bundle = bundle
        self.train_ref = ray.put(data.train)  # held here, so a restarted actor can get it again
        args = (cfg, data.vocab_size, data.seq_len, data.eos_id)
        for i, name in enumerate(names):
            self.actors[name] = ray.remote(LEARNER_CLASSES[name]).options(
                num_cpus=bundle["CPU"], num_gpus=bundle.get("GPU", 0.0),
                max_restarts=r.max_restarts, max_task_retries=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.pg, placement_group_bundle_index=self.bundle_offset + i),
            ).remote(*args, **({"level": 1} if name == "inner" else {}))
        where = self._start_all(names)
        levels = cfg.nested.depth if cfg.nested.enabled else 0
        inner = {"mediator": levels if "inner" not in names else 0, "inner": levels - 1}  # inner levels beside it
        text = "workers: " + ", ".join(
            f"{n} on {p['device']} ({p['threads']} thread(s), node {p['node_id'][:8]}"
            + (f", GPU {','.join(p['gpu_ids'])}" if p["gpu_ids"] else "") + ")"
            + (f" with {inner[n]} inner mediator(s) in its process" if inner.get(n, 0) > 0 else "")
            for n, p in where.items()) \
            + f" ({'spread' if self.rcfg.spread else 'packed'}, {cfg.runtime.schedule} schedule" \
            + (f", staleness {cfg.runtime.staleness}" if cfg.runtime.schedule == "async" else "") + ")"
        in_generator = cfg.eval.where == "generator" or (
            cfg.eval.where == "auto" and where["generator"]["device"].startswith("cuda"))
        text += "; evaluation in the " + ("generator's process" if in_generator else "driver")
        return loop.Learners(self.actors["generator"], self.actors.get("mediator"), call_fn=remote_call,
                             get_fn=ray_get, schedule=make_schedule(cfg), is_failure=is_worker_failure,
                             recover=self.recover, evaluate=self.evaluate_in_generator if in_generator else None,
                             discard=discard, where=text)

    def evaluate_in_generator(self, evaluator, seed: int) -> dict:
        """Evaluate in the generator's process, on its device: the evaluator (test set, oracle)
        is sent once; M's weights go from the mediator's actor straight to the generator's."""
        if self._evaluator_ref is None or self._evaluator_ref[0] is not evaluator:
            self._evaluator_ref = (evaluator, ray.put(evaluator))
        m = self.actors.get("mediator")
        m_weights = m.get_weights.remote() if m is not None else None
        return ray.get(self.actors["generator"].__ray_call__.remote(
            _evaluate_here, self._evaluator_ref[1], m_weights, seed))

    def _start_all(self, names: list) -> dict:
        """Build every learner (fail here, not mid-run); -> where each actor is. An actor lost
        meanwhile (a node lost at start-up) is waited for and built again, until it has no
        restarts left."""
        try:
            ray.get([self._build(name) for name in names])
            return self.placements()
        except Exception as exc:  # noqa: BLE001 - re-raised unless a worker was lost
            if not is_worker_failure(exc):
                raise
        while True:
            if self.echo is not None:
                self.echo("[cot-ray] a worker was lost while starting: starting it again")
            self.recover(None)
            try:
                return self.placements()
            except Exception as exc:  # noqa: BLE001 - as above
                if not is_worker_failure(exc):
                    raise

    def _build(self, name: str) -> ray.ObjectRef:
        """Set up the actor's process, then build its learner there (fresh, from the run's seed)."""
        actor = self.actors[name]
        prepared = ray.get(actor.__ray_call__.remote(prepare_process, worker_threads(self.bundle)))
        if prepared["problem"]:
            raise DeviceError(f"the {name} worker {prepared['problem']}")
        device = prepared["device"]
        if name == "inner":
            return actor.__ray_call__.remote(_build_inner_here, device)
        if name == "mediator" and "inner" in self.actors:
            return actor.build.remote(device, self.train_ref, InnerHandle(self.actors["inner"]))
        if name == "mediator":  # the inner mediators, if any, in the mediator's own process
            return actor.__ray_call__.remote(_build_mediator_here, device, self.train_ref)
        return actor.build.remote(device, self.train_ref)

    def recover(self, w: Optional[loop.Learners]) -> None:
        """Wait until every actor answers again (Ray restarts a dead one) and build the learner
        of a restarted one, as often as actors are lost meanwhile; raise WorkerLostError if one
        stays dead. The Trainer then loads the last checkpoint into them."""
        timeout_s = wait_timeout(self.rcfg)  # a lost node may need the autoscaler to replace it
        deadline = time.monotonic() + timeout_s
        pending = list(self.actors)
        while pending:
            name = pending[0]
            try:
                built = ray.get(self.actors[name].is_built.remote(), timeout=max(deadline - time.monotonic(), 0.1))
                if not built:
                    ray.get(self._build(name))
                pending.pop(0)
            except ray.exceptions.GetTimeoutError:
                raise WorkerLostError(f"the {name} worker did not come back within "
                                      f"{timeout_s:g}s after a failure") from None
            except Exception as exc:  # noqa: BLE001 - unavailable (restarting), or lost again: ask again
                if not is_worker_failure(exc):
                    raise
                if actor_gone(self.actors[name]):  # its state decides, not the kind of error
                    raise WorkerLostError(
                        f"the {name} worker died and has no restarts left (runtime.max_restarts="
                        f"{self.rcfg.max_restarts}): raise it, or look for the cause in the Ray logs") from None
                if time.monotonic() > deadline:
                    raise WorkerLostError(f"the {name} worker did not come back within "
                                          f"{timeout_s:g}s after a failure") from None
                time.sleep(0.2)
                pending = list(self.actors)  # a lost actor may be one already checked: check all again

    def placements(self) -> dict:
        """name -> where each actor is (node, GPU ids, device, threads, process id)."""
        names = list(self.actors)
        return dict(zip(names, ray.get([self.actors[n].__ray_call__.remote(_where) for n in names])))

    def shutdown(self) -> None:
        for actor in self.actors.values():
            ray.kill(actor, no_restart=True)
        self.actors = {}
        self.train_ref = None
        if self.pg is not None and self.given_pg is None:
            remove_placement_group(self.pg)
        self.pg = None


def cluster_address(rcfg: RuntimeConfig) -> str:
    """Ray's convention for where to run: ``runtime.address`` (``--address``), else
    $RAY_ADDRESS (``ray job submit`` sets it for the job's driver), else "" (a private local Ray)."""
    return rcfg.address or os.environ.get("RAY_ADDRESS", "")


def connect(rcfg: RuntimeConfig, min_cpus: float = 0.0) -> bool:
    """Connect to Ray as :func:`cluster_address` says; -> whether this call started a local Ray.

    An already connected driver (tests, notebooks) is used as it is. "" starts a private local
    Ray in this process (never joining another cluster by accident), with at least ``min_cpus``
    logical CPUs (a sweep asks for one trial's worth, so that it runs even on a 2-core machine),
    and keeps Ray quiet. "auto" joins the cluster of this machine; "HOST:PORT" a cluster's
    head; "ray://HOST:PORT" joins through Ray Client, shipping this package to the cluster.
    When joining a cluster, Ray's warnings and the workers' output (tracebacks, the
    autoscaler's progress, "waiting for resources") reach the driver's log (``ray job logs``).
    """
    if ray.is_initialized():
        return False
    address = cluster_address(rcfg)
    if not address:
        cpus = cpu_count()  # this process's CPUs: its affinity mask and its container's CPU quota
        # Ray runs its workers at niceness 15 by default; here the workers are the training
        # itself, so they get the priority that the in-process loop would have.
        ray.init(address="local", include_dashboard=False, _system_config={"worker_niceness": 0},
                 num_cpus=max(cpus, int(math.ceil(min_cpus))), log_to_driver=False, logging_level=logging.ERROR,
                 configure_logging=True)
        return True
    import cot_ray  # the package itself, for Ray Client's py_modules

    runtime_env = {"py_modules": [cot_ray]} if address.startswith("ray://") else None
    try:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True, logging_level=logging.WARNING,
                 configure_logging=True)
    except ConnectionError as e:
        source = "config key 'runtime.address'" if rcfg.address else "$RAY_ADDRESS"
        raise ConfigError(f"{source} {address!r}: cannot connect to a Ray cluster "
                          f"({str(e).splitlines()[0] if str(e) else type(e).__name__}): start one (ray start "
                          "--head, ray up) or drop the address to train on a local Ray") from None
    return False


def train(cfg: Config, resume_dir: Optional[str] = None, echo: Optional[Callable[[str], None]] = None,
          on_eval: Optional[loop.EvalHook] = None, placement: Optional[PlacementGroup] = None,
          bundle_offset: int = 0) -> dict:
    """Run (or resume) training as ``cfg.runtime`` says; -> the summary of :func:`cot_ray.loop.run_trainer`.

    ``runtime.mode`` "local" runs both learners in this process without Ray (the async
    schedule then runs its pipeline sequentially, with the same results); "actors" connects to
    Ray (:func:`connect`), runs the learners as actors and cleans up after itself. The data
    and the thread count are settled before Ray starts (bad input fails in a second, not after
    Ray's start-up, and Ray's own start does not count as other work).
    ``on_eval`` is the Trainer's hook after each evaluation; ``placement``/``bundle_offset``
    put the workers into an existing placement group (see :class:`ActorRuntime`).
    """
    if cfg.runtime.mode == "local":
        return loop.run_trainer(cfg, resume_dir, echo, on_eval=on_eval)
    say = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
    data = load_dataset(cfg.data)
    note = loop.resolve_threads(cfg)
    if not ray.is_initialized():
        address = cluster_address(cfg.runtime)
        say("[cot-ray] starting a local Ray..." if not address else
            f"[cot-ray] joining the Ray cluster at {address}"
            + (" ($RAY_ADDRESS)" if not cfg.runtime.address else "") + "...")
    started = connect(cfg.runtime)
    rt = ActorRuntime(cfg.runtime, say, placement=placement, bundle_offset=bundle_offset)
    try:
        return loop.run_trainer(cfg, resume_dir, echo, make_learners=rt.make_learners, on_eval=on_eval,
                                data=data, threads_note=note)
    finally:
        rt.shutdown()
        if started:
            ray.shutdown()
