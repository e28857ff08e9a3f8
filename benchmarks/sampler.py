"""Per-step cost of drawing one token for each of 64 sequences from a 5,000-way distribution.

Compares torch.multinomial, Gumbel-max and the inverse-CDF sampler (cumsum + searchsorted)
that ``LSTMLM.sample`` uses, on the same logits, in one run. Prints one JSON line of
milliseconds per step and each method's cost relative to inverse-CDF.

    python benchmarks/sampler.py [--batch 64] [--vocab 5000] [--reps 300]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def multinomial(logits, gen, u):
    return torch.multinomial(torch.softmax(logits, dim=1), 1, generator=gen)


def gumbel_max(logits, gen, u):
    g = torch.empty_like(logits).exponential_(generator=gen).log_().neg_()
    return (logits + g).argmax(dim=1, keepdim=True)


def inverse_cdf(logits, gen, u):
    cdf = (logits - logits.max(dim=1, keepdim=True).values).exp_().cumsum_(dim=1)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=logits.shape[1] - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=5000)
    ap.add_argument("--reps", type=int, default=300)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(args.batch, args.vocab, generator=gen)
    methods = {"multinomial": multinomial, "gumbel_max": gumbel_max, "inverse_cdf": inverse_cdf}
    times = {k: [] for k in methods}
    for _ in range(3):  # interleaved rounds: noise hits every method alike
        for name, fn in methods.items():
            u = torch.rand(args.batch, 1, generator=gen)
            fn(logits, gen, u)
            t0 = time.perf_counter()
            for _ in range(args.reps):
                fn(logits, gen, u)
            times[name].append((time.perf_counter() - t0) / args.reps * 1e3)
    ms = {k: round(min(v), 4) for k, v in times.items()}
    print(json.dumps({"ms_per_step": ms, "vs_inverse_cdf": {k: round(v / ms["inverse_cdf"], 1) for k, v in ms.items()},
                      "batch": args.batch, "vocab": args.vocab, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
