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


# ----------------------------------------------------------------------------- reweighted MLE

def mixce_weights(p: torch.Tensor, eta: float) -> torch.Tensor:
    """MixCE's token weights (Zhang et al., ACL 2023): ``eta + (1 - eta) * p``, where ``p`` is
    the model's own probability of the data token, detached. ``eta`` is the share of the forward
    cross-entropy (MLE) in the mix; the ``(1 - eta) p`` part is the paper's token-level
    approximation of the reverse cross-entropy's gradient."""
    return eta + (1.0 - eta) * p.detach()


def tailr_weights(p: torch.Tensor, gamma: float, min_weight: float) -> torch.Tensor:
    """TaiLr's token weights (Ji et al., ICLR 2023): ``p / (gamma + (1 - gamma) p)``, the
    density ratio of the model to its proxy mixture with the data, detached and clamped to
    ``[min_weight, 1]``. gamma = 0 gives weight 1 (MLE); gamma = 1 gives ``p``."""
    p = p.detach()
    return (p / (gamma + (1.0 - gamma) * p)).clamp(min_weight, 1.0)


def weighted_mle_loss(logits: torch.Tensor, tokens: torch.Tensor, token_weight, mask: Optional[torch.Tensor] = None):
    """MLE with a weight on each token's NLL computed from the model's own (detached)
    probability of that token: ``mean over counted (b, t) of w(p_bt) * nll_bt``, where
    ``token_weight`` maps probabilities to weights (:func:`mixce_weights`,
    :func:`tailr_weights`). The mean divides by the number of counted tokens, not the weights'
    sum (as both papers' code does). Stats: the loss, the plain mean NLL and the mean weight."""
    nll = token_nll(logits, tokens)
    w = token_weight(torch.exp(-nll.detach()))
    loss = _masked_mean(w * nll, mask)
    return loss, {"loss": loss.detach(), "nll": _masked_mean(nll.detach(), mask), "weight": _masked_mean(w, mask)}


# ----------------------------------------------------------------------------- the exact mediator

def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T) with column t the sum of columns < t (column 0: 0)."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1].cumsum(1)], dim=1)


def exact_mixture_log_probs(p_logits: torch.Tensor, g_logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The next-token log-probabilities of the exact mixture M* = (P + G) / 2 along ``tokens``.

    p_logits, g_logits (B, T, V): the data distribution's (the oracle's) and G's next-token
    logits at every position of tokens (B, T) -> (B, T, V) log pi_M*(v | s_t), where s_t is the
    prefix x_<t and, with P(s), G(s) the prefix probabilities,

        pi_M*(v | s) = (P(s) pi_P(v | s) + G(s) pi_G(v | s)) / (P(s) + G(s)),

    the conditional of the mixture (the 1/2s cancel), computed in log space: a prefix weight is
    a sigmoid of log P(s) - log G(s), which float32 holds for any length. Detached: the mediator
    is held fixed in CoT's generator step.
    """
    log_p = F.log_softmax(p_logits.detach(), dim=-1)
    log_g = F.log_softmax(g_logits.detach(), dim=-1)
    idx = tokens.unsqueeze(-1)
    step_p, step_g = log_p.gather(-1, idx).squeeze(-1), log_g.gather(-1, idx).squeeze(-1)  # (B, T)
    prefix_p, prefix_g = _exclusive_cumsum(step_p), _exclusive_cumsum(step_g)  # (B, T) log P(x_<t), log G(x_<t)
    norm = torch.logaddexp(prefix_p, prefix_g).unsqueeze(-1)  # (B, T, 1)
    return torch.logaddexp(prefix_p.unsqueeze(-1) + log_p, prefix_g.unsqueeze(-1) + log_g) - norm
