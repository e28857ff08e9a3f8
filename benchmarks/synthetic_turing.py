"""The synthetic Turing test: MLE and CoT trained for the same wall-clock time on CPU.

Both runs use the default configuration (G 32/32, M 64/64 with dropout 0.5, batch 64, the
bundled SeqGAN oracle) and the in-process loop; evaluation time is not counted as training
time. Prints one JSON line with each algorithm's final NLL_oracle, NLL_test, balanced NLL,
JSD and iterations, and with ``--plot FILE.png`` draws the curves (needs matplotlib).

    python benchmarks/synthetic_turing.py --minutes 10 [--logdir DIR] [--plot curves.png]
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
from cot_ray.rundir import read_metrics

KEYS = ("nll_oracle", "nll_test", "balanced_nll", "jsd")


def run(algo: str, minutes: float, eval_every: int, logdir: str, seed: int, extra: list[str]) -> dict:
    cfg = load_config(None, [f"cot.algo={algo}", f"run.minutes={minutes}", "run.iters=0",
                             f"eval.every={eval_every}", f"run.logdir={logdir}", f"run.name={algo}",
                             f"run.seed={seed}", "run.log_every=100", *extra])
    out = run_trainer(cfg, echo=lambda s: print(s, file=sys.stderr, flush=True))
    return {"iterations": out["iteration"], "train_s": round(out["elapsed_s"], 1),
            **{k: round(out["metrics"][k], 4) for k in KEYS},
            "curve": read_metrics(out["run_dir"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="training minutes per algorithm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cot-eval-every", type=int, default=250)
    ap.add_argument("--mle-eval-every", type=int, default=1500)
    ap.add_argument("--logdir", default="", help="where the two runs go (default: a temporary directory)")
    ap.add_argument("--plot", default="", help="write the curves to this PNG file")
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for both runs (repeatable)")
    args = ap.parse_args()
    logdir = args.logdir or tempfile.mkdtemp(prefix="cot-ray-turing-")
    results = {"mle": run("mle", args.minutes, args.mle_eval_every, logdir, args.seed, args.extra),
               "cot": run("cot", args.minutes, args.cot_eval_every, logdir, args.seed, args.extra)}
    if args.plot:
        plot_curves({algo.upper(): res["curve"] for algo, res in results.items()}, ("nll_oracle", "nll_test", "jsd"),
                    args.plot, ln2_on=("jsd",))
    summary = {algo: {k: v for k, v in res.items() if k != "curve"} for algo, res in results.items()}
    print(json.dumps({"minutes": args.minutes, **summary, "logdir": os.path.abspath(logdir)}))


if __name__ == "__main__":
    main()
