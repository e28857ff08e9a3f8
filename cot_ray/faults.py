"""What a failure in the distributed runtime means: a lost worker (its process, node or results
gone: the run recovers from its last checkpoint), the project's own one-line input error raised
in an actor (reported as it is), or anything else (a bug: it propagates). Used by the runtime
(:mod:`cot_ray.runtime`) and the sweeps' trials."""

from __future__ import annotations

from typing import Optional

import ray
import ray.exceptions

from .checkpoint import CheckpointError
from .errors import ConfigError
from .learners import LearnerNotBuiltError


class WorkerLostError(RuntimeError):
    """A worker died and did not come back (no restarts left, or it never answered again)."""


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
