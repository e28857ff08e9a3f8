"""Where a driver runs: a private local Ray bound to loopback, a cluster's head
(``--address``, $RAY_ADDRESS) or Ray Client, with this package shipped to the cluster's workers.
Used by training (:mod:`cot_ray.runtime`) and sweeps (:mod:`cot_ray.sweep.tune`)."""

from __future__ import annotations

import json
import logging
import math
import os
from contextlib import contextmanager
from typing import Optional

import ray

from .config import RuntimeConfig
from .errors import ConfigError
from .machine import cpu_count
from .stopping import keeping_handlers


def cluster_address(rcfg: RuntimeConfig) -> str:
    """Ray's convention for where to run: ``runtime.address`` (``--address``), else
    $RAY_ADDRESS (``ray job submit`` sets it for the job's driver), else "" (a private local Ray)."""
    return rcfg.address or os.environ.get("RAY_ADDRESS", "")


def code_runtime_env() -> Optional[dict]:
    """The runtime environment a driver joining a cluster asks for, so that every worker runs
    the driver's own cot_ray (the cluster's nodes need not have it installed, and a different
    installed version never mixes with the driver's): ``py_modules`` with this package, except
    for the driver of a ``ray job submit --working-dir DIR`` whose DIR holds this package (the
    job already ships it: the driver runs in DIR's copy on the cluster). Ray merges a job's
    runtime environment with the driver's."""
    import cot_ray

    package = os.path.dirname(os.path.abspath(cot_ray.__file__))
    job = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # set by Ray for a submitted job's driver
    if job:
        try:
            working_dir = (json.loads(job).get("runtime_env") or {}).get("working_dir")
        except (ValueError, AttributeError):
            working_dir = None
        if working_dir and os.path.commonpath([package, os.getcwd()]) == os.getcwd():
            return None
    return {"py_modules": [package]}


LOOPBACK = "127.0.0.1"


@contextmanager
def _loopback_node():
    """Ray binds every server of a node (GCS, raylet, object manager, workers, the driver) to the
    node's IP address, and to loopback only when that address is 127.0.0.1; but it turns a
    requested 127.0.0.1 into the machine's network address, except where it does not support
    multi-node clusters (its constant ``ENABLE_RAY_CLUSTER``, $RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER,
    read once at import). A private local Ray has no other node: it starts as it does on macOS."""
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def local_ray_lost() -> bool:
    """Whether a process of the private local Ray this driver started has died: a stop signal
    sent to the whole process group (a terminal's Ctrl-C is not, Ray's servers ignore it; but
    systemd's or a container's stop sends SIGTERM to every process) ends Ray's GCS and raylet
    too, and asking them to remove the actors would wait a minute for a GCS that is gone."""
    node = ray._private.worker._global_node
    return node is not None and bool(node.dead_processes())


def connect(rcfg: RuntimeConfig, min_cpus: float = 0.0) -> bool:
    """Connect to Ray as :func:`cluster_address` says; -> whether this call started a local Ray.

    An already connected driver (tests, notebooks) is used as it is. "" starts a private local
    Ray in this process (never joining another cluster by accident), every server of it bound
    to 127.0.0.1 (Ray has no authentication: nothing else on the network may reach it), with at least ``min_cpus``
    logical CPUs (a sweep asks for one trial's worth, so that it runs even on a 2-core machine),
    and keeps Ray quiet. "auto" joins the cluster of this machine; "HOST:PORT" a cluster's
    head; "ray://HOST:PORT" joins through Ray Client; each ships this package to the cluster
    (:func:`code_runtime_env`). When joining a cluster, Ray's warnings and the workers' output (tracebacks, the
    autoscaler's progress, "waiting for resources") reach the driver's log (``ray job logs``).
    """
    if ray.is_initialized():
        return False
    address = cluster_address(rcfg)
    if not address:
        cpus = cpu_count()  # this process's CPUs: its affinity mask and its container's CPU quota
        # Ray runs its workers at niceness 15 by default; here the workers are the training
        # itself, so they get the priority that the in-process loop would have.
        with _loopback_node(), keeping_handlers():
            ray.init(address="local", _node_ip_address=LOOPBACK, include_dashboard=False,
                     _system_config={"worker_niceness": 0},
                     num_cpus=max(cpus, int(math.ceil(min_cpus))), log_to_driver=False, logging_level=logging.ERROR,
                     configure_logging=True)
        return True
    runtime_env = code_runtime_env()
    try:
        with keeping_handlers():
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True, logging_level=logging.WARNING,
                     configure_logging=True)
    except ConnectionError as e:
        source = "config key 'runtime.address'" if rcfg.address else "$RAY_ADDRESS"
        raise ConfigError(f"{source} {address!r}: cannot connect to a Ray cluster "
                          f"({str(e).splitlines()[0] if str(e) else type(e).__name__}): start one (ray start "
                          "--head, ray up) or drop the address to train on a local Ray") from None
    return False
