"""Pinned numbers: the bits of a few short runs, to show that a refactor changes no number.

Runs a fixed set of tiny configurations in this process (one torch thread; CoT, MLE, MixCE,
TaiLr, CoT with the exact mediator, nested at depth 2, the async pipeline, text data) and prints one JSON line: per configuration the
SHA-256 of every checkpointed tensor (both learners, their optimizers and RNG streams) and the
final evaluation's metrics. ``--save FILE`` writes it; ``--check FILE`` compares with a saved
one and exits 1 naming what differs. Bitwise equality holds on one machine and torch build.

    python benchmarks/pinned_numbers.py --save /tmp/before.json     # before the change
    python benchmarks/pinned_numbers.py --check /tmp/before.json    # after it
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile

import torch

from cot_ray.checkpoint import CHECKPOINT, load_checkpoint
from cot_ray.config_loading import load_config
from cot_ray.runtime import train

TINY = ["generator.emb_dim=8", "generator.hidden_dim=8", "mediator.emb_dim=16", "mediator.hidden_dim=16",
        "cot.batch_size=16", "data.num_train=256", "data.num_test=64", "data.num_valid=64",
        "eval.num_samples=64", "eval.num_test=64", "eval.num_train=64", "eval.every=3", "run.iters=6",
        "run.threads=1", "run.log_every=100", "runtime.mode=local"]
CASES = {
    "cot": [],
    "mle": ["cot.algo=mle"],
    "mixce": ["cot.algo=mixce", "mixce.eta=0.3"],
    "tailr": ["cot.algo=tailr", "tailr.gamma=0.1"],
    "cot_exact": ["cot.mediator=exact"],
    "cot_ratios": ["cot.m_steps=2", "cot.g_steps=2", "cot.sync_every=3"],
    "nested_depth2": ["nested.enabled=true", "nested.depth=2", "nested.m_steps=2",
                      "inner_mediator.emb_dim=8", "inner_mediator.hidden_dim=8"],
    "async": ["runtime.schedule=async", "runtime.staleness=2"],
    "coco": ["data.source=coco", "generator.emb_dim=8", "generator.hidden_dim=8", "mediator.emb_dim=16",
             "mediator.hidden_dim=16", "eval.bleu_samples=16"],
    "transformer": ["generator.arch=transformer", "generator.num_heads=2", "mediator.arch=transformer",
                    "mediator.num_heads=2"],
}


def digest(tree, prefix: str = "", out: dict = None) -> dict:
    """path -> SHA-256 of each tensor of a nested state (numbers and strings kept as they are)."""
    out = {} if out is None else out
    if isinstance(tree, torch.Tensor):
        t = tree.detach().cpu().contiguous().reshape(-1)
        out[prefix] = hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()[:16]
    elif isinstance(tree, dict):
        for k in sorted(tree, key=str):
            digest(tree[k], f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            digest(v, f"{prefix}[{i}]", out)
    elif isinstance(tree, (int, float, str, bool)) or tree is None:
        out[prefix] = tree
    return out


def run_case(name: str, overrides: list, root: str, cache: str) -> dict:
    cfg = load_config(None, TINY + overrides + [f"run.logdir={root}", f"run.name={name}",
                                                f"data.cache_dir={cache}"])
    summary = train(cfg, echo=lambda s: None)
    state = load_checkpoint(os.path.join(summary["run_dir"], CHECKPOINT))
    tensors = digest({k: state.get(k) for k in ("g", "m", "schedule", "iteration", "m_updates")})
    return {"state": hashlib.sha256(json.dumps(tensors, sort_keys=True).encode()).hexdigest()[:16],
            "tensors": len(tensors), "metrics": summary["metrics"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--save", help="write the numbers to this JSON file")
    ap.add_argument("--check", help="compare with the numbers of this JSON file; exit 1 if any differs")
    ap.add_argument("--cache", default="", help="data cache directory (default: a temporary one)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        cache = args.cache or os.path.join(root, "cache")
        result = {name: run_case(name, overrides, root, cache) for name, overrides in CASES.items()}
    line = {"benchmark": "pinned_numbers", "torch": torch.__version__, "cases": result}
    print(json.dumps(line))
    if args.save:
        with open(args.save, "w", encoding="utf-8") as f:
            json.dump(line, f, indent=1)
    if args.check:
        with open(args.check, encoding="utf-8") as f:
            want = json.load(f)["cases"]
        bad = [name for name in want if want[name] != result.get(name)]
        if bad:
            print(f"pinned numbers differ: {', '.join(bad)}", file=sys.stderr)
            sys.exit(1)
        print(f"pinned numbers: all {len(want)} cases equal to {args.check}", file=sys.stderr)


if __name__ == "__main__":
    main()
