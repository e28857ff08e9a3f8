"""The MLE, mediator and CoT generator losses fused with the output layer, chunk by chunk.

Shapes: B batch, T sequence length, V vocabulary, H hidden, N = B * T rows, n rows per chunk.

Why: with logits-based losses a CPU training step spends most of its time on the (B, T, V)
full-vocabulary tensors (logits, log-softmax, softmax and their gradients, 25-51 MB each at
the default sizes), which autograd streams through main memory several times. These
functions take the hidden states and the output layer's ``weight`` (V, H) and ``bias`` (V,)
instead of logits and run the output layer on ``n`` rows at a time, so that only (n, V) slabs
exist and they stay in cache. No (B, T, V) tensor is ever materialised. What remains is
mostly the three matrix products of each output layer (forward, d/d hidden, d/d weight) and
one exponential per logit (benchmarks/fused_losses.py measures the gain).

Each loss is a scalar, a weighted sum of per-row terms with weights known in forward (the
mask over its count), so when a gradient is wanted the forward pass computes the gradients
w.r.t. hidden, weight and bias on the same slabs, while they are in cache, and backward only
scales them by the incoming scalar. Forward and gradient share the exponentials too: each
needs exp over the slab once, where autograd's log_softmax backward computes it again.

Each function equals its logits-based reference in ``losses.py`` (value, stats and gradients,
up to float rounding from reordered sums), which stays the exact reference for tests and
metrics. Masks are data: no gradient flows into them, and the rows they drop (text padding)
are never computed. Without grad mode (``torch.no_grad()``) or when no input requires grad,
nothing but the loss is computed.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch.autograd.function import once_differentiable

from ..config import DEFAULT_CHUNK_ROWS
from .sampler import output_logits


def chunk_rows(chunk: Optional[int] = None) -> int:
    """Rows per chunk: ``chunk`` if given, else ``DEFAULT_CHUNK_ROWS`` (``run.chunk_rows``'s default)."""
    if chunk is None:
        return DEFAULT_CHUNK_ROWS
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 row, got {chunk}")
    return chunk


def _row_weights(mask: Optional[torch.Tensor], n_rows: int, scale: float, like: torch.Tensor) -> torch.Tensor:
    """(B, T) mask or None -> (N,) weights w with ``sum_r w_r x_r == scale * _masked_mean(x, mask)``.

    ``_masked_mean`` divides by the number of counted positions, clamped at 1 so that an
    all-zero mask gives 0 rather than NaN; the weights follow it exactly.
    """
    if mask is None:
        return torch.full((n_rows,), scale / max(n_rows, 1), dtype=like.dtype, device=like.device)
    mask = mask.detach().reshape(-1).to(like.dtype)
    return mask * (scale / mask.sum().clamp_min(1.0))


def _counted_rows(coef: torch.Tensor) -> Optional[torch.Tensor]:
    """Indices of the rows with a nonzero weight, or None when every row has one.

    A row of weight 0 (padding after a sentence's end) adds nothing to a loss or its gradients,
    so the fused losses skip it: on text, where most of a batch is padding (COCO: 68% of the
    real batches' positions), this removes most of the output layer's work. Without a mask
    (fixed-length data) nothing is dropped and the arithmetic is unchanged to the bit.
    """
    zero = coef == 0
    if not bool(zero.any()):
        return None
    return (~zero).nonzero().squeeze(1)


def _needs_grad(*tensors: Optional[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# ----------------------------------------------------------------------------- weighted NLL

def _nll_chunks(hidden, weight, bias, targets, coef, want, chunk, token_weight=None):
    """Per-row NLL of ``targets`` under softmax(hidden @ weight.T + bias), and optionally the
    gradients of ``sum_r coef_r w_r nll_r``.

    hidden (N, H), weight (V, H), bias (V,), targets (N,) int64, coef (N,);
    want: (hidden, weight, bias) booleans; token_weight: None (w = 1) or a function of the
    rows' target probabilities (n,) -> their weights w (n,), treated as constants
    -> nll (N,), w (N,) | None, grad_hidden (N, H) | None, grad_weight (V, H) | None,
    grad_bias (V,) | None.

    Per chunk, with e = exp(z - max z) the unnormalised probabilities and s their row sum:
    nll = log s + max z - z_target; d nll / d z = e / s - onehot(target).
    """
    N, H = hidden.shape
    nll = hidden.new_empty(N)
    wts = hidden.new_empty(N) if token_weight is not None else None
    g_h = hidden.new_empty(N, H) if want[0] else None
    g_w = torch.zeros_like(weight) if want[1] else None
    g_b = torch.zeros_like(bias) if want[2] and bias is not None else None
    grad = any(want)
    slab = hidden.new_empty(min(chunk, N), weight.shape[0])  # (n, V), reused by every chunk
    for i in range(0, N, chunk):
        h = hidden[i:i + chunk]  # (n, H)
        n = h.shape[0]
        t = targets[i:i + n, None]  # (n, 1)
        z = output_logits(h, weight.t(), bias, slab[:n])  # (n, V) logits
        top = z.amax(dim=1, keepdim=True)  # (n, 1)
        z_t = z.gather(1, t)  # (n, 1) target logits
        e = z.sub_(top).exp_()  # (n, V) in place: unnormalised probabilities
        s = e.sum(dim=1, keepdim=True)  # (n, 1)
        nll[i:i + n] = (s.log() + top - z_t).squeeze(1)
        if wts is not None:
            wts[i:i + n] = token_weight(torch.exp(-nll[i:i + n]))
        if not grad:
            continue
        c = coef[i:i + n, None] if wts is None else (coef[i:i + n] * wts[i:i + n])[:, None]  # (n, 1)
        g = e.mul_(c / s).scatter_add_(1, t, -c)  # (n, V) in place: coef * (softmax - onehot)
        if g_h is not None:
            torch.mm(g, weight, out=g_h[i:i + n])
        if g_w is not None:
            g_w.addmm_(g.t(), h)
        if g_b is not None:
            g_b += g.sum(dim=0)
    return nll, wts, g_h, g_w, g_b


def _save_grads(ctx, want, grads) -> None:
    """Keep the gradients a fused forward computed (those of the inputs in ``want``)."""
    ctx.save_for_backward(*(g for g in grads if g is not None))
    ctx.want = want


def _saved_grads(ctx, grad_loss) -> list:
    """The saved gradients scaled by the incoming gradient of the loss (None where not wanted).
    Out of place: they must survive a second backward (retain_graph)."""
    saved = iter(ctx.saved_tensors)
    return [next(saved) * grad_loss if w else None for w in ctx.want]


def _row_loss(coef, wts, nll):
    """``sum_r coef_r w_r nll_r`` (w = 1 when ``wts`` is None: then exactly ``coef . nll``)."""
    return torch.dot(coef, nll) if wts is None else torch.dot(coef * wts, nll)


class _FusedNLL(torch.autograd.Function):
    """``sum_r coef_r w_r nll_r`` with the output layer inside; also returns the detached nll (N,)
    and token weights w (N,) (None without ``token_weight``).

    The gradients are computed in forward (the weights are known there) and saved; backward
    scales them by the incoming gradient. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, coef, chunk, token_weight):
        want = ctx.needs_input_grad[:3]
        nll, wts, *grads = _nll_chunks(hidden, weight, bias, targets, coef, want, chunk, token_weight)
        _save_grads(ctx, want, grads)
        ctx.mark_non_differentiable(nll, *([wts] if wts is not None else []))  # one call: each replaces the last
        return _row_loss(coef, wts, nll), nll, wts

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_nll, _grad_wts):
        return (*_saved_grads(ctx, grad_loss), None, None, None, None)


def _weighted_nll(hidden, weight, bias, targets, coef, chunk, token_weight=None):
    """hidden (..., H), targets (...) -> (scalar sum_r coef_r w_r nll_r, detached nll (N,),
    detached token weights w (N,) or None without ``token_weight``).

    Rows of weight 0 are never computed (:func:`_counted_rows`); their nll and w are reported as 0.
    """
    h = hidden.reshape(-1, hidden.shape[-1])  # (N, H)
    t = targets.reshape(-1)  # (N,)
    chunk = chunk_rows(chunk)
    keep = _counted_rows(coef)
    if keep is not None:  # (K,) counted rows only; index_select carries the gradient back to (N, H)
        h, t, coef = h.index_select(0, keep), t[keep], coef[keep]
    if _needs_grad(hidden, weight, bias):
        loss, nll, wts = _FusedNLL.apply(h, weight, bias, t, coef, chunk, token_weight)
    else:
        with torch.no_grad():
            nll, wts = _nll_chunks(h, weight, bias, t, coef, (False, False, False), chunk, token_weight)[:2]
        loss = _row_loss(coef, wts, nll)
    if keep is not None:
        N = hidden.shape[:-1].numel()
        nll = nll.new_zeros(N).index_copy_(0, keep, nll)
        wts = wts.new_zeros(N).index_copy_(0, keep, wts) if wts is not None else None
    return loss, nll, wts


def fused_mle_loss(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, tokens: torch.Tensor,
                   mask: Optional[torch.Tensor] = None, chunk: Optional[int] = None):
    """``mle_loss(F.linear(hidden, weight, bias), tokens, mask)`` without the (B, T, V) logits.

    hidden (B, T, H), weight (V, H), bias (V,), tokens (B, T), mask (B, T) or None
    -> (scalar mean per-token NLL, {"nll": detached loss}).
    """
    coef = _row_weights(mask, tokens.numel(), 1.0, hidden)
    loss, _, _ = _weighted_nll(hidden, weight, bias, tokens, coef, chunk)
    return loss, {"nll": loss.detach()}


def fused_weighted_mle_loss(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, tokens: torch.Tensor,
                            token_weight, mask: Optional[torch.Tensor] = None, chunk: Optional[int] = None):
    """``weighted_mle_loss(F.linear(hidden, weight, bias), tokens, token_weight, mask)`` (losses.py,
    MixCE and TaiLr) without the (B, T, V) logits: each counted token's NLL weighted by
    ``token_weight`` of the model's own probability of it, held constant.

    hidden (B, T, H), weight (V, H), bias (V,), tokens (B, T), mask (B, T) or None
    -> (scalar, {"loss": the loss, "nll": mean per-token NLL, "weight": mean token weight}, detached).
    """
    coef = _row_weights(mask, tokens.numel(), 1.0, hidden)
    loss, nll, wts = _weighted_nll(hidden, weight, bias, tokens, coef, chunk, token_weight)
    return loss, {"loss": loss.detach(), "nll": torch.dot(coef, nll), "weight": torch.dot(coef, wts)}


def _group_nll(hidden, tokens, sizes, weights, masks, weight, bias, chunk):
    """The weighted per-group mean NLLs of consecutive row groups of one stacked batch.

    hidden (S, T, H), tokens (S, T) with S = sum(sizes); group k is the next sizes[k] sequences,
    weighted by weights[k], masked by masks[k] (n_k, T) or None
    -> (scalar sum_k w_k mean NLL_k, detached per-group mean NLLs [k]).
    The groups just give different weights to the rows of one weighted NLL, so the stacked
    batch needs no split or copy.
    """
    T = tokens.shape[1]
    counts = [n * T for n in sizes]
    means = [_row_weights(m, c, 1.0, hidden) for m, c in zip(masks, counts)]  # per group: (n_k T,)
    coef = torch.cat([w * r for w, r in zip(weights, means)])  # (S T,)
    loss, nll, _ = _weighted_nll(hidden, weight, bias, tokens, coef, chunk)
    return loss, [torch.dot(r, part) for r, part in zip(means, nll.split(counts))]


def fused_mixture_loss(hidden: torch.Tensor, tokens: list, weights: list, weight: torch.Tensor, bias: torch.Tensor,
                       masks: Optional[list] = None, names: Optional[Sequence] = None, chunk: Optional[int] = None):
    """``mixture_loss`` (losses.py) on one forward pass over the groups stacked in a batch.

    hidden (S, T, H) is the model's hidden states of ``torch.cat(tokens)``; tokens[k] (n_k, T),
    weights[k] floats, masks[k] (n_k, T) or None, names[k] a str or None -> (scalar
    ``sum_k w_k * mean NLL of group k``, {"mix_nll": the loss, "nll_<names[k]>": group k's mean NLL},
    detached). The mediator's loss ``L_M`` is two groups of weight 1/2, real then fake.
    """
    masks = masks if masks is not None else [None] * len(tokens)
    names = names if names is not None else [None] * len(tokens)
    loss, means = _group_nll(hidden, torch.cat(tokens), [len(x) for x in tokens], weights, masks,
                             weight, bias, chunk)
    return loss, {"mix_nll": loss.detach(), **{f"nll_{n}": m for n, m in zip(names, means) if n is not None}}


# ----------------------------------------------------------------------------- CoT generator KL

def _kl_chunks(g_hidden, g_weight, g_bias, m_hidden, m_weight, m_bias, coef, want, chunk):
    """Per-row KL(softmax(zg) || softmax(zm)) and optionally the gradients of ``sum_r coef_r kl_r``
    w.r.t. G's hidden, weight and bias; zg = g_hidden @ g_weight.T + g_bias, zm likewise for M,
    or, when ``m_weight`` is None, zm = m_hidden: M's logits (N, V) themselves (any row offset:
    log-probabilities will do).

    g_hidden (N, Hg), m_hidden (N, Hm), weights (V, Hg) / (V, Hm), coef (N,)
    -> kl (N,), grad_g_hidden (N, Hg) | None, grad_g_weight (V, Hg) | None, grad_g_bias (V,) | None.

    With shifted logits zg' = zg - max zg, zm' = zm - max zm, d = zg' - zm', e = exp(zg'),
    s_g = sum e, s_m = sum exp(zm'): log p - log q = d + c with the row constant
    c = log s_m - log s_g, so kl = E_p[d] + c, and d kl / d zg = p (d - E_p[d]): c cancels.
    One exponential per element of each slab (autograd's version needs three for G's side).
    """
    N, Hg = g_hidden.shape
    kl = g_hidden.new_empty(N)
    g_h = g_hidden.new_empty(N, Hg) if want[0] else None
    g_w = torch.zeros_like(g_weight) if want[1] else None
    g_b = torch.zeros_like(g_bias) if want[2] and g_bias is not None else None
    grad = any(want)
    slabs = g_hidden.new_empty(3, min(chunk, N), g_weight.shape[0])  # three (n, V), reused by every chunk
    for i in range(0, N, chunk):
        h = g_hidden[i:i + chunk]  # (n, Hg)
        n = h.shape[0]
        zg = output_logits(h, g_weight.t(), g_bias, slabs[0, :n])  # (n, V) G's logits
        zm = (output_logits(m_hidden[i:i + n], m_weight.t(), m_bias, slabs[1, :n]) if m_weight is not None
              else slabs[1, :n].copy_(m_hidden[i:i + n]))  # (n, V) M's logits
        zg.sub_(zg.amax(dim=1, keepdim=True))
        zm.sub_(zm.amax(dim=1, keepdim=True))
        d = torch.sub(zg, zm, out=slabs[2, :n])  # (n, V)
        s_m = zm.exp_().sum(dim=1, keepdim=True)  # (n, 1); zm's buffer is free from here on
        e = zg.exp_()  # (n, V) unnormalised p
        s_g = e.sum(dim=1, keepdim=True)  # (n, 1)
        ed = torch.mul(e, d, out=zm)  # (n, V)
        mean_d = ed.sum(dim=1, keepdim=True).div_(s_g)  # (n, 1) E_p[d]
        kl[i:i + n] = (mean_d + s_m.log() - s_g.log()).squeeze(1)
        if not grad:
            continue
        # d kl_r / d zg = (e (d - E_p[d]))_r / s_g,r: the (n, V) part is formed in one pass, and
        # the row scale a = coef / s_g is applied on the (n, H) side of the products instead.
        g = ed.addcmul_(e, mean_d, value=-1.0)  # (n, V) e * (d - E_p[d])
        a = coef[i:i + n, None] / s_g  # (n, 1)
        if g_h is not None:
            torch.mm(g, g_weight, out=g_h[i:i + n]).mul_(a)
        if g_w is not None:
            g_w.addmm_(g.t(), h * a)
        if g_b is not None:
            g_b.addmv_(g.t(), a.squeeze(1))
    return kl, g_h, g_w, g_b


class _FusedKL(torch.autograd.Function):
    """``sum_r coef_r KL_r(G || M)`` with both output layers inside; gradient into G's inputs only.

    As ``_FusedNLL``: gradients computed in forward, scaled in backward; M's inputs get None.
    """

    @staticmethod
    def forward(ctx, g_hidden, g_weight, g_bias, m_hidden, m_weight, m_bias, coef, chunk):
        want = ctx.needs_input_grad[:3]
        kl, *grads = _kl_chunks(g_hidden, g_weight, g_bias, m_hidden, m_weight, m_bias, coef, want, chunk)
        _save_grads(ctx, want, grads)
        ctx.mark_non_differentiable(kl)
        return torch.dot(coef, kl), kl

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_kl):
        return (*_saved_grads(ctx, grad_loss), None, None, None, None, None)


def fused_cot_generator_loss(g_hidden: torch.Tensor, g_weight: torch.Tensor, g_bias: torch.Tensor,
                             m_hidden: torch.Tensor, m_weight: torch.Tensor, m_bias: torch.Tensor,
                             mask: Optional[torch.Tensor] = None, chunk: Optional[int] = None):
    """``cot_generator_loss(F.linear(g_hidden, g_weight, g_bias), F.linear(m_hidden, m_weight, m_bias), mask)``.

    g_hidden (B, T, Hg), m_hidden (B, T, Hm), weights (V, Hg) / (V, Hm), biases (V,), mask (B, T)
    or None -> (scalar mean per-position KL(pi_G || pi_M), {"kl": detached loss}).
    The mediator is held fixed: its tensors are detached, no gradient reaches them.
    """
    m_w, m_b = m_weight.detach(), m_bias.detach() if m_bias is not None else None
    return _fused_kl(g_hidden, g_weight, g_bias, m_hidden, m_w, m_b, mask, chunk)


def fused_kl_to_log_probs(g_hidden: torch.Tensor, g_weight: torch.Tensor, g_bias: torch.Tensor,
                          m_log_probs: torch.Tensor, mask: Optional[torch.Tensor] = None,
                          chunk: Optional[int] = None):
    """``cot_generator_loss(F.linear(g_hidden, g_weight, g_bias), m_log_probs, mask)``: CoT's
    generator loss against a mediator given by its next-token log-probabilities (B, T, V), such
    as the exact mixture (:func:`cot_ray.models.losses.exact_mixture_log_probs`); G's side fused
    as in :func:`fused_cot_generator_loss`."""
    return _fused_kl(g_hidden, g_weight, g_bias, m_log_probs, None, None, mask, chunk)


def _fused_kl(g_hidden, g_weight, g_bias, m_hidden, m_w, m_b, mask, chunk):
    """The mean per-position KL(pi_G || pi_M) of :func:`_kl_chunks` over the counted rows."""
    g_h = g_hidden.reshape(-1, g_hidden.shape[-1])  # (N, Hg)
    m_h = m_hidden.detach().reshape(-1, m_hidden.shape[-1])  # (N, Hm) or (N, V) logits
    coef = _row_weights(mask, g_h.shape[0], 1.0, g_hidden)
    chunk = chunk_rows(chunk)
    keep = _counted_rows(coef)
    if keep is not None:  # padding rows are skipped, as in _weighted_nll
        g_h, m_h, coef = g_h.index_select(0, keep), m_h.index_select(0, keep), coef[keep]
    if _needs_grad(g_hidden, g_weight, g_bias):
        loss, _ = _FusedKL.apply(g_h, g_weight, g_bias, m_h, m_w, m_b, coef, chunk)
    else:
        with torch.no_grad():
            kl = _kl_chunks(g_h, g_weight, g_bias, m_h, m_w, m_b, coef, (False, False, False), chunk)[0]
        loss = torch.dot(coef, kl)
    return loss, {"kl": loss.detach()}
