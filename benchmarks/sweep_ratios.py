"""CoT's update ratio and mediator dropout, swept with Ray Tune on the synthetic oracle.

Random search over ``cot.g_steps`` (1..3), ``cot.m_steps`` (1..4) and ``mediator.dropout``
([0, 0.7)) at the default model sizes and learning rates, every trial trained for the same
minutes of training (evaluation not counted; FIFO, so no trial is cut short), then the default
1:1 ratio with dropout 0.5 trained for the same budget by the same trial machinery. Ranked by
the final balanced NLL (NLL_oracle + NLL_test, lower is better), evaluated on
``--eval-samples`` generator samples and as many test sequences. Prints one JSON line.

    python benchmarks/sweep_ratios.py --num-samples 8 --minutes-per-trial 1.5 [--max-concurrent 1]

On a small machine keep ``--max-concurrent 1``: each trial then has the CPUs to itself (its
generator and mediator workers one core each), so trials are comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import ray
from ray import tune as ray_tune

from cot_ray.sweep import tune as sweeps
from cot_ray.sweep.spec import load_sweep

SEARCH = """
  cot.g_steps: {randint: [1, 3]}
  cot.m_steps: {randint: [1, 4]}
  mediator.dropout: {uniform: [0.0, 0.7]}
"""
DEFAULT = """
  cot.g_steps: 1
  cot.m_steps: 1
  mediator.dropout: 0.5
"""
KEYS = ("balanced_nll", "nll_oracle", "nll_test", "jsd")


def sweep_file(directory: str, name: str, search: str, args: argparse.Namespace, samples: int) -> str:
    """A sweep file: the default config, ``search``, a minutes budget per trial, FIFO."""
    path = os.path.join(directory, f"{name}.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"base:\n  eval: {{every: 0, num_samples: {args.eval_samples}, num_test: {args.eval_samples}}}\n"
                # log_every 1: the loop waits for every iteration, so the minutes budget is exact
                f"  run: {{seed: {args.seed}, log_every: 1, checkpoint_every: 100000}}\n"
                f"search:{search}"
                f"tune: {{num_samples: {samples}, scheduler: fifo, max_concurrent: {args.max_concurrent}, "
                f"per_trial: {{minutes: {args.minutes_per_trial}}}, seed: {args.seed}}}\n")
    return path


def summarize(row, trials: dict) -> dict:
    """A trial's sampled values and final metrics."""
    r = trials[row.trial_id].last_result
    return {"g_steps": row.config["cot.g_steps"], "m_steps": row.config["cot.m_steps"],
            "dropout": round(float(row.config["mediator.dropout"]), 3), "iterations": row.iteration,
            "train_s": round(r["elapsed_s"], 1),
            **{k: round(r[f"eval/{k}"], 4) for k in KEYS}}


def run(name: str, search: str, samples: int, args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """Run one sweep; -> (its best trial, all its trials), each as :func:`summarize` gives."""
    path = sweep_file(args.logdir, name, search, args, samples)
    sweep = load_sweep(path, args.extra, storage=args.logdir, name=name)
    out = sweeps.run_sweep(sweep)
    print(out["table"], file=sys.stderr, flush=True)
    if out["best"] is None:
        raise SystemExit(f"sweep {name}: no trial finished (see {out['experiment']})")
    trials = {t.trial_id: t for t in ray_tune.ExperimentAnalysis(out["experiment"]).trials}
    rows = [summarize(r, trials) for r in out["rows"] if r.metric is not None]
    return summarize(out["best"], trials), rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-samples", type=int, default=8, help="trials of the random search")
    ap.add_argument("--minutes-per-trial", type=float, default=1.5, help="training minutes of every trial")
    ap.add_argument("--max-concurrent", type=int, default=1, help="trials at once (0: as many as fit)")
    ap.add_argument("--eval-samples", type=int, default=2048, help="generator samples and test sequences "
                    "of the final evaluation")
    ap.add_argument("--seed", type=int, default=0, help="seed of the runs and of the search")
    ap.add_argument("--logdir", default="", help="where the experiments go (default: a temporary directory)")
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="base config override for every trial (repeatable)")
    args = ap.parse_args()
    args.logdir = os.path.abspath(args.logdir or tempfile.mkdtemp(prefix="cot-ray-sweep-"))
    os.makedirs(args.logdir, exist_ok=True)
    cpus = 1 + 2 * 1  # one trial: its driver and two one-CPU workers
    started = sweeps.connect("", cpus * max(args.max_concurrent, 1))
    try:
        best, trials = run("ratios", SEARCH, args.num_samples, args)
        default, _ = run("default", DEFAULT, 1, args)
    finally:
        if started:
            ray.shutdown()
    print(json.dumps({"minutes_per_trial": args.minutes_per_trial, "num_samples": args.num_samples,
                      "eval_samples": args.eval_samples, "best": best, "default": default,
                      "balanced_nll_gain": round(default["balanced_nll"] - best["balanced_nll"], 4),
                      "trials": trials, "logdir": args.logdir}))


if __name__ == "__main__":
    main()
