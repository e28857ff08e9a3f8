"""Nested CoT against CoT with an MLE mediator, for the same wall-clock time on the oracle.

Two CoT runs of the default configuration differ only in how the mediator is trained: by MLE
on the balanced mix (the paper) or by an inner CoT game (``nested.enabled``, depth 1 by
default). The runs take turns: each trains for ``--slice`` minutes, is evaluated, and waits
while the other trains (an exact resume), until both have trained ``--minutes`` minutes. So a
change in the machine's load hits both alike. Evaluation time is not training time.

Prints one JSON line: per arm the final NLL_oracle, NLL_test, true JSD(P || G), the
mediator's JSD estimate and its error against the true JSD, iterations and milliseconds per
iteration; with ``--plot FILE.png`` also the curves (needs matplotlib).

    python benchmarks/nested_vs_mle_mediator.py --minutes 10 --slice 2 [--depth 1] [--plot f.png]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from _curves import plot_curves

from cot_ray.config_loading import load_config
from cot_ray.loop import run_trainer
from cot_ray.rundir import read_metrics, resume_config

KEYS = ("nll_oracle", "nll_test", "jsd", "jsd_mediator")


def _echo(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def summary(run_dir: str, out: dict) -> dict:
    m = out["metrics"]
    return {"iterations": out["iteration"], "train_s": round(out["elapsed_s"], 1),
            "ms_per_iter": round(1e3 * out["elapsed_s"] / max(out["iteration"], 1), 1),
            **{k: round(m[k], 4) for k in KEYS},
            "jsd_mediator_error": round(abs(m["jsd_mediator"] - m["jsd"]), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="training minutes per arm")
    ap.add_argument("--slice", type=float, default=2.0, help="minutes each arm trains per turn")
    ap.add_argument("--depth", type=int, default=1, help="nested.depth of the nested arm")
    ap.add_argument("--eval-samples", type=int, default=2048, help="samples (and test sequences) per evaluation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--logdir", default="", help="where the runs go (default: a temporary directory)")
    ap.add_argument("--plot", default="", help="write the curves to this PNG file")
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for both arms (repeatable)")
    args = ap.parse_args()
    logdir = args.logdir or tempfile.mkdtemp(prefix="cot-ray-nested-")
    common = ["run.iters=0", "eval.every=0", f"eval.num_samples={args.eval_samples}",
              f"eval.num_test={args.eval_samples}", f"run.logdir={logdir}", f"run.seed={args.seed}",
              "run.log_every=100", "runtime.mode=local", *args.extra]
    arms = {"mle_mediator": [], "nested": ["nested.enabled=true", f"nested.depth={args.depth}"]}
    run_dirs: dict = {}
    outs: dict = {}
    done = 0.0
    while done < args.minutes - 1e-9:
        done = min(done + args.slice, args.minutes)
        for arm, extra in arms.items():
            if arm not in run_dirs:
                cfg = load_config(None, common + extra + [f"run.name={arm}", f"run.minutes={done}"])
                outs[arm] = run_trainer(cfg, echo=_echo)
                run_dirs[arm] = outs[arm]["run_dir"]
            else:
                cfg = resume_config(run_dirs[arm], minutes=done)
                outs[arm] = run_trainer(cfg, resume_dir=run_dirs[arm], echo=_echo)
    if args.plot:
        plot_curves({arm: read_metrics(d) for arm, d in run_dirs.items()}, ("nll_oracle", "nll_test", "jsd_mediator"),
                    args.plot, ln2_on=("jsd_mediator",))
    print(json.dumps({"minutes": args.minutes, "depth": args.depth, "eval_samples": args.eval_samples,
                      **{arm: summary(run_dirs[arm], outs[arm]) for arm in arms},
                      "logdir": os.path.abspath(logdir)}))


if __name__ == "__main__":
    main()
