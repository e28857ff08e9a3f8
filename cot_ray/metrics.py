"""Exact quality metrics on the synthetic Turing test (and NLL_test on any data).

All log-probabilities are sequence-level, in nats, accumulated in float64. Per-token figures
divide by the number of counted tokens.

- NLL_oracle: the oracle's mean per-token NLL of G's samples (lower: G's samples are likelier).
- NLL_test: G's mean per-token NLL of held-out real sequences (lower: G covers the data).
- balanced NLL: NLL_oracle + NLL_test.
- JSD(P || G): Monte Carlo over P's samples (the held-out set) and G's samples, with exact
  log-probabilities of both models, in [0, ln 2].
- the mediator's JSD estimate: CoT's cooperative objective with the oracle's entropy shifted in,
  ``1/2 (E_P[log P - log M] + E_G[log G - log M])``; it equals the JSD when M is the exact
  mixture and is an upper bound in expectation otherwise.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch

from .models import LSTMLM

LN2 = math.log(2.0)
MaskFn = Callable[[torch.Tensor], Optional[torch.Tensor]]


@torch.no_grad()
def sequence_log_probs(model: LSTMLM, seqs: torch.Tensor, mask_fn: Optional[MaskFn] = None,
                       batch_size: int = 512) -> torch.Tensor:
    """(N, T) -> (N,) float64 log p(x) under ``model`` (in eval mode: no dropout)."""
    was_training = model.training
    model.eval()
    dev = model.out.weight.device
    out = []
    for i in range(0, len(seqs), batch_size):
        x = seqs[i:i + batch_size].to(dev)
        out.append(model.sequence_log_prob(x, mask_fn(x) if mask_fn else None).double().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


def count_tokens(seqs: torch.Tensor, mask_fn: Optional[MaskFn] = None) -> int:
    if mask_fn is None:
        return seqs.numel()
    m = mask_fn(seqs)
    return seqs.numel() if m is None else int(m.sum())


@torch.no_grad()
def sample_with_log_probs(model: LSTMLM, n: int, seq_len: int, seed: int,
                          batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples from ``model`` and their exact log-probabilities: (n, T) int64, (n,) float64."""
    model.eval()
    gen = torch.Generator(device=model.out.weight.device).manual_seed(seed)
    seqs, lps = [], []
    for i in range(0, n, batch_size):
        s, lp = model.sample(min(batch_size, n - i), seq_len, gen, with_log_prob=True)
        seqs.append(s.cpu())
        lps.append(lp.double().cpu())
    return torch.cat(seqs), torch.cat(lps)


def _log_mix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log((exp a + exp b) / 2)."""
    return torch.logaddexp(a, b) - LN2


def jsd_monte_carlo(p_on_p: torch.Tensor, g_on_p: torch.Tensor,
                    p_on_g: torch.Tensor, g_on_g: torch.Tensor) -> float:
    """JSD(P || G) from exact log-probs of both models on samples of P (``*_on_p``) and of G."""
    kl_p = (p_on_p - _log_mix(p_on_p, g_on_p)).mean()
    kl_g = (g_on_g - _log_mix(p_on_g, g_on_g)).mean()
    return float(min(max(0.5 * (kl_p + kl_g), 0.0), LN2))


def mediator_jsd(p_on_p: torch.Tensor, m_on_p: torch.Tensor, g_on_g: torch.Tensor, m_on_g: torch.Tensor) -> float:
    """The mediator's estimate ``1/2 (E_P[log P - log M] + E_G[log G - log M])``.

    ``E_P[log P]`` is minus the oracle's (known) entropy, estimated on the held-out set; what
    M contributes is exactly its balanced NLL, the quantity the mediator step minimises.
    """
    return float(0.5 * ((p_on_p - m_on_p).mean() + (g_on_g - m_on_g).mean()))


class Evaluator:
    """Computes every metric for given G (and M) models; caches what depends only on the data."""

    def __init__(self, test: torch.Tensor, seq_len: int, oracle: Optional[LSTMLM] = None,
                 mask_fn: Optional[MaskFn] = None, num_samples: int = 9984, num_test: int = 9984):
        self.test = test[:num_test]
        self.seq_len = seq_len
        self.oracle = oracle
        self.mask_fn = mask_fn
        self.num_samples = num_samples
        self.test_tokens = count_tokens(self.test, mask_fn)
        self._p_on_p = None if oracle is None else sequence_log_probs(oracle, self.test)

    def evaluate(self, generator: LSTMLM, mediator: Optional[LSTMLM], seed: int) -> dict:
        g_on_p = sequence_log_probs(generator, self.test, self.mask_fn)
        res = {"nll_test": float(-g_on_p.sum() / self.test_tokens)}
        if self.oracle is None:
            return res
        samples, g_on_g = sample_with_log_probs(generator, self.num_samples, self.seq_len, seed)
        p_on_g = sequence_log_probs(self.oracle, samples)
        res["nll_oracle"] = float(-p_on_g.sum() / samples.numel())
        res["balanced_nll"] = res["nll_oracle"] + res["nll_test"]
        res["jsd"] = jsd_monte_carlo(self._p_on_p, g_on_p, p_on_g, g_on_g)
        if mediator is not None:
            m_on_p = sequence_log_probs(mediator, self.test, self.mask_fn)
            m_on_g = sequence_log_probs(mediator, samples, self.mask_fn)
            res["jsd_mediator"] = mediator_jsd(self._p_on_p, m_on_p, g_on_g, m_on_g)
        return res


def eval_seed(run_seed: int, iteration: int) -> int:
    """A seed for the evaluation at ``iteration`` that no training stream shares."""
    return int(np.random.SeedSequence([run_seed, iteration, 0xE7A1]).generate_state(1)[0])
