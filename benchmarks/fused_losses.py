"""Forward + backward of the fused, chunked output-layer losses against the logits-based references.

At the default sizes (V 5,000, T 20): MLE (B 64, H 32), mediator (2B = 128 stacked real + fake
sequences, H 64), CoT generator (B 64, G's H 32, M's H 64). Each case times the reference
(``losses.py`` on ``F.linear`` logits, autograd backward) and the fused version with every
chunk size asked for, interleaved in rounds so that machine noise hits all alike; the figure
is the ratio of medians (and, as a check on a loaded machine, the ratio of the fastest blocks).
Prints one JSON line.

    python benchmarks/fused_losses.py [--reps 10] [--rounds 7] [--chunks auto,128,512] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from cot_ray.memory import retain_freed_memory
from cot_ray.models.fused import (
    chunk_rows,
    fused_cot_generator_loss,
    fused_mixture_loss,
    fused_mle_loss,
)
from cot_ray.models.losses import cot_generator_loss, mediator_loss, mle_loss

V, T = 5000, 20


def _leaf(gen, *shape, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).requires_grad_(True)


def make_cases(B: int):
    """name -> (reference closure, fused closure taking a chunk size); each runs forward + backward."""
    gen = torch.Generator().manual_seed(0)
    tok = torch.randint(0, V, (2 * B, T), generator=gen)
    hg, wg, bg = _leaf(gen, B, T, 32), _leaf(gen, V, 32, scale=0.3), _leaf(gen, V, scale=0.1)
    hm, wm, bm = _leaf(gen, 2 * B, T, 64), _leaf(gen, V, 64, scale=0.3), _leaf(gen, V, scale=0.1)

    def mle_ref():
        mle_loss(F.linear(hg, wg, bg), tok[:B])[0].backward()

    def mle_fused(chunk):
        fused_mle_loss(hg, wg, bg, tok[:B], chunk=chunk)[0].backward()

    def med_ref():
        logits = F.linear(hm, wm, bm)  # one stacked forward, as MediatorLearner does
        mediator_loss(logits[:B], tok[:B], logits[B:], tok[B:])[0].backward()

    def med_fused(chunk):
        fused_mixture_loss(hm, [tok[:B], tok[B:]], [0.5, 0.5], wm, bm, chunk=chunk)[0].backward()

    mh = hm[:B].detach()

    def cot_ref():
        with torch.no_grad():
            m_logits = F.linear(mh, wm, bm)
        cot_generator_loss(F.linear(hg, wg, bg), m_logits)[0].backward()

    def cot_fused(chunk):
        fused_cot_generator_loss(hg, wg, bg, mh, wm, bm, chunk=chunk)[0].backward()

    return {"mle": (mle_ref, mle_fused), "mediator": (med_ref, med_fused), "cot_generator": (cot_ref, cot_fused)}


def _time(fn, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=10, help="calls per timed block")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved blocks")
    ap.add_argument("--chunks", default="auto", help="comma-separated chunk sizes (rows) of the fused losses; "
                    "auto: the default, fused.DEFAULT_CHUNK_ROWS")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    retain_freed_memory()
    auto = chunk_rows()
    chunks = [auto if c == "auto" else int(c) for c in args.chunks.split(",")]
    cases = make_cases(args.batch)
    runs = {}  # (case, variant) -> closure without arguments
    for name, (ref, fused) in cases.items():
        runs[(name, "ref")] = ref
        for c in chunks:
            runs[(name, c)] = (lambda f=fused, c=c: f(c))
    for fn in runs.values():  # warm-up: allocator, thread pool, code paths
        fn()
        fn()
    times = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, fn in runs.items():
            times[k].append(_time(fn, args.reps))
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {}
    for name in cases:
        ref = med[(name, "ref")]
        fused = {str(c): round(med[(name, c)], 2) for c in chunks}
        best = min(chunks, key=lambda c: med[(name, c)])
        lo = {k: min(v) for k, v in times.items()}  # the quietest block: a check on the medians under load
        out[name] = {"ref_ms": round(ref, 2), "fused_ms": fused,
                     "speedup": round(ref / med[(name, best)], 2), "best_chunk": best,
                     "speedup_of_mins": round(lo[(name, "ref")] / min(lo[(name, c)] for c in chunks), 2)}
    print(json.dumps({**out, "auto_chunk": auto, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
