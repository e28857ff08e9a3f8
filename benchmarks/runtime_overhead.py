"""Throughput of the Ray runtime against the in-process loop, at the default model sizes.

One run of this script measures, on the same machine and data:

* ``inprocess``: the single-process loop (``--local``) with ``--threads`` torch threads
  (default 1, the share of one worker, so that the sync ratio isolates the runtime's overhead);
* ``sync``: G and M as actors with the sync schedule (bitwise the in-process computation);
* ``async``: actors with the async pipeline at ``--staleness`` (G and M compute at once);

each for ``--iters`` iterations from the same seed, and reports iterations per second of
training time (evaluation excluded) and NLL_oracle after those iterations (from
``--eval-samples`` generator samples). Targets: sync >= 0.85x in-process; async >= 1.5x sync
when each worker has its own device. Prints one JSON line.

Where the sync path's time goes (``sync_breakdown``, from Ray's task timeline): the sync
schedule runs one learner method at a time, so an iteration's wall time is the sum of its
learner methods' time on the workers (``method_ms``, per iteration, each method's mean times its
calls per iteration) plus what happens outside them (``outside_ms``: submitting, shipping
arguments and results, the driver's bookkeeping); ``serialise_ms`` is the workers' part of the
shipping (arguments deserialised, results stored), which lies inside the methods' task time.

    python benchmarks/runtime_overhead.py [--iters 100] [--staleness 1] [--eval-samples 1024]
        [--cpus-per-worker 1] [--threads 1] [--seed 0] [--device cuda --gpus-per-worker 1]

On a GPU machine ``--device cuda`` runs the in-process loop on the GPU and ``--gpus-per-worker``
gives each actor that much of a GPU (1: G and M on a GPU each; 0.5: both on one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import ray

from cot_ray import connection, loop, runtime
from cot_ray.config import RuntimeConfig
from cot_ray.config_loading import load_config


def _quiet(_msg: str) -> None:
    pass


SCHEDULE_METHODS = ("sample", "step", "get_weights", "set_mediator_weights", "step_cot")


def sync_breakdown(events: list, iters: int, it_s: float) -> dict:
    """Per-iteration milliseconds of the sync path from ``ray.timeline()`` events (see above)."""
    total: dict = {}
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            total[e["name"]] = total.get(e["name"], 0.0) + e["dur"] / 1000.0  # us -> ms
    method_ms = {k: round(total.get(k, 0.0) / iters, 2) for k in SCHEDULE_METHODS}
    serialise = (total.get("task:deserialize_arguments", 0.0) + total.get("task:store_outputs", 0.0)) / iters
    return {"iteration_ms": round(1000.0 / it_s, 2), "method_ms": method_ms,
            "outside_ms": round(1000.0 / it_s - sum(method_ms.values()), 2), "serialise_ms": round(serialise, 2)}


def run(mode: str, args, logdir: str) -> dict:
    """Train ``args.iters`` iterations in ``mode`` (inprocess, sync, async); -> it/s and NLL_oracle."""
    overrides = [
        f"run.iters={args.iters}", f"run.seed={args.seed}", f"run.logdir={logdir}", f"run.name={mode}",
        "eval.every=0", f"eval.num_samples={args.eval_samples}", f"eval.num_test={args.eval_samples}",
        f"run.checkpoint_every={args.iters}", f"runtime.cpus_per_worker={args.cpus_per_worker}",
        f"runtime.staleness={args.staleness}", f"runtime.gpus_per_worker={args.gpus_per_worker}",
    ]
    if mode == "inprocess":
        cfg = load_config(None, overrides + ["runtime.mode=local", f"run.threads={args.threads}",
                                             f"run.device={args.device}"])
        summary = loop.run_trainer(cfg, echo=_quiet)
    else:
        cfg = load_config(None, overrides + [f"runtime.schedule={mode}"])
        summary = runtime.train(cfg, echo=_quiet)
    return {"it_s": summary["iteration"] / summary["elapsed_s"], "nll_oracle": summary["metrics"]["nll_oracle"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=100, help="training iterations per mode")
    p.add_argument("--staleness", type=int, default=1, help="staleness K of the async schedule")
    p.add_argument("--eval-samples", type=int, default=1024, help="samples for NLL_oracle at the end")
    p.add_argument("--cpus-per-worker", type=int, default=1, help="CPUs (torch threads) of each actor")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the in-process loop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="device of the in-process loop (cpu, cuda)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs of each actor (0: the CPU)")
    args = p.parse_args(argv)
    if args.iters < 1 or args.eval_samples < 1:
        p.error("--iters and --eval-samples must be >= 1")

    connection.connect(RuntimeConfig())  # the local Ray that `cot-ray train` starts
    try:
        with tempfile.TemporaryDirectory(prefix="cot-ray-bench-") as logdir:
            res = {}
            for mode in ("inprocess", "sync", "async"):
                res[mode] = run(mode, args, logdir)
                if mode == "sync":  # the timeline so far holds the sync run's tasks only (in-process has none)
                    breakdown = sync_breakdown(ray.timeline(), args.iters, res["sync"]["it_s"])
    finally:
        ray.shutdown()
    out = {
        "iters": args.iters, "staleness": args.staleness, "cpus_per_worker": args.cpus_per_worker,
        "inprocess_threads": args.threads, "machine_cpus": os.cpu_count(), "device": args.device,
        "gpus_per_worker": args.gpus_per_worker,
        "inprocess_it_s": round(res["inprocess"]["it_s"], 3),
        "sync_it_s": round(res["sync"]["it_s"], 3),
        "async_it_s": round(res["async"]["it_s"], 3),
        "sync_vs_inprocess": round(res["sync"]["it_s"] / res["inprocess"]["it_s"], 3),
        "async_vs_sync": round(res["async"]["it_s"] / res["sync"]["it_s"], 3),
        "nll_oracle_inprocess": round(res["inprocess"]["nll_oracle"], 4),
        "nll_oracle_sync": round(res["sync"]["nll_oracle"], 4),
        "nll_oracle_async": round(res["async"]["nll_oracle"], 4),
        "sync_breakdown": breakdown,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
