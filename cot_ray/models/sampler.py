"""The two-level inverse-CDF sampler every model draws its tokens with (see
:meth:`cot_ray.models.lstm.LSTMLM.sample` for why it is fast): one uniform per row, located
first among about sqrt(V) block totals, then inside the one block it falls in."""

from __future__ import annotations

import math

import torch


def block_size(vocab_size: int) -> int:
    """Tokens per block of the two-level sampler: ceil(sqrt(V)), so about as many blocks."""
    return max(1, math.isqrt(vocab_size - 1) + 1)


def draw_blocked(probs: torch.Tensor, blk: int, vocab_size: int, u: torch.Tensor):
    """One token per row by inverse CDF, searched in two levels.

    probs (n, nb * blk): unnormalised probabilities of the V tokens, then zeros up to a whole
    number of blocks; u (n, 1) uniforms in [0, 1) -> token ids (n, 1) int64 and the row totals
    (n, 1). The target u * total falls in one block of the cumulative block totals, then at
    one token of that block's own cumulative sum: the same token as a search of the full
    (n, V) cumulative sum, without its sequential scan over every row.

    Guarantee: a token of probability 0 is never returned, and every other token is drawn
    with its probability up to the float rounding of the sums. (A block's total, a reduction,
    and the last entry of its cumulative sum, a scan, can differ by an ulp; a target between
    the two would otherwise fall off the end of the block, onto its last token, whatever its
    probability. The target is kept strictly below the total, and inside the block strictly
    below its cumulative sum's last entry, so such a target goes to the block's last token of
    positive probability.)
    """
    n = probs.shape[0]
    nb = probs.shape[1] // blk
    blocks = probs.view(n, nb, blk)
    block_cdf = blocks.sum(dim=2).cumsum_(dim=1)  # (n, nb)
    total = block_cdf[:, -1:]  # (n, 1)
    zero = torch.zeros_like(total)
    target = torch.minimum(u * total, torch.nextafter(total, zero))  # (n, 1), in [0, total)
    b = torch.searchsorted(block_cdf, target, right=True).clamp_(max=nb - 1)  # (n, 1) the block
    before = block_cdf.gather(1, (b - 1).clamp_(min=0)).masked_fill_(b == 0, 0.0)  # (n, 1) mass of blocks < b
    inner_cdf = blocks[torch.arange(n, device=probs.device), b.squeeze(1)].cumsum_(dim=1)  # (n, blk)
    rel = torch.minimum(target - before, torch.nextafter(inner_cdf[:, -1:], zero))  # (n, 1)
    j = torch.searchsorted(inner_cdf, rel, right=True).clamp_(max=blk - 1)  # (n, 1)
    return (b * blk + j).clamp_(max=vocab_size - 1), total
