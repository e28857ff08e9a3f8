"""The two-level inverse-CDF sampler every model draws its tokens with (see
:meth:`cot_ray.models.lstm.LSTMLM.sample` for why it is fast): one uniform per row, located
first among about sqrt(V) block totals, then inside the one block it falls in."""

from __future__ import annotations

import math
from typing import Optional

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


def output_logits(h: torch.Tensor, weight_t: torch.Tensor, bias: Optional[torch.Tensor],
                  out: torch.Tensor) -> torch.Tensor:
    """An output layer with or without a bias into a buffer: ``out = h @ weight_t (+ bias)``;
    h (n, H), weight_t (H, V), bias (V,) or None, out (n, V). The sampler's and the fused losses'
    one product."""
    if bias is None:
        return torch.mm(h, weight_t, out=out)
    return torch.addmm(bias, h, weight_t, out=out)


class TokenDrawer:
    """The token-drawing half of a model's sampling loop, the same for every architecture.

    ``drawer = TokenDrawer(n, seq_len, generator, weight, bias, ...)`` draws the n x seq_len
    uniforms from ``generator`` up front (so everything drawn before a row's EOS is the same
    with or without stopping early); then, per position t, ``drawer(h, t)`` takes the hidden
    states h (n, H) of position t and returns the tokens (n,) drawn by :func:`draw_blocked` from
    softmax((h @ weight.T + bias) / temperature), ``bias`` None for an output layer without one.
    The (n, V) logits and probabilities live in buffers allocated once. With ``stop_id`` (text:
    EOS) ``drawer.done`` turns true once every row has drawn it, and the positions left are
    filled with it. :meth:`result` is what ``sample`` returns: the tokens (n, seq_len), and with
    ``with_log_prob`` each sequence's exact log-probability (n,) over the drawn positions.
    """

    def __init__(self, n: int, seq_len: int, generator: torch.Generator, weight: torch.Tensor, bias,
                 temperature: float = 1.0, with_log_prob: bool = False, stop_id: Optional[int] = None):
        V = weight.shape[0]
        dev, dtype = weight.device, weight.dtype
        self.out_w, self.out_b = weight.t(), bias  # (H, V), (V,) or None
        self.temperature, self.with_log_prob, self.stop_id = temperature, with_log_prob, stop_id
        self.V, self.blk = V, block_size(V)
        self.uniforms = torch.rand(seq_len, n, 1, generator=generator, device=generator.device).to(dev)
        self.out = torch.empty(n, seq_len, dtype=torch.long, device=dev)
        self.logits = torch.empty(n, V, dtype=dtype, device=dev)  # (n, V), reused every step
        # (n, nb * blk) unnormalised probabilities, reused every step; the padding stays 0
        self.probs = torch.zeros(n, -(-V // self.blk) * self.blk, dtype=dtype, device=dev)
        self.log_prob = torch.zeros(n, device=dev)
        self.stopped = torch.zeros(n, dtype=torch.bool, device=dev) if stop_id is not None else None
        self.done = False

    def __call__(self, h: torch.Tensor, t: int) -> torch.Tensor:
        output_logits(h, self.out_w, self.out_b, self.logits)  # (n, V)
        if self.temperature != 1.0:
            self.logits.div_(self.temperature)
        shifted = self.logits.sub_(self.logits.amax(dim=1, keepdim=True))  # kept for the log-probability
        torch.exp(shifted, out=self.probs[:, :self.V])
        x, total = draw_blocked(self.probs, self.blk, self.V, self.uniforms[t])  # (n, 1), (n, 1)
        if self.with_log_prob:
            self.log_prob += (shifted.gather(1, x) - total.log()).squeeze(1)
        x = x.squeeze(1)
        self.out[:, t] = x
        if self.stopped is not None:
            self.stopped |= x == self.stop_id
            if bool(self.stopped.all()):
                self.out[:, t + 1:] = self.stop_id
                self.done = True
        return x

    def result(self):
        return (self.out, self.log_prob) if self.with_log_prob else self.out
