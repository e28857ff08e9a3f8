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
- per-token divergences that move long before the sequence JSD leaves ln 2:
  entropy_g, G's entropy rate (its mean per-token NLL of its own samples);
  kl_forward = KL(P || G) per token = NLL_test - H(P), with H(P) the oracle's NLL of the same
  test sequences (a paired estimate); kl_reverse = KL(G || P) per token = NLL_oracle - H(G),
  on the same samples of G.

Model selection, on any data with a validation set: nll_valid, G's NLL of the validation
sequences (never the test set), and on the oracle balanced_valid = NLL_oracle + NLL_valid.

Memorisation diagnostics, on any data: nll_train, G's NLL of ``eval.num_train`` training
sequences (compare with nll_test); with a mediator, m_nll_train and m_nll_test, M's NLL of
those training and of the held-out sequences (its fit to the real half of its mixture), and on
the oracle m_nll_fake, M's NLL of the evaluation's samples of G. Models are scored in eval
mode (no dropout).

On text (no oracle), Texygen's real-data metrics instead:

- bleu2..bleu5: mean sentence BLEU-n (nltk's ``sentence_bleu``, smoothing method1) of
  ``eval.bleu_samples`` generated sentences, each against the WHOLE test set as references
  (higher: samples look like real sentences). Tokens are words: a sample is cut at its first
  <eos> and padding dropped; the references are the test sentences as read (uncut, unknown
  words kept as words, so a generated <unk> never matches).
- self_bleu2..self_bleu5: mean BLEU-n of each of those samples against the other samples
  (higher: less diverse). All four orders are reported, as Texygen does; BLEU-4/self-BLEU-4 is
  the usual single pair to quote.
- nll_test, as above, counting each sentence's words and its <eos> but not the padding.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Sequence

import torch

from .bleu import BleuScorer, self_bleu
from .metric_names import BLEU_ORDERS
from .models import LanguageModel, sequence_log_probs
from .models.interface import MaskFn
from .text import loss_mask

LN2 = math.log(2.0)


def count_tokens(seqs: torch.Tensor, mask_fn: Optional[MaskFn] = None) -> int:
    if mask_fn is None:
        return seqs.numel()
    m = mask_fn(seqs)
    return seqs.numel() if m is None else int(m.sum())


@torch.no_grad()
def sample_with_log_probs(model: LanguageModel, n: int, seq_len: int, seed: int, batch_size: int = 512,
                          temperature: float = 1.0, stop_id: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples from ``model`` at ``temperature`` and their exact log-probabilities under
    the tempered model: (n, T) int64, (n,) float64. ``stop_id``: as in :meth:`LanguageModel.sample`."""
    model.eval()
    gen = torch.Generator(device=model.device).manual_seed(seed)
    seqs, lps = [], []
    for i in range(0, n, batch_size):
        s, lp = model.sample(min(batch_size, n - i), seq_len, gen, with_log_prob=True, temperature=temperature,
                             stop_id=stop_id)
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


def padding_mask_fn(eos_id: Optional[int]) -> Optional[MaskFn]:
    """The mask of data whose sentences end at ``eos_id``: the positions after it are padding and
    count in no NLL. None for fixed-length data (``eos_id`` None), where every position counts."""
    return None if eos_id is None else functools.partial(loss_mask, eos_id=eos_id)


class Evaluator:
    """Computes every metric for given G (and M) models; caches what depends only on the data.

    ``train`` (optional): training sequences for the memorisation diagnostics (nll_train and
    m_nll_train); the first ``num_train`` of them are scored. ``test_logp``: the oracle's
    log-probabilities of ``test`` when the data set has them cached.
    """

    def __init__(self, test: torch.Tensor, seq_len: int, oracle: Optional[LanguageModel] = None,
                 mask_fn: Optional[MaskFn] = None, num_samples: int = 9984, num_test: int = 9984,
                 train: Optional[torch.Tensor] = None, num_train: int = 0, test_logp: Optional[torch.Tensor] = None,
                 valid: Optional[torch.Tensor] = None):
        self.test = self._by_length(test[:num_test], mask_fn, oracle)
        self.train = None if train is None or num_train <= 0 else self._by_length(train[:num_train], mask_fn, oracle)
        self.valid = None if valid is None or len(valid) == 0 else self._by_length(valid, mask_fn, oracle)
        self.seq_len = seq_len
        self.oracle = oracle
        self.mask_fn = mask_fn
        self.num_samples = num_samples
        self.test_tokens = count_tokens(self.test, mask_fn)
        self.train_tokens = 0 if self.train is None else count_tokens(self.train, mask_fn)
        self.valid_tokens = 0 if self.valid is None else count_tokens(self.valid, mask_fn)
        if oracle is None:
            self._p_on_p = None
        elif test_logp is not None:  # cached with the data set: the same numbers, computed once
            self._p_on_p = test_logp[:num_test].to(torch.float64)
        else:
            self._p_on_p = sequence_log_probs(oracle, self.test)

    @staticmethod
    def _by_length(seqs: torch.Tensor, mask_fn: Optional[MaskFn], oracle: Optional[LanguageModel]) -> torch.Tensor:
        mask = mask_fn(seqs) if mask_fn is not None and oracle is None else None
        if mask is None:
            return seqs
        return seqs[torch.argsort(mask.sum(dim=1), stable=True)]  # batches of similar length waste little padding

    def to(self, device) -> "Evaluator":
        """Score with the oracle on ``device`` (the generator's); -> self."""
        if self.oracle is not None:
            self.oracle = self.oracle.to(device)
        return self

    def _nll(self, model: LanguageModel, seqs: torch.Tensor, tokens: int) -> float:
        return float(-sequence_log_probs(model, seqs, self.mask_fn).sum() / tokens)

    def evaluate(self, generator: LanguageModel, mediator: Optional[LanguageModel], seed: int, temperature: float = 1.0) -> dict:
        """Every metric of G at ``temperature`` (softmax(logits / T): its samples and its
        probabilities; the mediator and the oracle are never tempered)."""
        return self.evaluate_temperatures(generator, mediator, seed, (temperature,))[0]

    def evaluate_temperatures(self, generator: LanguageModel, mediator: Optional[LanguageModel], seed: int,
                              temperatures) -> list[dict]:
        """:meth:`evaluate` at each temperature; -> one dict each, in order. What does not depend
        on T is computed once (one pass over the test and training sequences scores G at every
        T; the mediator's scores of them); the samples are drawn anew at each T, from ``seed``."""
        temps = tuple(temperatures)
        g_on_p = sequence_log_probs(generator, self.test, self.mask_fn, temperatures=temps)  # (K, N)
        g_on_train = None if self.train is None else \
            sequence_log_probs(generator, self.train, self.mask_fn, temperatures=temps)
        g_on_valid = None if self.valid is None else \
            sequence_log_probs(generator, self.valid, self.mask_fn, temperatures=temps)
        shared: dict = {}
        m_on_p = None
        if mediator is not None:
            m_on_p = sequence_log_probs(mediator, self.test, self.mask_fn)
            shared["m_nll_test"] = float(-m_on_p.sum() / self.test_tokens)
            if self.train is not None:
                shared["m_nll_train"] = self._nll(mediator, self.train, self.train_tokens)
        out = []
        for k, temp in enumerate(temps):
            res = {"nll_test": float(-g_on_p[k].sum() / self.test_tokens)}
            if g_on_train is not None:
                res["nll_train"] = float(-g_on_train[k].sum() / self.train_tokens)
            if g_on_valid is not None:
                res["nll_valid"] = float(-g_on_valid[k].sum() / self.valid_tokens)
            res.update(shared)
            if self.oracle is not None:
                res.update(self._sample_metrics(generator, mediator, seed, temp, g_on_p[k], m_on_p))
                if "nll_valid" in res:
                    res["balanced_valid"] = res["nll_oracle"] + res["nll_valid"]
            out.append(res)
        return out

    def _sample_metrics(self, generator: LanguageModel, mediator: Optional[LanguageModel], seed: int, temp: float,
                        g_on_p: torch.Tensor, m_on_p: Optional[torch.Tensor]) -> dict:
        """The oracle metrics that need G's samples (drawn at ``temp``)."""
        samples, g_on_g = sample_with_log_probs(generator, self.num_samples, self.seq_len, seed, temperature=temp)
        p_on_g = sequence_log_probs(self.oracle, samples)
        res = {"nll_oracle": float(-p_on_g.sum() / samples.numel())}
        res["balanced_nll"] = res["nll_oracle"] + float(-g_on_p.sum() / self.test_tokens)
        res["entropy_g"] = float(-g_on_g.sum() / samples.numel())
        res["kl_forward"] = float((self._p_on_p - g_on_p).sum() / self.test_tokens)
        res["kl_reverse"] = float((g_on_g - p_on_g).sum() / samples.numel())
        res["jsd"] = jsd_monte_carlo(self._p_on_p, g_on_p, p_on_g, g_on_g)
        if mediator is not None:
            m_on_g = sequence_log_probs(mediator, samples, self.mask_fn)
            res["m_nll_fake"] = float(-m_on_g.sum() / samples.numel())
            res["jsd_mediator"] = mediator_jsd(self._p_on_p, m_on_p, g_on_g, m_on_g)
        return res


class TextEvaluator(Evaluator):
    """NLL_test, BLEU-2..5 against the test set and self-BLEU-2..5 of generated sentences; with
    ``lm`` (a model trained by MLE on the same training split) also Caccia et al.'s LM score,
    ``lm_score``: the per-token NLL of the same sentences under ``lm``, each counted up to and
    with its <eos> (on the oracle, NLL_oracle is that score under the true distribution).

    The reference tables are built once here (one evaluator per run), so each evaluation only
    samples ``bleu_samples`` sentences and scores them.
    """

    def __init__(self, test: torch.Tensor, seq_len: int, references: Sequence[Sequence[str]],
                 to_tokens: Callable[[list], list], eos_id: int, bleu_samples: int = 1000, num_test: int = 9984,
                 train: Optional[torch.Tensor] = None, num_train: int = 0, valid: Optional[torch.Tensor] = None,
                 lm: Optional[LanguageModel] = None):
        if bleu_samples < 2:
            raise ValueError(f"bleu_samples must be >= 2 (self-BLEU needs two sentences), got {bleu_samples}")
        super().__init__(test, seq_len, None, padding_mask_fn(eos_id), bleu_samples, num_test, train, num_train,
                         valid=valid)
        self.to_tokens = to_tokens
        self.eos_id = eos_id  # sampling stops once every sentence has ended (the words are the same)
        self.scorer = BleuScorer(references, max_n=max(BLEU_ORDERS))
        self.lm = lm

    def evaluate_temperatures(self, generator: LanguageModel, mediator: Optional[LanguageModel], seed: int,
                              temperatures) -> list[dict]:
        temps = tuple(temperatures)
        out = super().evaluate_temperatures(generator, mediator, seed, temps)
        for res, temp in zip(out, temps):
            samples, _ = sample_with_log_probs(generator, self.num_samples, self.seq_len, seed, temperature=temp,
                                               stop_id=self.eos_id)
            hyps = [self.to_tokens(row) for row in samples.tolist()]
            for n in BLEU_ORDERS:
                res[f"bleu{n}"] = self.scorer.score(hyps, n)
            for n in BLEU_ORDERS:
                res[f"self_bleu{n}"] = self_bleu(hyps, n)
            if self.lm is not None:
                res["lm_score"] = lm_score(self.lm, samples, self.mask_fn)
        return out


def lm_score(lm: LanguageModel, samples: torch.Tensor, mask_fn: MaskFn) -> float:
    """Mean per-token NLL of ``samples`` (N, T) under ``lm``, over the tokens ``mask_fn`` counts."""
    tokens = float(mask_fn(samples).sum())
    return float(-sequence_log_probs(lm, samples, mask_fn).sum() / max(tokens, 1.0))


def make_evaluator(data, eval_cfg, num_samples: Optional[int] = None, lm: Optional[LanguageModel] = None) -> Evaluator:
    """The evaluator of a ``Dataset`` under an ``EvalConfig``: exact oracle metrics or text metrics.
    On data with an EOS (``data.eos_id``), the padding after each sentence's end counts in no NLL.

    ``num_samples`` overrides the generated-sample count (``eval.num_samples`` for the oracle,
    ``eval.bleu_samples`` for text); ``lm`` (text only) adds the LM score (:class:`TextEvaluator`).
    """
    if data.vocab is not None and data.references is not None:
        n = num_samples if num_samples is not None else eval_cfg.bleu_samples
        return TextEvaluator(data.test, data.seq_len, data.references, data.tokens, data.eos_id, n,
                             eval_cfg.num_test, data.train, eval_cfg.num_train, data.valid, lm)
    if lm is not None:
        raise ValueError("the LM score is a text metric: on the oracle, nll_oracle is the exact one")
    n = num_samples if num_samples is not None else eval_cfg.num_samples
    return Evaluator(data.test, data.seq_len, data.oracle, padding_mask_fn(data.eos_id), n, eval_cfg.num_test,
                     data.train, eval_cfg.num_train, data.test_logp, data.valid)
