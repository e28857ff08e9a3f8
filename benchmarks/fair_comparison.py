"""CoT against MLE (and MLE's rivals), fairly: equal wall-clock, several seeds, the likelihood
family early-stopped on validation, all swept over the softmax temperature (Caccia et al., ICLR 2020).

For each seed, one run per algorithm of ``--algos`` (default CoT and MLE; MixCE and TaiLr too)
trains at the same time (one torch thread each, so the machine's load hits them alike) for
``--minutes`` of training each, evaluating along the way on the validation set only; each keeps
its best checkpoint by its selection metric (MLE, MixCE, TaiLr: NLL on validation; CoT:
NLL_oracle + NLL_valid on the oracle, NLL_valid on text). Then ``cot-ray compare`` evaluates
every run's best and last checkpoints over ``--temperatures`` on the test set, groups the seeds
(mean ± std) and draws the quality-diversity curves; on text, ``--lm-score MODEL_RUN`` adds the
LM score of every sample under a separately trained MLE run.

    python benchmarks/fair_comparison.py --data oracle --minutes 15 --seeds 0,1,2 --out docs/fair_oracle
    python benchmarks/fair_comparison.py --data coco --minutes 20 --seeds 0,1,2 --compare-samples 1000 --out docs/fair_coco
    python benchmarks/fair_comparison.py --data oracle --config configs/transformer_oracle.yaml ...   # other models
    python benchmarks/fair_comparison.py --data PATH/train.txt --test-data PATH/test.txt \
        --algos cot,mle,mixce,tailr --set mixce.eta=0.3 --lm-score runs/lm --out cmp_mine   # your corpus

Runs go to ``--logdir`` (default ``runs/fair_<data>``); running the command again continues
unfinished runs (``--resume``) and re-does the comparison. Prints one JSON line: the budget,
the runs' iterations, the best checkpoints' iterations and, per algorithm and checkpoint, the
temperature with the lowest NLL_oracle + NLL_test (oracle) or highest BLEU-4 - self-BLEU-4
(text), with its metrics.

Measured on the oracle with the command above (2-core CPU, one thread per run, about 58 minutes
of training and evaluation plus 8 minutes of comparison; docs/fair_oracle): CoT makes about
1,800 iterations and MLE about 11,500, best on validation at 5,000-5,500. Temperature-tuned MLE
is ahead on the whole curve at this budget: at NLL_test 7.73 MLE's best checkpoint has
NLL_oracle 9.45 (T = 0.9) against CoT's 9.93-10.08.

Measured on COCO with the second command (same machine, about 70 minutes of training and
evaluation plus 287 s of comparison; docs/fair_coco): CoT makes 1,112-1,186 iterations, still
improving, and MLE 11,666-12,317, best on validation at 4,000. Temperature-tuned MLE is ahead
on the whole BLEU-4 / self-BLEU-4 curve: at MLE's self-BLEU-4 0.284 (T = 1) its BLEU-4 is 0.264
against CoT's 0.239.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from cot_ray.compare import can_plot, compare_runs, parse_temperatures, write_outputs
from cot_ray.config import ALGOS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_seed(seed: int, args, logdir: str) -> None:
    """Every algorithm's run of one seed, at the same time (one thread each, so they share the
    machine alike); continued if present."""
    procs = []
    for algo in args.algos:
        run_dir = os.path.join(logdir, f"{algo}-seed{seed}")
        common = ["--json", "--local"]
        if os.path.exists(os.path.join(run_dir, "checkpoint.pt")):
            cmd = ["train", "--resume", run_dir, "--minutes", str(args.minutes)]
        else:
            every = args.cot_eval_every if algo == "cot" else args.mle_eval_every  # the likelihood family as MLE
            cmd = ["train", "--algo", algo, "--minutes", str(args.minutes), "--seed", str(seed),
                   "--logdir", logdir, "--set", f"run.name={algo}-seed{seed}", "--set", "run.threads=1",
                   "--set", f"eval.every={every}", "--set", f"eval.num_samples={args.train_eval_samples}",
                   "--set", f"eval.num_test={args.train_eval_samples}", "--set", "run.log_every=250"]
            if args.data != "oracle":
                cmd += ["--data", args.data, "--set", "eval.bleu_samples=200"]
                cmd += ["--test-data", os.path.abspath(args.test_data)] if args.test_data else []
            if args.config:
                cmd += ["--config", os.path.abspath(args.config)]
            cmd += [a for kv in args.overrides for a in ("--set", kv)]
        log = open(os.path.join(logdir, f"{algo}-seed{seed}.log"), "a", encoding="utf-8")
        procs.append((subprocess.Popen([sys.executable, "-m", "cot_ray.cli", *cmd, *common], stdout=log,
                                       stderr=subprocess.STDOUT, cwd=ROOT), log, algo))
    for proc, log, algo in procs:
        if proc.wait() != 0:
            raise SystemExit(f"the {algo} run of seed {seed} failed: see {log.name}")
        log.close()


def best_temperatures(result: dict) -> dict:
    """Per (group, checkpoint): the temperature with the best balanced score, and its metrics."""
    out = {}
    for g in result["groups"]:
        def score(row):
            if result["text"]:
                return -(row["bleu4"]["mean"] - row["self_bleu4"]["mean"])
            return row["nll_oracle"]["mean"] + row["nll_test"]["mean"]

        rows = [r for r in g["rows"] if ("bleu4" in r if result["text"] else "nll_oracle" in r)]
        best = min(rows, key=score)
        keys = ("bleu4", "self_bleu4", "nll_test", "lm_score") if result["text"] else \
            ("nll_oracle", "nll_test", "kl_forward", "kl_reverse")
        out[f"{g['group']}/{g['checkpoint']}"] = {
            "temperature": best["temperature"], "seeds": len(g["seeds"]), "iterations": g["iterations"],
            **{k: [round(best[k]["mean"], 4), None if best[k]["std"] is None else round(best[k]["std"], 4)]
               for k in keys if k in best}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="oracle", help="oracle, coco, or a training file of your own (one sentence "
                    "per line; then --test-data)")
    ap.add_argument("--test-data", default="", help="with --data PATH: the held-out file")
    ap.add_argument("--algos", default="cot,mle", help="the algorithms compared, of cot, mle, mixce, tailr (their "
                    "keys by --set, e.g. --set mixce.eta=0.3: each run reads only its own)")
    ap.add_argument("--lm-score", default="", metavar="MODEL_RUN", help="text: score every sample with this MLE "
                    "run too (Caccia et al.'s LM score; train it apart from the compared runs, e.g. with another seed)")
    ap.add_argument("--minutes", type=float, default=10.0, help="training minutes of every run (equal wall-clock)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--temperatures", default="0.7:1.3:0.1")
    ap.add_argument("--cot-eval-every", type=int, default=250)
    ap.add_argument("--mle-eval-every", type=int, default=500)
    ap.add_argument("--train-eval-samples", type=int, default=2048, help="samples per evaluation while training")
    ap.add_argument("--compare-samples", type=int, default=4096, help="samples per temperature in the comparison")
    ap.add_argument("--logdir", default="")
    ap.add_argument("--out", required=True, help="where the table, JSON and plot go (e.g. docs/fair_oracle)")
    ap.add_argument("--config", default="", help="a training config both algorithms start from (e.g. "
                    "configs/transformer_oracle.yaml; its data source must be --data's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override of every run (repeatable)")
    args = ap.parse_args()
    args.algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    bad = [a for a in args.algos if a not in ALGOS]
    if bad or not args.algos:
        raise SystemExit(f"--algos: {', '.join(bad) or 'none given'} is not one of {', '.join(ALGOS)}")
    if args.data not in ("oracle", "coco") and not args.test_data:
        raise SystemExit(f"--data {args.data}: a training file of your own needs --test-data PATH")
    if args.lm_score and args.data == "oracle":
        raise SystemExit("--lm-score is for text: on the oracle, nll_oracle is the exact LM score")
    seeds = [int(s) for s in args.seeds.split(",")]
    name = args.data if args.data in ("oracle", "coco") else os.path.splitext(os.path.basename(args.data))[0]
    logdir = os.path.abspath(args.logdir or os.path.join("runs", f"fair_{name}"))
    os.makedirs(logdir, exist_ok=True)
    for seed in seeds:
        train_seed(seed, args, logdir)
    runs = [os.path.join(logdir, f"{algo}-seed{s}") for algo in args.algos for s in seeds]
    result = compare_runs(runs, parse_temperatures(args.temperatures), ("best", "last"), args.compare_samples,
                          echo=lambda s: print(s, file=sys.stderr, flush=True), lm_run=args.lm_score or None)
    result["budget_minutes"] = args.minutes
    paths = write_outputs(result, args.out, plot=can_plot())  # the plot needs matplotlib (the bench extra)
    print(json.dumps({"data": args.data, "minutes_per_run": args.minutes, "seeds": seeds,
                      "compare_seconds": result["seconds"], "best": best_temperatures(result),
                      "outputs": paths}))


if __name__ == "__main__":
    main()
