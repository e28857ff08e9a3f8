"""CoT and MLE losses as pure functions of logits: each returns ``(scalar, stats)``.

These are the references: each is the formula written with torch ops and differentiated by
autograd. Training runs their fused twins (fused.py), which are tested against them.

Shapes: logits (B, T, V), tokens (B, T), mask (B, T) float with 1 where a token counts
(None: every position counts). Per-token means are taken over the counted positions.
"""

from __future__ import annotations

from typing import Optional, Sequence

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

    Its minimiser over all distributions is the mixture (P + G) / 2: the two-group
    :func:`mixture_loss`. (The authors' logs call the value "balanced_nll"; here that name is
    the evaluation metric NLL_oracle + NLL_test of the paper, and this loss is ``mix_nll``.)
    """
    return mixture_loss([logits_real, logits_fake], [real, fake], [0.5, 0.5], [mask_real, mask_fake],
                        names=("real", "fake"))


def mixture_loss(logits: list, tokens: list, weights: list, masks: Optional[list] = None,
                 names: Optional[Sequence] = None):
    """MLE on a weighted mixture of groups: ``sum_k w_k * mean NLL of group k``.

    ``logits[k]`` (n_k, T, V) and ``tokens[k]`` (n_k, T) are group k, a sample of the
    distribution D_k; with weights summing to 1 the expected loss is the cross-entropy of the
    model with ``sum_k w_k D_k`` (per token), minimised by that mixture. Two groups of weight
    1/2 give :func:`mediator_loss`; nested CoT's inner mediators use more. Stats: the loss
    as ``mix_nll`` and group k's mean NLL as ``nll_<names[k]>`` (None: not reported).
    """
    masks = masks if masks is not None else [None] * len(tokens)
    names = names if names is not None else [None] * len(tokens)
    nlls = [_masked_mean(token_nll(lg, x), m) for lg, x, m in zip(logits, tokens, masks)]
    loss = sum(w * nll for w, nll in zip(weights, nlls))
    return loss, {"mix_nll": loss.detach(), **{f"nll_{n}": v.detach() for n, v in zip(names, nlls) if n is not None}}


def step_kl(g_logits: torch.Tensor, m_logits: torch.Tensor) -> torch.Tensor:
    """(B, T, V), (B, T, V) -> (B, T) KL(pi_G || pi_M) at each position, gradient into G only:
    ``sum_v p_v (log p_v - log q_v)`` with p = softmax(g_logits), q = softmax(m_logits), by autograd."""
    log_p = F.log_softmax(g_logits, dim=-1)
    log_q = F.log_softmax(m_logits.detach(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def cot_generator_loss(g_logits: torch.Tensor, m_logits: torch.Tensor, mask: Optional[torch.Tensor] = None):
    """CoT's generator objective on G's own samples, mediator held fixed:

    ``L_G = mean over (b, t) of sum_v pi_G(v|s<t) (log pi_G(v|s<t) - log pi_M(v|s<t))``.
    The whole vocabulary is summed: no sampled actions, no REINFORCE.
    """
    loss = _masked_mean(step_kl(g_logits, m_logits), mask)
    return loss, {"kl": loss.detach()}
