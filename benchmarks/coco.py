"""MLE against CoT on the bundled COCO captions for equal training wall-clock.

Each algorithm trains in this process (the in-process loop, text defaults: G 64/64, M 128/128)
for ``--minutes`` of training time (evaluation excluded), then its final generator is scored on
the test set: NLL_test, BLEU-2..5 of ``--bleu-samples`` generated sentences against all test
sentences (Texygen style) and self-BLEU-2..5 of those samples. The same scores of real training
sentences are reported as ``"real"`` (the ceiling a perfect generator would reach). Progress
goes to stderr; stdout gets ONE JSON line::

    {"minutes": ..., "data": {...}, "real": {bleu2.., self_bleu2..},
     "mle": {"iterations", "train_s", "nll_test", "bleu2".., "self_bleu2".., "samples": [...]},
     "cot": {...}, "device", "threads"}

    python benchmarks/coco.py [--minutes 5] [--seed 0] [--bleu-samples 1000] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

from cot_ray.bleu import BleuScorer, select_sentences, self_bleu
from cot_ray.checkpoint import CHECKPOINT, load_checkpoint
from cot_ray.config_loading import load_config
from cot_ray.data import load_dataset
from cot_ray.loop import run_trainer
from cot_ray.metric_names import BLEU_ORDERS
from cot_ray.models import model_from_weights
from cot_ray.rundir import resume_config


def _round(metrics: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}


def run_algo(algo: str, args, logdir: str) -> dict:
    """Train ``algo`` for ``args.minutes`` and return its final metrics and a few decoded samples."""
    cfg = load_config(None, [
        "data.source=coco", f"cot.algo={algo}", "run.iters=0", f"run.minutes={args.minutes}",
        f"run.seed={args.seed}", f"run.logdir={logdir}", f"run.device={args.device}",
        "eval.every=0", f"eval.bleu_samples={args.bleu_samples}", "run.log_every=25",
        "run.checkpoint_every=1000000",
    ])
    t0 = time.perf_counter()
    summary = run_trainer(cfg, echo=lambda s: print(s, file=sys.stderr, flush=True))
    wall = time.perf_counter() - t0
    run_dir = summary["run_dir"]
    saved = resume_config(run_dir)  # as `cot-ray sample` does: the run's own vocabulary
    data = load_dataset(saved.data)
    state = load_checkpoint(os.path.join(run_dir, CHECKPOINT))
    g = model_from_weights(data.vocab_size, saved.generator, state["g"]["model"])
    rows = g.sample(args.show, data.seq_len, torch.Generator().manual_seed(args.seed + 1))
    return {"iterations": summary["iteration"], "train_s": round(summary["elapsed_s"], 1),
            "wall_s": round(wall, 1), **_round(summary["metrics"]),
            "samples": [data.decode(r) for r in rows.tolist()]}


def real_scores(n: int, seed: int) -> dict:
    """BLEU and self-BLEU of ``n`` real training sentences: what a perfect generator would score."""
    data = load_dataset(load_config(None, ["data.source=coco"]).data)
    hyps = select_sentences([data.tokens(r) for r in data.train.tolist()], n, seed)
    scorer = BleuScorer(data.references, max_n=max(BLEU_ORDERS))
    out = {f"bleu{k}": scorer.score(hyps, k) for k in BLEU_ORDERS}
    out.update({f"self_bleu{k}": self_bleu(hyps, k) for k in BLEU_ORDERS})
    info = {"train": len(data.train), "test": len(data.test), "vocab": data.vocab_size, "max_len": data.seq_len}
    return _round(out), info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="training minutes per algorithm")
    ap.add_argument("--seed", type=int, default=0, help="run seed (both algorithms)")
    ap.add_argument("--bleu-samples", type=int, default=1000, help="generated sentences scored for BLEU")
    ap.add_argument("--show", type=int, default=5, help="decoded samples per model in the JSON")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--logdir", default="", help="keep the runs here (default: a temporary directory)")
    args = ap.parse_args()
    if args.minutes <= 0 or args.bleu_samples < 2:
        ap.error("--minutes must be > 0 and --bleu-samples >= 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    real, info = real_scores(args.bleu_samples, args.seed)
    out = {"minutes": args.minutes, "data": info, "real": real}
    with tempfile.TemporaryDirectory(prefix="cot-ray-coco-") as tmp:
        logdir = args.logdir or tmp
        for algo in ("mle", "cot"):
            out[algo] = run_algo(algo, args, logdir)
    out["device"] = args.device
    out["threads"] = torch.get_num_threads()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
