"""CoT and MLE losses as pure functions of logits: each returns ``(scalar, stats)``.

Shapes: logits (B, T, V), tokens (B, T), mask (B, T) float with 1 where a token counts
(None: every position counts). Per-token means are taken over the counted positions.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def _masked_mean(x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    if mask is None:
        return x.mean()
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def token_nll(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(B, T, V), (B, T) -> (B, T) negative log-likelihood of each token."""
    B, T, V = logits.shape
    return F.cross_entropy(logits.reshape(B * T, V), tokens.reshape(B * T), reduction="none").view(B, T)


def mle_loss(logits: torch.Tensor, tokens: torch.Tensor, mask: Optional[torch.Tensor] = None):
    """Mean per-token NLL of ``tokens`` under the model: the MLE objective."""
    loss = _masked_mean(token_nll(logits, tokens), mask)
    return loss, {"nll": loss.detach()}


def mediator_loss(logits_real: torch.Tensor, real: torch.Tensor,
                  logits_fake: torch.Tensor, fake: torch.Tensor,
                  mask_real: Optional[torch.Tensor] = None, mask_fake: Optional[torch.Tensor] = None):
    """``L_M = -1/2 (mean log M(real) + mean log M(fake))``: MLE on the balanced mix.

    Its minimiser over all distributions is the mixture (P + G) / 2. The authors' logs call
    the value "balanced_nll".
    """
    nll_real = _masked_mean(token_nll(logits_real, real), mask_real)
    nll_fake = _masked_mean(token_nll(logits_fake, fake), mask_fake)
    loss = 0.5 * (nll_real + nll_fake)
    return loss, {"balanced_nll": loss.detach(), "nll_real": nll_real.detach(),
                  "nll_fake": nll_fake.detach()}


def mixture_loss(logits: list, tokens: list, weights: list, masks: Optional[list] = None):
    """MLE on a weighted mixture of groups: ``sum_k w_k * mean NLL of group k``.

    ``logits[k]`` (n_k, T, V) and ``tokens[k]`` (n_k, T) are group k, a sample of the
    distribution D_k; with weights summing to 1 the expected loss is the cross-entropy of the
    model with ``sum_k w_k D_k`` (per token), minimised by that mixture. Two groups of weight
    1/2 give :func:`mediator_loss`; nested CoT's inner mediators use more. Stats: the loss
    as ``balanced_nll`` and the last group's mean NLL as ``nll_own`` (nested CoT puts the
    outer model's own samples last).
    """
    masks = masks if masks is not None else [None] * len(tokens)
    nlls = [_masked_mean(token_nll(lg, x), m) for lg, x, m in zip(logits, tokens, masks)]
    loss = sum(w * nll for w, nll in zip(weights, nlls))
    return loss, {"balanced_nll": loss.detach(), "nll_own": nlls[-1].detach()}


class _StepKL(torch.autograd.Function):
    """Per-position KL(softmax(g) || softmax(m)) with a hand-written gradient.

    Forward: kl = sum_v p_v (log p_v - log q_v), p = softmax(g), q = softmax(m).
    Backward: d kl / d g_j = p_j (log p_j - log q_j - kl); no gradient flows into m.
    Fusing the two saves several (B, T, V) temporaries compared with autograd, which matters
    because those full-vocabulary tensors, not the matrix products, dominate a CoT step on CPU.
    """

    @staticmethod
    def forward(ctx, g_logits, m_logits):
        logp = F.log_softmax(g_logits, dim=-1)
        diff = logp - F.log_softmax(m_logits, dim=-1)  # log p - log q
        p = logp.exp_()
        kl = (p * diff).sum(dim=-1)  # (B, T)
        ctx.save_for_backward(p, diff, kl)
        return kl

    @staticmethod
    def backward(ctx, grad_kl):
        p, diff, kl = ctx.saved_tensors
        # Out of place first: the saved tensors must survive a second backward (retain_graph,
        # gradcheck); the in-place products that follow act on the fresh gradient buffer.
        grad = (diff - kl.unsqueeze(-1)).mul_(p).mul_(grad_kl.unsqueeze(-1))
        return grad, None


def step_kl(g_logits: torch.Tensor, m_logits: torch.Tensor) -> torch.Tensor:
    """(B, T, V), (B, T, V) -> (B, T) KL(pi_G || pi_M) at each position, gradient into G only."""
    return _StepKL.apply(g_logits, m_logits.detach())


def cot_generator_loss(g_logits: torch.Tensor, m_logits: torch.Tensor, mask: Optional[torch.Tensor] = None):
    """CoT's generator objective on G's own samples, mediator held fixed:

    ``L_G = mean over (b, t) of sum_v pi_G(v|s<t) (log pi_G(v|s<t) - log pi_M(v|s<t))``.
    The whole vocabulary is summed: no sampled actions, no REINFORCE.
    """
    loss = _masked_mean(step_kl(g_logits, m_logits), mask)
    return loss, {"kl": loss.detach()}
