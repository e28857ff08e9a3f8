"""Per-step cost of drawing one token for each of 64 sequences from a 5,000-way distribution.

Compares torch.multinomial, Gumbel-max, inverse-CDF over the full cumulative sum (cumsum +
searchsorted) and the two-level inverse-CDF that ``LSTMLM.sample`` uses (block totals, then one
block: ``models.draw_blocked``), on the same logits, in one run. Prints one JSON line of
milliseconds per step and each method's cost relative to the two-level inverse-CDF.

    python benchmarks/sampler.py [--batch 64] [--vocab 5000] [--reps 300]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from cot_ray.models.sampler import block_size, draw_blocked

# Each method gets the logits, the generator, (n, 1) uniforms and an (n, nb * blk) zeroed buffer
# allocated once, as LSTMLM.sample allocates its buffers once per call, not once per step (a fresh
# 1.3 MB tensor per step costs more in page faults than the search itself).


def multinomial(logits, gen, u, buf):
    return torch.multinomial(torch.softmax(logits, dim=1), 1, generator=gen)


def gumbel_max(logits, gen, u, buf):
    g = torch.empty_like(logits).exponential_(generator=gen).log_().neg_()
    return (logits + g).argmax(dim=1, keepdim=True)


def inverse_cdf(logits, gen, u, buf):
    V = logits.shape[1]
    cdf = torch.sub(logits, logits.amax(dim=1, keepdim=True), out=buf.view(-1)[:buf.shape[0] * V].view(-1, V))
    cdf.exp_().cumsum_(dim=1)  # (n, V), contiguous
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=logits.shape[1] - 1)


def inverse_cdf_blocked(logits, gen, u, buf):
    V = logits.shape[1]
    buf[:, V:] = 0.0  # the padding (inverse_cdf used the buffer as a contiguous (n, V) one)
    torch.exp(logits - logits.amax(dim=1, keepdim=True), out=buf[:, :V])
    return draw_blocked(buf, block_size(V), V, u)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=5000)
    ap.add_argument("--reps", type=int, default=300)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(args.batch, args.vocab, generator=gen)
    blk = block_size(args.vocab)
    buf = logits.new_zeros(args.batch, -(-args.vocab // blk) * blk)
    methods = {"multinomial": multinomial, "gumbel_max": gumbel_max, "inverse_cdf": inverse_cdf,
               "inverse_cdf_blocked": inverse_cdf_blocked}
    times = {k: [] for k in methods}
    for _ in range(3):  # interleaved rounds: noise hits every method alike
        for name, fn in methods.items():
            u = torch.rand(args.batch, 1, generator=gen)
            fn(logits, gen, u, buf)
            t0 = time.perf_counter()
            for _ in range(args.reps):
                fn(logits, gen, u, buf)
            times[name].append((time.perf_counter() - t0) / args.reps * 1e3)
    ms = {k: round(min(v), 4) for k, v in times.items()}
    print(json.dumps({"ms_per_step": ms, "vs_inverse_cdf_blocked": {k: round(v / ms["inverse_cdf_blocked"], 2) for k, v in ms.items()},
                      "batch": args.batch, "vocab": args.vocab, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
