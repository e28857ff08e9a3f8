"""Metrics: JSD estimators against exact values, and the Evaluator against direct computations.

P and G are tiny LSTMLMs over vocabulary 3 and length 3, so every exact value is a sum over
the 27 sequences.
"""

import copy
import itertools
import math

import pytest
import torch

from cot_ray.metric_names import metric_keys
from cot_ray.metrics import (
    LN2,
    Evaluator,
    count_tokens,
    jsd_monte_carlo,
    mediator_jsd,
    sample_with_log_probs,
)
from cot_ray.model_config import LSTMConfig
from cot_ray.models import LSTMLM, sequence_log_probs

V, T = 3, 3
ALL = torch.tensor(list(itertools.product(range(V), repeat=T)))


# Tiny tensors: one intra-op thread (shared fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_lm(seed, init_std=1.0, hidden=8, dropout=0.0):
    m = LSTMLM(V, LSTMConfig(emb_dim=4, hidden_dim=hidden, init_std=init_std, dropout=dropout))
    m.init_weights(torch.Generator().manual_seed(seed))
    return m.eval()


@torch.no_grad()
def exact_log_probs(model):
    """(27,) float64 log-probabilities of every sequence."""
    return copy.deepcopy(model).double().eval().sequence_log_prob(ALL)


def exact_jsd(lp, lg):
    p, g = lp.exp(), lg.exp()
    m = 0.5 * (p + g)
    return 0.5 * ((p * (lp - m.log())).sum() + (g * (lg - m.log())).sum()).item()


def log_mix(a, b):
    return torch.logaddexp(a, b) - math.log(2.0)


# ----------------------------------------------------------------------------- JSD estimators

def test_jsd_is_zero_for_identical_models():
    gen = torch.Generator().manual_seed(0)
    on_p = -torch.rand(100, generator=gen, dtype=torch.float64) * 30
    on_g = -torch.rand(80, generator=gen, dtype=torch.float64) * 30
    assert jsd_monte_carlo(on_p, on_p, on_g, on_g) == pytest.approx(0.0, abs=1e-15)


def test_jsd_is_ln2_for_disjoint_supports():
    gen = torch.Generator().manual_seed(1)
    on_p = -torch.rand(100, generator=gen, dtype=torch.float64) * 30
    on_g = -torch.rand(80, generator=gen, dtype=torch.float64) * 30
    inf = torch.full_like(on_p, -math.inf)
    assert jsd_monte_carlo(on_p, inf, torch.full_like(on_g, -math.inf), on_g) == pytest.approx(LN2, abs=1e-15)
    # half the P samples impossible under G, G matching P elsewhere on its samples
    g_on_p = torch.where(torch.arange(100) % 2 == 0, on_p, inf)
    expected = 0.5 * (0.5 * LN2 + 0.5 * 0.0) + 0.5 * 0.0  # kl_p averages ln2 and 0; kl_g is 0
    assert jsd_monte_carlo(on_p, g_on_p, on_g, on_g) == pytest.approx(expected, abs=1e-15)


def test_jsd_is_clamped_to_zero_ln2():
    # a negative Monte Carlo estimate (possible on few samples) is reported as 0
    a, b = torch.tensor([math.log(0.1)]), torch.tensor([math.log(0.9)])
    assert jsd_monte_carlo(a, b, a, b) == 0.0
    assert jsd_monte_carlo(b, a, a, b) > 0.0


def test_jsd_monte_carlo_matches_the_exact_jsd():
    P, G = tiny_lm(0), tiny_lm(1)
    lp, lg = exact_log_probs(P), exact_log_probs(G)
    exact = exact_jsd(lp, lg)
    assert 0.02 < exact < LN2 - 0.1

    n = 40_000
    xp, p_on_p = sample_with_log_probs(P, n, T, seed=1)
    xg, g_on_g = sample_with_log_probs(G, n, T, seed=2)
    g_on_p, p_on_g = sequence_log_probs(G, xp), sequence_log_probs(P, xg)
    assert p_on_p.dtype == torch.float64
    est = jsd_monte_carlo(p_on_p, g_on_p, p_on_g, g_on_g)
    # the estimate is exactly the mean of the per-sample terms
    tp = p_on_p - log_mix(p_on_p, g_on_p)
    tg = g_on_g - log_mix(p_on_g, g_on_g)
    assert est == pytest.approx(0.5 * (tp.mean() + tg.mean()).item(), abs=1e-12)
    se = 0.5 * math.sqrt(tp.var().item() / n + tg.var().item() / n)
    assert se < 0.05 * exact
    assert abs(est - exact) < 5 * se


# ----------------------------------------------------------------------------- mediator JSD

def test_mediator_jsd_with_the_exact_mixture_is_the_jsd():
    lp, lg = exact_log_probs(tiny_lm(0)), exact_log_probs(tiny_lm(1))
    p, g = lp.exp(), lg.exp()
    lm = log_mix(lp, lg)
    n = len(ALL)
    # enumeration as a "sample": the mean over 27 rows of 27 * w(x) * f(x) is sum_x w(x) f(x)
    exact = mediator_jsd(n * p * lp, n * p * lm, n * g * lg, n * g * lm)
    assert exact == pytest.approx(exact_jsd(lp, lg), abs=1e-12)

    # any other mediator gives 1/2 (KL(P||M) + KL(G||M)) = JSD + KL((P+G)/2 || M) > JSD
    lo = exact_log_probs(tiny_lm(2))
    other = mediator_jsd(n * p * lp, n * p * lo, n * g * lg, n * g * lo)
    mix = lm.exp()
    assert other == pytest.approx(exact_jsd(lp, lg) + (mix * (lm - lo)).sum().item(), abs=1e-12)
    assert other > exact + 1e-3


def test_mediator_jsd_on_samples_equals_jsd_estimate_for_the_exact_mixture():
    P, G = tiny_lm(0), tiny_lm(1)
    xp, p_on_p = sample_with_log_probs(P, 3000, T, seed=3)
    xg, g_on_g = sample_with_log_probs(G, 3000, T, seed=4)
    g_on_p, p_on_g = sequence_log_probs(G, xp), sequence_log_probs(P, xg)
    m_on_p, m_on_g = log_mix(p_on_p, g_on_p), log_mix(p_on_g, g_on_g)
    assert mediator_jsd(p_on_p, m_on_p, g_on_g, m_on_g) == pytest.approx(
        jsd_monte_carlo(p_on_p, g_on_p, p_on_g, g_on_g), abs=1e-12)


# ----------------------------------------------------------------------------- helpers

def test_sequence_log_probs_uses_eval_mode_and_restores_it():
    m = tiny_lm(3, dropout=0.5).train()
    x = ALL.repeat(30, 1)  # 810 rows: two batches of 512
    lp = sequence_log_probs(m, x)
    assert m.training
    assert lp.dtype == torch.float64 and lp.shape == (810,)
    with torch.no_grad():
        ref = m.eval().sequence_log_prob(x).double()
    assert torch.allclose(lp, ref, atol=1e-5, rtol=0)
    with torch.no_grad():  # in training mode the forward drops out: evaluation must not
        dropped = m.train().sequence_log_prob(x).double()
    assert (dropped - ref).abs().max() > 1e-2
    m.eval()
    mask_fn = lambda s: (torch.arange(T) < 2).float().expand(len(s), T)  # noqa: E731
    with torch.no_grad():
        ref2 = m.sequence_log_prob(x, mask_fn(x)).double()
    assert torch.allclose(sequence_log_probs(m, x, mask_fn, batch_size=100), ref2, atol=1e-5, rtol=0)
    assert not torch.allclose(ref, ref2, atol=1e-2)  # the mask matters
    assert count_tokens(x, mask_fn) == 810 * 2 and count_tokens(x) == 810 * T
    assert sequence_log_probs(m, x[:0]).shape == (0,)
    assert not m.training  # eval mode is restored as well


def test_sample_with_log_probs_is_exact_and_seeded():
    G = tiny_lm(1)
    x, lp = sample_with_log_probs(G, 700, T, seed=5)
    assert x.shape == (700, T) and lp.dtype == torch.float64
    assert torch.allclose(lp, sequence_log_probs(G, x), atol=1e-5, rtol=0)
    x2, lp2 = sample_with_log_probs(G, 700, T, seed=5)
    assert torch.equal(x, x2) and torch.equal(lp, lp2)
    assert not torch.equal(x, sample_with_log_probs(G, 700, T, seed=6)[0])


# ----------------------------------------------------------------------------- Evaluator

def test_evaluator_matches_direct_computations():
    P, G, M = tiny_lm(0), tiny_lm(1), tiny_lm(2)
    test_set = P.sample(800, T, torch.Generator().manual_seed(7))
    train_set = P.sample(500, T, torch.Generator().manual_seed(3))
    ev = Evaluator(test_set, T, oracle=P, num_samples=600, num_test=650, train=train_set, num_train=300)
    res = ev.evaluate(G, M, seed=11)
    assert set(res) == set(metric_keys(text=False, mediator=True, valid=False))

    test = test_set[:650]
    with torch.no_grad():
        g_on_p = G.sequence_log_prob(test).double()
        p_on_p = P.sequence_log_prob(test).double()
        m_on_p = M.sequence_log_prob(test).double()
    assert res["nll_test"] == pytest.approx((-g_on_p.sum() / (650 * T)).item(), abs=1e-6)

    samples, g_on_g = sample_with_log_probs(G, 600, T, seed=11)
    with torch.no_grad():
        p_on_g = P.sequence_log_prob(samples).double()
        m_on_g = M.sequence_log_prob(samples).double()
    assert res["nll_oracle"] == pytest.approx((-p_on_g.sum() / (600 * T)).item(), abs=1e-6)
    assert res["balanced_nll"] == pytest.approx(res["nll_oracle"] + res["nll_test"], abs=1e-12)
    assert res["jsd"] == pytest.approx(jsd_monte_carlo(p_on_p, g_on_p, p_on_g, g_on_g), abs=1e-6)
    assert 0.0 <= res["jsd"] <= LN2
    assert res["jsd_mediator"] == pytest.approx(mediator_jsd(p_on_p, m_on_p, g_on_g, m_on_g), abs=1e-6)
    # per-token divergences: paired estimates on the test set and on G's samples
    n_test, n_fake = 650 * T, 600 * T
    assert res["entropy_g"] == pytest.approx((-g_on_g.sum() / n_fake).item(), abs=1e-6)
    assert res["kl_forward"] == pytest.approx(((p_on_p - g_on_p).sum() / n_test).item(), abs=1e-6)
    assert res["kl_reverse"] == pytest.approx(((g_on_g - p_on_g).sum() / n_fake).item(), abs=1e-6)
    assert res["kl_forward"] == pytest.approx(res["nll_test"] + (p_on_p.sum() / n_test).item(), abs=1e-9)
    assert res["kl_reverse"] == pytest.approx(res["nll_oracle"] - res["entropy_g"], abs=1e-9)
    # memorisation diagnostics: the first num_train training sequences, M on test and on G's samples
    with torch.no_grad():
        g_on_train = G.sequence_log_prob(train_set[:300]).double()
        m_on_train = M.sequence_log_prob(train_set[:300]).double()
    assert res["nll_train"] == pytest.approx((-g_on_train.sum() / (300 * T)).item(), abs=1e-6)
    assert res["m_nll_train"] == pytest.approx((-m_on_train.sum() / (300 * T)).item(), abs=1e-6)
    assert res["m_nll_test"] == pytest.approx((-m_on_p.sum() / n_test).item(), abs=1e-6)
    assert res["m_nll_fake"] == pytest.approx((-m_on_g.sum() / n_fake).item(), abs=1e-6)

    # the same seed gives the same result; the test-set figures do not depend on it
    assert ev.evaluate(G, M, seed=11) == res
    other = ev.evaluate(G, None, seed=12)
    assert set(other) == set(metric_keys(text=False, mediator=False, valid=False))
    assert other["nll_test"] == res["nll_test"] and other["nll_oracle"] != res["nll_oracle"]


def test_evaluator_figures_estimate_the_exact_values():
    P, G = tiny_lm(0), tiny_lm(1)
    lp, lg = exact_log_probs(P), exact_log_probs(G)
    p, g = lp.exp(), lg.exp()
    n = 20_000
    test_set = P.sample(n, T, torch.Generator().manual_seed(8))
    res = Evaluator(test_set, T, oracle=P, num_samples=n, num_test=n).evaluate(G, None, seed=9)
    # NLL_oracle -> E_G[-log P] / T, NLL_test -> E_P[-log G] / T, entropy_g -> H(G) / T,
    # kl_forward -> KL(P || G) / T, kl_reverse -> KL(G || P) / T, jsd -> JSD(P || G)
    for key, terms, w in (("nll_oracle", -lp / T, g), ("nll_test", -lg / T, p), ("entropy_g", -lg / T, g),
                          ("kl_forward", (lp - lg) / T, p), ("kl_reverse", (lg - lp) / T, g)):
        mean = (w * terms).sum().item()
        se = math.sqrt((w * (terms - mean) ** 2).sum().item() / n)
        assert abs(res[key] - mean) < 5 * se, key
    assert res["jsd"] == pytest.approx(exact_jsd(lp, lg), abs=0.007)  # ~5 standard errors


def test_evaluator_without_oracle_and_with_mask():
    G = tiny_lm(1)
    test_set = ALL.repeat(2, 1)
    # a prefix mask (as text.loss_mask gives): row length 1 + its first token
    mask_fn = lambda s: (torch.arange(T)[None, :] <= s[:, :1]).float()  # noqa: E731
    res = Evaluator(test_set, T, oracle=None, mask_fn=mask_fn).evaluate(G, None, seed=0)
    assert set(res) == {"nll_test"}  # no training sequences given: no nll_train
    assert 0 < mask_fn(test_set).sum() < test_set.numel()  # the mask really drops tokens
    with torch.no_grad():
        lp = G.sequence_log_prob(test_set, mask_fn(test_set)).double()
    assert res["nll_test"] == pytest.approx((-lp.sum() / mask_fn(test_set).sum()).item(), abs=1e-6)


def test_evaluation_at_several_temperatures_equals_each_temperature_alone():
    """One pass over the test set scores G at every T; each T's numbers are those of evaluating
    at that T alone, and the tempered NLL_test is the tempered model's, from full logits."""
    P, G, M = tiny_lm(0), tiny_lm(1), tiny_lm(2)
    test_set = P.sample(300, T, torch.Generator().manual_seed(7))
    train_set = P.sample(100, T, torch.Generator().manual_seed(8))
    ev = Evaluator(test_set, T, oracle=P, num_samples=200, num_test=300, train=train_set, num_train=100)
    temps = (0.7, 1.0, 1.4)
    many = ev.evaluate_temperatures(G, M, 3, temps)
    for res, temp in zip(many, temps):
        alone = ev.evaluate(G, M, 3, temperature=temp)
        assert set(res) == set(alone) and all(res[k] == pytest.approx(alone[k], abs=1e-12) for k in res)
    assert many[1] == ev.evaluate(G, M, 3)  # T = 1 is today's evaluation
    with torch.no_grad():
        lp = torch.log_softmax(G(test_set) / 0.7, -1).gather(2, test_set.unsqueeze(2)).sum()
    assert many[0]["nll_test"] == pytest.approx(-lp.item() / test_set.numel(), abs=1e-5)
    assert many[0]["entropy_g"] < many[1]["entropy_g"] < many[2]["entropy_g"]  # colder: lower entropy
    assert many[0]["m_nll_test"] == many[2]["m_nll_test"]  # M is never tempered
