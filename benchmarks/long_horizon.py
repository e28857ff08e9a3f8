"""Long-horizon training on the oracle: one configuration for many iterations, evaluated along the way.

CoT's claim is that it keeps improving for a long time; this is the benchmark that checks it.
An *arm* is a named configuration (the defaults plus ``--set`` overrides) trained in-process
(one torch thread by default, so two arms can share a 2-core machine) in the run directory
``DIR/NAME``. Running the same command again continues the arm from its checkpoint up to
``--iters`` (``cot-ray train --resume`` underneath), so an arm can be spread over sessions and
lengthened later; the overrides of a continued arm must be the ones it started with.

    python benchmarks/long_horizon.py --arm NAME [--iters 20000] [--eval-every N] [--checkpoint-every 500]
                                      [--dir runs/long_horizon] [--set key=value ...] [--threads 1]
    python benchmarks/long_horizon.py --plot docs/long_horizon.png [--table] [--dir runs/long_horizon] [ARM ...]
    python benchmarks/long_horizon.py --selected [--dir runs/long_horizon] [ARM ...]

Prints one JSON line: the arm, its overrides, iterations, training seconds, the curve (every
evaluation: NLL_oracle, NLL_test, the per-token KLs, G's entropy rate and the memorisation
diagnostics nll_train / m_nll_train / m_nll_test / m_nll_fake), the best evaluation, and
``improving``: whether NLL_oracle and NLL_test at the last evaluation are both lower than at
``--turn`` (default 7,500) iterations, the point where the old recipe turned. ``--plot`` draws
the arms' curves against iterations (needs matplotlib); ``--table`` prints them as Markdown;
``--selected`` prints per arm the evaluation its own selection metric picked (its best.pt: an
early-stopped MLE arm's NLL_valid minimum) with NLL_oracle / NLL_test there and at the end.

Expected curve of the default recipe (seed 0, one thread, evaluation on 9,984 samples and 9,984
test sequences; NLL_oracle / NLL_test), measured on a 2-core CPU (``--arm default``, today's
code, 6.8 hours of training with other work on the machine; docs/long_horizon/default):

    2,500: 9.996 / 7.672   7,500: 9.489 / 7.443   12,500: 9.311 / 7.390   20,000: 9.249 / 7.376

so ``improving`` is true (the same recipe on the code before the learner refactor, whose sums
differ in the last bits: 9.455 / 7.450 at 7,500 and 9.267 / 7.380 at 20,000); the old recipe
(``--set mediator.emb_dropout=0``) turns after 7,500 (9.573 / 7.458, then 9.825 / 7.593 at
12,500). Every arm's curve is in docs/long_horizon/ and
docs/results.md's "Long horizon".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

from _curves import plot_curves

from cot_ray.checkpoint import CHECKPOINT
from cot_ray.config import selection_metric
from cot_ray.config_loading import load_config, parse_overrides
from cot_ray.loop import run_trainer
from cot_ray.rundir import open_run, read_metrics, resume_config

KEYS = ("nll_oracle", "nll_test", "kl_forward", "kl_reverse", "entropy_g", "nll_train", "m_nll_train",
        "m_nll_test", "m_nll_fake", "jsd_mediator")
PLOT_KEYS = ("nll_oracle", "nll_test", "m_nll_test", "m_nll_train")
OVERRIDES_FILE = "long_horizon_overrides.json"
DEFAULT_EVAL_EVERY = 2500


def run_arm(name: str, iters: int, eval_every: Optional[int], root: str, seed: int, threads: int, overrides: list,
            checkpoint_every: int = 500) -> dict:
    """Train (or continue) the arm to ``iters``; ``eval_every`` None: 2,500 for a new arm, the
    arm's own for a continued one."""
    run_dir = os.path.join(root, name)
    saved = os.path.join(run_dir, OVERRIDES_FILE)
    echo = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if os.path.exists(os.path.join(run_dir, CHECKPOINT)):
        with open(saved, encoding="utf-8") as f:
            started = json.load(f)
        if parse_overrides(overrides) != parse_overrides(started["overrides"]) and overrides:
            raise SystemExit(f"arm {name!r} was started with {started['overrides']}, not {overrides}: "
                             "give the same --set options (or none) to continue it, or pick another --arm")
        overrides = started["overrides"]
        cfg = resume_config(run_dir, iters=iters)  # its own thread count: the bits depend on it
        cfg.run.checkpoint_every = checkpoint_every  # how often to save leaves the bits alone
        if eval_every is not None:  # so does how often to evaluate (evaluation has its own generator)
            cfg.eval.every = eval_every
        cfg.validate()
        out = run_trainer(cfg, resume_dir=run_dir, echo=echo)
    else:
        cfg = load_config(None, ["run.iters=%d" % iters, "run.minutes=0", f"eval.every={eval_every or DEFAULT_EVAL_EVERY}",
                                 f"run.checkpoint_every={checkpoint_every}", f"run.logdir={root}", f"run.name={name}",
                                 f"run.seed={seed}", f"run.threads={threads}", "run.log_every=250",
                                 "runtime.mode=local", *overrides])
        with open_run(cfg) as claim:  # the run's directory, held: the overrides go in before the run starts
            with open(saved, "w", encoding="utf-8") as f:
                json.dump({"overrides": overrides}, f)
            out = run_trainer(cfg, echo=echo, claim=claim)
    return summarize(name, run_dir, overrides, out["elapsed_s"])


def summarize(name: str, run_dir: str, overrides: list, elapsed_s: float, turn: int = 7500) -> dict:
    rows = read_metrics(run_dir)
    curve = [{"iteration": r["iteration"], **{k: round(r[k], 4) for k in KEYS if r.get(k) is not None}}
             for r in rows]
    best = min(curve, key=lambda r: r["nll_oracle"] + r["nll_test"]) if curve else None
    at_turn = next((r for r in curve if r["iteration"] == turn), None)
    last = curve[-1] if curve else None
    improving = None
    if at_turn is not None and last is not None and last["iteration"] > turn:
        improving = last["nll_oracle"] < at_turn["nll_oracle"] and last["nll_test"] < at_turn["nll_test"]
    return {"arm": name, "overrides": overrides, "iterations": last["iteration"] if last else 0,
            "train_s": round(elapsed_s, 1), "best_iteration": best["iteration"] if best else None,
            "improving_after": turn, "improving": improving, "curve": curve}


def markdown_table(summaries: list) -> str:
    """The arms' curves as one Markdown table: NLL_oracle / NLL_test at every evaluation, and
    M's memorisation gap (m_nll_test - m_nll_train) at the last one."""
    iters = sorted({r["iteration"] for s in summaries for r in s["curve"]})
    lines = ["| arm | overrides | " + " | ".join(f"{i:,}" for i in iters) + " | M's gap at the end |",
             "|---" * (len(iters) + 3) + "|"]
    for s in summaries:
        at = {r["iteration"]: r for r in s["curve"]}
        cells = [f"{at[i]['nll_oracle']:.3f} / {at[i]['nll_test']:.3f}" if i in at else "" for i in iters]
        last = s["curve"][-1] if s["curve"] else {}
        gap = (f"{last['m_nll_test'] - last['m_nll_train']:.2f}" if "m_nll_test" in last and "m_nll_train" in last
               else "")
        lines.append(f"| {s['arm']} | {' '.join(s['overrides']) or '(defaults)'} | " + " | ".join(cells)
                     + f" | {gap} |")
    return "\n".join(lines)


def selected_table(arms: dict) -> str:
    """Per arm (name -> run directory): how far it trained, the evaluation its own selection
    metric picked (the run's best.pt: MLE by NLL_valid, CoT by NLL_oracle + NLL_valid) and
    NLL_oracle / NLL_test there and at the end, as one Markdown table."""
    lines = ["| arm | overrides | iterations | selected by | selected at | there: NLL_oracle / NLL_test | "
             "at the end |", "|---|---|---|---|---|---|---|"]
    for name, run_dir in arms.items():
        rows = read_metrics(run_dir)
        metric = selection_metric(resume_config(run_dir))
        scored = [r for r in rows if metric and r.get(metric) is not None]
        best = min(scored, key=lambda r: r[metric]) if scored else None
        cell = lambda r: f"{r['nll_oracle']:.3f} / {r['nll_test']:.3f}" if r else "-"  # noqa: E731
        at = f"{best['iteration']:,} ({best[metric]:.4f})" if best else "-"
        last = rows[-1] if rows else None
        lines.append(f"| {name} | {' '.join(arm_overrides(run_dir)) or '(defaults)'} | "
                     f"{last['iteration'] if last else 0:,} | {metric or '-'} | {at} | {cell(best)} | {cell(last)} |")
    return "\n".join(lines)


def arm_overrides(run_dir: str) -> list:
    path = os.path.join(run_dir, OVERRIDES_FILE)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return json.load(f)["overrides"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arm", help="name of the arm (its run directory under --dir)")
    ap.add_argument("--iters", type=int, default=20000, help="train (or continue) the arm to this many iterations")
    ap.add_argument("--eval-every", type=int, default=None,
                    help=f"evaluate every this many iterations (default: {DEFAULT_EVAL_EVERY} for a new arm, "
                         "the arm's own for a continued one)")
    ap.add_argument("--checkpoint-every", type=int, default=500,
                    help="save a checkpoint every this many iterations (a stopped arm loses at most these)")
    ap.add_argument("--dir", default="runs/long_horizon", help="where the arms' run directories are")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the arm's process")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override of the arm (repeatable)")
    ap.add_argument("--plot", default="", help="draw the curves of the arms under --dir to this PNG file")
    ap.add_argument("--table", action="store_true",
                    help="print the arms' curves under --dir as a Markdown table (NLL_oracle / NLL_test)")
    ap.add_argument("--selected", action="store_true",
                    help="print, per arm under --dir, the evaluation its selection metric picked (best.pt) "
                         "as a Markdown table")
    ap.add_argument("arms", nargs="*", help="with --plot, --table or --selected: the arms (default: every arm "
                                            "under --dir)")
    args = ap.parse_args()
    if args.plot or args.table or args.selected:
        arms = args.arms or sorted(d for d in os.listdir(args.dir) if os.path.isdir(os.path.join(args.dir, d)))
        if args.selected:
            print(selected_table({a: os.path.join(args.dir, a) for a in arms}))
            return
        summaries = [{k: v for k, v in summarize(a, os.path.join(args.dir, a), arm_overrides(
            os.path.join(args.dir, a)), 0.0).items() if k != "train_s"} for a in arms]
        if args.plot:
            plot_curves({a: read_metrics(os.path.join(args.dir, a)) for a in arms}, PLOT_KEYS, args.plot,
                        x="iteration")
        if args.table:
            print(markdown_table(summaries))
        else:
            for s in summaries:
                print(json.dumps(s))
        return
    if not args.arm:
        ap.error("give --arm NAME (or --plot FILE / --table)")
    print(json.dumps(run_arm(args.arm, args.iters, args.eval_every, args.dir, args.seed, args.threads,
                             args.overrides, args.checkpoint_every)))


if __name__ == "__main__":
    main()
