"""The distributed runtime: the generator and the mediator as Ray actors.

The learners of :mod:`cot_ray.learners` become actors here, at the call site and as they are
(``ray.remote(GeneratorLearner).options(...)``), and :class:`ActorGroup` is the learner group
(:mod:`cot_ray.group`) whose calls are remote: the schedule and the Trainer run unchanged on it.
Object refs go from actor to actor: G's sample batches reach M as refs, and M's weights (CPU
tensors, through the object store) reach G every ``cot.sync_every`` mediator updates; G then
computes log pi_M with its local copy of M. No per-step full-vocabulary tensor crosses between
processes. With the sync schedule N iterations through the actors give bitwise the parameters
of N in-process iterations on the CPU; the async pipeline is as deterministic.

Nested CoT
    The mediator's inner mediators (``--nested``) live inside the mediator's actor, unless
    ``runtime.inner_actor`` gives them a third actor (a ``InnerMediatorLearner`` of level 1, with the
    levels below it in its process) and bundle; the mediator is then built with an
    :class:`InnerHandle` to it, sending its own samples and the mixture batch and receiving the
    inner weights, with the same numbers as in one process.

Placement and devices
    All actors live in one placement group, one bundle each (:mod:`cot_ray.placement`); in a
    Tune trial they take bundles 1..n of the trial's own group instead
    (``ActorRuntime(placement=...)``). Each actor's process is set up before its learner is
    built (:func:`prepare_process`: its torch threads, glibc's malloc) and takes its device from
    what Ray gave it: ``cuda:0`` (its own GPU, through CUDA_VISIBLE_DEVICES) when it holds a
    GPU, the CPU otherwise; a GPU that torch cannot use stops the run (:class:`DeviceError`).

Faults
    Actors restart up to ``runtime.max_restarts`` times, never retrying a task (a retried step on
    a fresh actor would silently diverge); a restarted actor reruns only the learner's cheap
    constructor. When a worker process dies mid-run, the Trainer is told so by
    :func:`cot_ray.faults.is_worker_failure`, :meth:`ActorRuntime.recover` waits until every actor answers
    again and builds the learner of a restarted one, and the Trainer loads its last checkpoint
    (kept in memory) into them, so the run finishes every requested iteration and loses at most
    one checkpoint interval of work.

This module, :mod:`cot_ray.placement`, :mod:`cot_ray.faults` (what a failure means),
:mod:`cot_ray.connection` (where the driver runs) and the sweeps are the ones that import Ray;
the CLI imports them lazily.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Optional

import ray
import ray.exceptions
import torch
from ray.util.placement_group import PlacementGroup, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from .config import Config, RuntimeConfig, learned_mediator
from .connection import cluster_address, connect, local_ray_lost
from .data import Dataset, load_dataset
from .errors import ConfigError
from .faults import WorkerLostError, actor_gone, input_error, is_worker_failure
from .group import LearnerGroup
from .learners import (
    GeneratorLearner,
    InnerMediatorLearner,
    MediatorLearner,
)
from .loop import EvalHook, run_trainer
from .machine import configure_process, resolve_threads
from .metrics import Evaluator
from .placement import (
    create_placement_group,
    given_bundle,
    wait_timeout,
    worker_bundle,
    worker_threads,
)
from .rundir import open_run
from .stopping import StopRequest


class DeviceError(ConfigError):
    """A worker was given a GPU that torch cannot use: the message is one line with the fix."""


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
    configure_process(max(1, int(num_threads)))
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


def _where(learner) -> dict:
    """Run in an actor's process: node, assigned GPU ids, torch device, threads, process id."""
    return {"node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
            "device": learner.device_name(), "threads": torch.get_num_threads(), "pid": os.getpid()}


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


LEARNER_CLASSES = {"generator": GeneratorLearner, "mediator": MediatorLearner, "inner": InnerMediatorLearner}


def learner_names(cfg: Config) -> list[str]:
    """The actors a run of ``cfg`` needs, in placement-bundle order (one bundle each)."""
    if not learned_mediator(cfg):
        return ["generator"]
    return ["generator", "mediator"] + (["inner"] if cfg.nested.enabled and cfg.runtime.inner_actor else [])


# ----------------------------------------------------------------------------- the runtime


class ActorGroup(LearnerGroup):
    """The learner group on Ray actors: :meth:`call` submits the learner method on the actor and
    returns its object ref, :meth:`get` fetches refs; recovery and evaluation in the
    generator's process come from the :class:`ActorRuntime` that made the actors."""

    def __init__(self, runtime: "ActorRuntime", cfg: Config, vocab_size: int, where: str, in_generator: bool):
        super().__init__(cfg, vocab_size, runtime.actors["generator"], runtime.actors.get("mediator"), where)
        self.runtime = runtime
        self.in_generator = in_generator  # evaluate in the generator's process (its GPU)

    def call(self, actor, method, *args):
        return getattr(actor, method.__name__).remote(*args)

    def get(self, x: Any) -> Any:
        """``ray.get`` that lets plain values through, and raises a learner's own input error (a
        checkpoint that cannot be resumed here) as the one line it is. A list may mix object
        refs and values (schedules add plain stats, restored pipelines hold values); the refs
        are fetched in one ``ray.get`` and the values kept in place."""
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

    def discard(self, futures: list, timeout_s: float = 30.0) -> None:
        """Wait for refs that a failure made void and drop their errors, so that Ray does not
        print them as unhandled tracebacks (the run already said, in one line, that it recovers)."""
        refs = [x for x in futures if isinstance(x, ray.ObjectRef)]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        for ref in refs:
            try:
                ray.get(ref, timeout=0)
            except Exception:  # noqa: BLE001 - the failure is being recovered from; its details are in Ray's logs
                pass

    def is_failure(self, exc: BaseException) -> bool:
        return is_worker_failure(exc)

    def recover(self) -> None:
        self.runtime.recover()

    def evaluate(self, evaluator: Evaluator, seed: int) -> dict:
        if not self.in_generator:
            return super().evaluate(evaluator, seed)
        return self.runtime.evaluate_in_generator(evaluator, seed)


class ActorRuntime:
    """G and M (and with ``--inner-actor`` the inner mediators) as actors in one placement group
    of the connected Ray cluster.

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

    def make_learners(self, cfg: Config, data: Dataset) -> ActorGroup:
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
        return ActorGroup(self, cfg, data.vocab_size, text, in_generator)

    def evaluate_in_generator(self, evaluator: Evaluator, seed: int) -> dict:
        """Evaluate in the generator's process, on its device: the evaluator (test set, oracle)
        is sent once; M's weights go from the mediator's actor straight to the generator's."""
        if self._evaluator_ref is None or self._evaluator_ref[0] is not evaluator:
            self._evaluator_ref = (evaluator, ray.put(evaluator))
        m = self.actors.get("mediator")
        m_weights = m.get_weights.remote() if m is not None else None
        return ray.get(self.actors["generator"].evaluate.remote(self._evaluator_ref[1], m_weights, seed))

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
            self.recover()
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
        if name == "inner":  # level 1 with the levels below it
            return actor.build_here.remote(device)
        if name == "mediator" and "inner" in self.actors:
            return actor.build.remote(device, self.train_ref, InnerHandle(self.actors["inner"]))
        if name == "mediator":  # the inner mediators, if any, in the mediator's own process
            return actor.build_here.remote(device, self.train_ref)
        return actor.build.remote(device, self.train_ref)

    def recover(self) -> None:
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


def train(cfg: Config, resume_dir: Optional[str] = None, echo: Optional[Callable[[str], None]] = None,
          on_eval: Optional[EvalHook] = None, placement: Optional[PlacementGroup] = None,
          bundle_offset: int = 0, stop: Optional[StopRequest] = None) -> dict:
    """Run (or resume) training as ``cfg.runtime`` says; -> the summary of :func:`cot_ray.loop.run_trainer`.

    ``runtime.mode`` "local" runs both learners in this process without Ray (the async
    schedule then runs its pipeline sequentially, with the same results); "actors" connects to
    Ray (:func:`connect`), runs the learners as actors and cleans up after itself. The data
    and the thread count are settled before Ray starts (bad input fails in a second, not after
    Ray's start-up, and Ray's own start does not count as other work).
    ``on_eval`` is the Trainer's hook after each evaluation; ``placement``/``bundle_offset``
    put the workers into an existing placement group (see :class:`ActorRuntime`); ``stop``: see
    :func:`cot_ray.loop.run_trainer`. Like it, this changes neither ``cfg`` nor this process's
    state (the actors' processes are set up by the runtime, in them).
    """
    if cfg.runtime.mode == "local":
        return run_trainer(cfg, resume_dir, echo, on_eval=on_eval, stop=stop)
    say = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
    data = load_dataset(cfg.data)
    cfg, note = resolve_threads(cfg)
    with open_run(cfg, resume_dir) as claim:  # a run directory in use is refused before Ray starts
        if not ray.is_initialized():
            address = cluster_address(cfg.runtime)
            say("[cot-ray] starting a local Ray (listening on 127.0.0.1 only)..." if not address else
                f"[cot-ray] joining the Ray cluster at {address}"
                + (" ($RAY_ADDRESS)" if not cfg.runtime.address else "") + "...")
        started = connect(cfg.runtime)
        rt = ActorRuntime(cfg.runtime, say, placement=placement, bundle_offset=bundle_offset)
        try:
            return run_trainer(cfg, resume_dir, echo, make_learners=rt.make_learners, on_eval=on_eval,
                               data=data, threads_note=note, claim=claim, stop=stop)
        finally:
            if not (started and local_ray_lost()):  # else there is no Ray left to ask
                rt.shutdown()
            if started:
                ray.shutdown()
