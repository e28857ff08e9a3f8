"""CoT and MLE losses, checked exactly on a problem small enough to enumerate.

Vocabulary 3, length 3: all 27 sequences are enumerated, so every expectation over P or G is a
finite weighted sum. Passing per-sequence probabilities as the ``mask`` of a loss turns its
"mean over counted positions" into exactly that weighted sum (the mask sums to T * 1).
"""

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from cot_ray.model_config import LSTMConfig
from cot_ray.models import LSTMLM
from cot_ray.models.losses import (
    cot_generator_loss,
    exact_mixture_log_probs,
    mediator_loss,
    mixce_weights,
    mle_loss,
    step_kl,
    tailr_weights,
    token_nll,
    weighted_mle_loss,
)

V, T = 3, 3
ALL = torch.tensor(list(itertools.product(range(V), repeat=T)))  # (27, T), lexicographic


# Tiny tensors: one intra-op thread (shared fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_lm(seed, init_std=1.0, hidden=8, emb=4, dtype=torch.float64):
    """A small LSTMLM; init_std 1.0 makes its distributions clearly non-uniform."""
    m = LSTMLM(V, LSTMConfig(emb_dim=emb, hidden_dim=hidden, init_std=init_std))
    m.init_weights(torch.Generator().manual_seed(seed))
    return m.to(dtype)


@torch.no_grad()
def seq_probs(model):
    """(27,) float64 probability of every sequence under ``model`` (eval mode)."""
    return copy.deepcopy(model).double().eval().sequence_log_prob(ALL).exp()


def cond_log_probs(q):
    """Joint distribution q (27,) over ALL -> (27, T, V) log q(v | x_<t), by marginalising.

    Independent of any model: only sums of the joint table. Used as "logits" (log-probs are
    valid logits), it makes a model-free distribution usable by the losses.
    """
    q = q.double()
    out = torch.empty(len(ALL), T, V, dtype=torch.float64)
    for t in range(T):
        # marginal of the first t+1 tokens, rows indexed by the base-V prefix x_<t
        marg = q.view((V,) * T).sum(dim=tuple(range(t + 1, T))) if t + 1 < T else q.view((V,) * T)
        marg = marg.reshape(V ** t, V)
        prefix_id = (ALL[:, :t] * torch.tensor([V ** (t - 1 - k) for k in range(t)], dtype=torch.long)).sum(1) \
            if t > 0 else torch.zeros(len(ALL), dtype=torch.long)
        num = marg[prefix_id]  # (27, V)
        out[:, t] = (num / num.sum(1, keepdim=True)).log()
    return out


def as_mask(w):
    """Per-sequence weights (27,) -> (27, T) mask: a masked mean becomes sum_x w(x) mean_t(.)."""
    return w[:, None].expand(-1, T).contiguous()


def test_enumeration_helpers_are_consistent():
    P = tiny_lm(0)
    p = seq_probs(P)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert p.max() / p.min() > 20  # clearly non-uniform
    # conditionals from the joint table are P's own conditionals
    with torch.no_grad():
        assert torch.allclose(cond_log_probs(p), P.log_probs(ALL), atol=1e-12)
    # and re-chaining them gives back the joint
    back = cond_log_probs(p).gather(2, ALL[..., None]).squeeze(-1).sum(1).exp()
    assert torch.allclose(back, p, atol=1e-14)


# ----------------------------------------------------------------------------- MLE / token NLL

def test_token_nll_and_mle_loss_are_mean_token_nll():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, 7, generator=gen, dtype=torch.float64) * 2
    tokens = torch.randint(0, 7, (5, 4), generator=gen)
    nll = -logits.log_softmax(-1).gather(2, tokens[..., None]).squeeze(-1)
    assert torch.allclose(token_nll(logits, tokens), nll, atol=1e-12)

    loss, stats = mle_loss(logits, tokens)
    assert loss.item() == pytest.approx(nll.mean().item(), abs=1e-12)
    assert stats["nll"].item() == pytest.approx(loss.item(), abs=0)
    assert not stats["nll"].requires_grad

    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.float64)
    loss_m, _ = mle_loss(logits, tokens, mask)
    assert loss_m.item() == pytest.approx(nll[mask.bool()].mean().item(), abs=1e-12)


def test_mle_loss_gradient_is_softmax_minus_onehot():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 2, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 5, (3, 2), generator=gen)
    mle_loss(logits, tokens)[0].backward()
    expected = (logits.detach().softmax(-1) - F.one_hot(tokens, 5).double()) / tokens.numel()
    assert torch.allclose(logits.grad, expected, atol=1e-14)


# ----------------------------------------------------------------------------- MixCE and TaiLr

def mixce_formula(q, eta):
    """MixCE's token weight as its paper writes it, on a Python float: eta + (1 - eta) q."""
    return eta + (1 - eta) * q


def tailr_formula(q, gamma, min_weight):
    """TaiLr's token weight as its paper writes it: q / (gamma + (1 - gamma) q), clipped to [min_weight, 1]."""
    return min(max(q / (gamma + (1 - gamma) * q), min_weight), 1.0)


FORMULAS = {
    "mixce": (lambda p: mixce_weights(p, 0.3), lambda q: mixce_formula(q, 0.3)),
    "tailr": (lambda p: tailr_weights(p, 0.4, 0.3), lambda q: tailr_formula(q, 0.4, 0.3)),
}


def test_token_weights_are_the_papers_numbers():
    p = torch.tensor([0.0, 0.1, 0.5, 1.0], dtype=torch.float64)
    assert mixce_weights(p, 0.25).tolist() == pytest.approx([0.25, 0.325, 0.625, 1.0], abs=1e-15)
    assert mixce_weights(p, 1.0).tolist() == [1.0] * 4  # eta = 1: MLE
    # gamma 0.5: p / (0.5 + 0.5 p); clamped below at 0.2
    assert tailr_weights(p, 0.5, 0.2).tolist() == pytest.approx([0.2, 0.2, 2 / 3, 1.0], abs=1e-15)
    assert tailr_weights(p[1:], 0.0, 0.0).tolist() == [1.0] * 3  # gamma = 0: MLE
    assert tailr_weights(p, 1.0, 0.0).tolist() == pytest.approx(p.tolist(), abs=1e-15)  # gamma = 1: p
    q = p.clone().requires_grad_(True)
    assert not mixce_weights(q, 0.3).requires_grad and not tailr_weights(q, 0.3, 0.1).requires_grad


@pytest.mark.parametrize("algo", list(FORMULAS))
def test_weighted_mle_value_and_gradient_follow_the_papers_formula_token_by_token(algo):
    """Loss and d loss / d logits against a loop over the tokens in Python floats: each counted
    token contributes w(q) * -log q to the mean, and w(q) * (softmax - onehot) to its gradient,
    with q the model's probability of the token and w the paper's weight, a constant."""
    weights, formula = FORMULAS[algo]
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(4, 3, 5, generator=gen, dtype=torch.float64) * 2).requires_grad_(True)
    tokens = torch.randint(0, 5, (4, 3), generator=gen)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.float64)
    loss, stats = weighted_mle_loss(logits, tokens, weights, mask)
    loss.backward()
    probs = logits.detach().softmax(-1)
    count = int(mask.sum())
    want_loss, want_nll, want_w = 0.0, 0.0, 0.0
    want_grad = torch.zeros_like(probs)
    clamped = 0
    for b in range(4):
        for t in range(3):
            if not mask[b, t]:
                continue
            q = probs[b, t, tokens[b, t]].item()
            w = formula(q)
            clamped += algo == "tailr" and w == 0.3
            want_loss += w * -math.log(q) / count
            want_nll += -math.log(q) / count
            want_w += w / count
            want_grad[b, t] = w * (probs[b, t] - F.one_hot(tokens[b, t], 5).double()) / count
    assert loss.item() == pytest.approx(want_loss, abs=1e-13)
    assert stats["nll"].item() == pytest.approx(want_nll, abs=1e-13)
    assert stats["weight"].item() == pytest.approx(want_w, abs=1e-13)
    assert torch.allclose(logits.grad, want_grad, atol=1e-14)
    assert algo == "mixce" or clamped >= 1  # the clamp is exercised


@pytest.mark.parametrize("algo", list(FORMULAS))
def test_expected_weighted_mle_gradient_over_the_data_is_the_papers_expectation(algo):
    """On the enumerable problem, the loss weighted by the data's sequence probabilities gives
    (1/T) E_{x~P} sum_t w(q_t) grad(-log q_t): checked against that sum, each token's gradient
    taken by itself and scaled by its paper-formula weight."""
    weights, formula = FORMULAS[algo]
    p = seq_probs(tiny_lm(0))
    G = tiny_lm(4, init_std=0.5)
    loss, _ = weighted_mle_loss(G(ALL), ALL, weights, mask=as_mask(p))
    got = torch.autograd.grad(loss, list(G.parameters()))
    want = [torch.zeros_like(x) for x in G.parameters()]
    log_q = G.log_probs(ALL).gather(2, ALL[..., None]).squeeze(-1)  # (27, T)
    for i in range(len(ALL)):
        for t in range(T):
            w = formula(log_q[i, t].exp().item())
            g = torch.autograd.grad(-log_q[i, t], list(G.parameters()), retain_graph=True)
            for acc, gi in zip(want, g):
                acc += p[i].item() * w * gi / T
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-13)


# ----------------------------------------------------------------------------- mediator

def test_mediator_loss_is_half_sum_of_mean_nlls():
    gen = torch.Generator().manual_seed(2)
    lr, lf = (torch.randn(b, 4, 6, generator=gen, dtype=torch.float64) for b in (5, 3))
    r, f = torch.randint(0, 6, (5, 4), generator=gen), torch.randint(0, 6, (3, 4), generator=gen)
    loss, stats = mediator_loss(lr, r, lf, f)
    nr, nf = token_nll(lr, r).mean(), token_nll(lf, f).mean()
    assert loss.item() == pytest.approx(0.5 * (nr + nf).item(), abs=1e-12)
    assert stats["nll_real"].item() == pytest.approx(nr.item(), abs=1e-12)
    assert stats["nll_fake"].item() == pytest.approx(nf.item(), abs=1e-12)
    assert stats["mix_nll"].item() == pytest.approx(loss.item(), abs=0)
    # each half averages over its own counted tokens (not a pooled mean of 5 + 3 rows)
    mr = (torch.rand(5, 4, generator=gen) > 0.3).double()
    mr[0, 0] = 1.0
    loss_m, _ = mediator_loss(lr, r, lf, f, mask_real=mr)
    nr_m = token_nll(lr, r)[mr.bool()].mean()
    assert loss_m.item() == pytest.approx(0.5 * (nr_m + nf).item(), abs=1e-12)


def expected_mediator_loss(p, g, m_logits):
    """mediator_loss with real = fake = all 27 sequences, weighted by P and G: its exact expectation."""
    return mediator_loss(m_logits, ALL, m_logits, ALL, mask_real=as_mask(p), mask_fake=as_mask(g))[0]


def test_expected_mediator_loss_is_cross_entropy_with_the_mixture():
    p, g = seq_probs(tiny_lm(0)), seq_probs(tiny_lm(1))
    M = tiny_lm(2)
    with torch.no_grad():
        m_log = M.sequence_log_prob(ALL)
        value = expected_mediator_loss(p, g, M(ALL)).item()
    # -1/2 (E_P[log M] + E_G[log M]) per token = -sum_x (P+G)/2 log M(x) / T
    assert value == pytest.approx((-(0.5 * (p + g) * m_log).sum() / T).item(), abs=1e-12)


def test_mediator_loss_is_minimised_by_the_mixture():
    p, g = seq_probs(tiny_lm(0)), seq_probs(tiny_lm(1))
    mix = 0.5 * (p + g)
    assert (p - g).abs().max() > 0.05  # P and G really differ

    def loss_of(q):  # exact expected loss of the mediator whose distribution is the table q
        return expected_mediator_loss(p, g, cond_log_probs(q)).item()

    at_mix = loss_of(mix)
    # at the mixture the loss is the mixture's entropy per token (Gibbs: the global minimum)
    assert at_mix == pytest.approx((-(mix * mix.log()).sum() / T).item(), abs=1e-12)
    rand = torch.rand(27, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.05
    for other in (p, g, rand / rand.sum(), 0.7 * p + 0.3 * g):
        assert loss_of(other) > at_mix + 1e-4

    # gradient descent on the exact expected loss drives an LSTM mediator to (P + G) / 2
    M = tiny_lm(4, init_std=0.1, hidden=16, emb=8)
    opt = torch.optim.Adam(M.parameters(), lr=0.03)
    start = (seq_probs(M) - mix).abs().max().item()
    for _ in range(300):
        loss = expected_mediator_loss(p, g, M(ALL))
        opt.zero_grad()
        loss.backward()
        opt.step()
    m = seq_probs(M)
    assert start > 0.03
    assert (m - mix).abs().max().item() < 1e-3
    with torch.no_grad():
        assert expected_mediator_loss(p, g, M(ALL)).item() == pytest.approx(at_mix, abs=1e-5)


# ----------------------------------------------------------------------------- step_kl

def test_step_kl_value_and_gradient_match_the_closed_form():
    """kl = sum_v p_v (log p_v - log q_v) and d kl / d g_j = p_j (log p_j - log q_j - kl)."""
    gen = torch.Generator().manual_seed(5)
    g = (torch.randn(4, 3, 6, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    m = torch.randn(4, 3, 6, generator=gen, dtype=torch.float64) * 3
    w = torch.randn(4, 3, generator=gen, dtype=torch.float64)  # arbitrary upstream gradient

    kl = step_kl(g, m)
    p, q = g.detach().softmax(-1), m.softmax(-1)
    want = (p * (p.log() - q.log())).sum(-1)
    assert kl.shape == (4, 3)
    assert torch.allclose(kl, want, atol=1e-12)
    assert (kl > 0).all()
    (grad,) = torch.autograd.grad((kl * w).sum(), g)
    closed = p * (p.log() - q.log() - want.unsqueeze(-1)) * w.unsqueeze(-1)
    assert torch.allclose(grad, closed, atol=1e-12)
    # KL(p || p) = 0 with zero gradient
    same = step_kl(g, g.detach())
    assert same.abs().max().item() < 1e-12
    (g0,) = torch.autograd.grad(same.sum(), g)
    assert g0.abs().max().item() < 1e-12


def test_step_kl_gradcheck():
    gen = torch.Generator().manual_seed(6)
    g = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    m = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: step_kl(x, m), (g,), eps=1e-6, atol=1e-8)


def test_no_gradient_flows_into_the_mediator():
    G, M = tiny_lm(0), tiny_lm(1)
    m_raw = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    g_raw = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    step_kl(g_raw, m_raw).sum().backward()
    assert m_raw.grad is None and g_raw.grad is not None

    loss, stats = cot_generator_loss(G(ALL), M(ALL))
    loss.backward()
    assert all(p.grad is None for p in M.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())
    assert not stats["kl"].requires_grad


# ----------------------------------------------------------------------------- CoT generator loss

def exact_stepwise_kl(g, m):
    """(1/T) sum_t E_{s<t ~ G} KL(G(.|s<t) || M(.|s<t)), by enumerating prefixes of the joint tables."""
    g, m = g.double().view((V,) * T), m.double().view((V,) * T)
    total = 0.0
    for t in range(T):
        for prefix in itertools.product(range(V), repeat=t):
            g_next = g[prefix].sum(dim=tuple(range(1, T - t))) if T - t > 1 else g[prefix]  # (V,)
            m_next = m[prefix].sum(dim=tuple(range(1, T - t))) if T - t > 1 else m[prefix]
            g_pre = g_next.sum()  # G(s<t)
            pg, pm = g_next / g_pre, m_next / m_next.sum()
            total += (g_pre * (pg * (pg.log() - pm.log())).sum()).item()
    return total / T


def test_cot_loss_weighted_by_g_is_the_exact_expected_stepwise_kl():
    G, M = tiny_lm(0), tiny_lm(1)
    g, m = seq_probs(G), seq_probs(M)
    with torch.no_grad():
        loss, stats = cot_generator_loss(G(ALL), M(ALL), mask=as_mask(g))
    exact = exact_stepwise_kl(g, m)
    assert exact > 0.05
    assert loss.item() == pytest.approx(exact, abs=1e-12)
    assert stats["kl"].item() == pytest.approx(exact, abs=1e-12)
    # chain rule: summed over the T steps it is the sequence-level KL(G || M)
    assert T * loss.item() == pytest.approx((g * (g / m).log()).sum().item(), abs=1e-12)


def test_cot_loss_monte_carlo_on_g_samples_approaches_the_expectation():
    G, M = tiny_lm(0, dtype=torch.float32), tiny_lm(1, dtype=torch.float32)
    exact = exact_stepwise_kl(seq_probs(G), seq_probs(M))
    n = 40_000
    x = G.sample(n, T, torch.Generator().manual_seed(8))
    with torch.no_grad():
        g_logits, m_logits = G(x).double(), M(x).double()
        loss, _ = cot_generator_loss(g_logits, m_logits)
        per_seq = step_kl(g_logits, m_logits).mean(1)
    se = per_seq.std().item() / math.sqrt(n)
    assert loss.item() == pytest.approx(per_seq.mean().item(), abs=1e-12)
    assert se < 0.02 * exact  # the check below is tight
    assert abs(loss.item() - exact) < 5 * se


class TabularLM(torch.nn.Module):
    """A generator with one free logit vector per prefix: full capacity, so JSD(P || G) can reach 0."""

    def __init__(self, seed):
        super().__init__()
        n_prefixes = sum(V ** t for t in range(T))
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(n_prefixes, V, generator=gen, dtype=torch.float64) * 2)
        offset = torch.tensor([sum(V ** k for k in range(t)) for t in range(T)])
        pid = torch.stack([(ALL[:, :t] * torch.tensor([V ** (t - 1 - k) for k in range(t)], dtype=torch.long)).sum(1)
                           for t in range(T)], dim=1)
        self.register_buffer("index", pid + offset)  # (27, T): row of the table for x_<t

    def forward(self):  # logits for all 27 sequences: (27, T, V)
        return self.table[self.index]

    def seq_probs(self):
        return self().log_softmax(-1).gather(2, ALL[..., None]).squeeze(-1).sum(1).exp()


def exact_jsd(p, g):
    m = 0.5 * (p + g)
    return 0.5 * ((p * (p / m).log()).sum() + (g * (g / m).log()).sum()).item()


def test_cot_against_the_exact_mixture_drives_jsd_to_zero():
    """CoT's generator step, taken on the exact expectation (G's weights detached, as when the
    loss is averaged over G's samples), against the exact mediator M = (P + G) / 2 recomputed
    from the current G at every step, converges to G = P.

    The detached per-step gradient is not the exact gradient of KL(G || M) (it keeps only each
    step's own KL term, dropping the score-function term for later steps), but its only fixed
    point with full support is pi_G = pi_M at every prefix, i.e. G = M = P.
    """
    p = seq_probs(tiny_lm(0))
    G = TabularLM(seed=5)
    opt = torch.optim.Adam(G.parameters(), lr=0.05)
    start = exact_jsd(p, G.seq_probs().detach())
    assert start > 0.1
    for _ in range(300):
        logits = G()
        g = G.seq_probs().detach()
        m_logits = cond_log_probs(0.5 * (p + g))
        loss, _ = cot_generator_loss(logits, m_logits, mask=as_mask(g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    g = G.seq_probs().detach()
    assert exact_jsd(p, g) < 1e-4
    assert (g - p).abs().max().item() < 1e-3


# ----------------------------------------------------------------------------- the exact mediator

def test_exact_mixture_log_probs_are_the_conditionals_of_the_mixture():
    """exact_mixture_log_probs from the two models' step logits equals the conditionals of
    (P + G) / 2 obtained by marginalising its joint table: the prefix weights P(s), G(s) matter
    (the per-step average of pi_P and pi_G is another distribution)."""
    P, G = tiny_lm(0), tiny_lm(2)
    p, g = seq_probs(P), seq_probs(G)
    with torch.no_grad():
        got = exact_mixture_log_probs(P(ALL), G(ALL), ALL)
        naive = (0.5 * (P.log_probs(ALL).exp() + G.log_probs(ALL).exp())).log()
    want = cond_log_probs(0.5 * (p + g))
    assert torch.allclose(got, want, atol=1e-12)
    assert torch.allclose(got[:, 0], naive[:, 0], atol=1e-12)  # at t = 0 both prefixes have probability 1
    assert (got - naive).abs().max() > 0.05
    # float32 models far apart: finite, and still normalised
    with torch.no_grad():
        far = exact_mixture_log_probs(P(ALL).float() * 30, G(ALL).float() * 30, ALL)
    assert torch.isfinite(far).all() and torch.allclose(far.exp().sum(-1), torch.ones(27, T), atol=1e-5)


def test_cot_with_the_exact_mediator_is_the_jsd_gradient_without_its_future_terms():
    """The exact JSD gradient, 2 grad JSD(P || G) = E_G[sum_t grad log pi_G(x_t|s_t) sum_{k>=t} log r_k]
    with r_k = pi_G(x_k|s_k) / pi_M*(x_k|s_k), splits into CoT's generator gradient against the
    exact mediator M* (the k = t terms: E_G sum_t sum_v grad pi_G(v|s_t) log(pi_G / pi_M*), what
    cot.mediator=exact trains with) and the terms k > t, which CoT (like GKD's on-policy
    divergences) drops. Checked on the enumerable problem: CoT's part + the future part = the
    autograd gradient of the exact JSD, the future part is not negligible, and CoT's loss is
    KL(G || M*) per step."""
    P, G = tiny_lm(0), tiny_lm(2)
    p = seq_probs(P)
    params = list(G.parameters())

    g = G.sequence_log_prob(ALL).exp()  # (27,) with G's graph
    m = 0.5 * (p + g)
    jsd = 0.5 * ((p * (p / m).log()).sum() + (g * (g / m).log()).sum())
    want = [2 * x for x in torch.autograd.grad(jsd, params)]

    g_logits = G(ALL)
    with torch.no_grad():
        m_log = exact_mixture_log_probs(P(ALL), g_logits, ALL)
    gd = g.detach()
    loss, _ = cot_generator_loss(g_logits, m_log, mask=as_mask(gd))
    kl = (gd * (gd / m.detach()).log()).sum().item()
    assert T * loss.item() == pytest.approx(kl, abs=1e-12)  # KL(G || M*) = sum over steps
    cot = torch.autograd.grad(T * loss, params, retain_graph=True)

    log_g = g_logits.log_softmax(-1).gather(2, ALL[..., None]).squeeze(-1)  # (27, T) with G's graph
    log_r = (log_g - m_log.gather(2, ALL[..., None]).squeeze(-1)).detach()
    future = log_r.flip(1).cumsum(1).flip(1) - log_r  # sum over k > t
    future_part = torch.autograd.grad((gd[:, None] * log_g * future).sum(), params)

    for c, f, w in zip(cot, future_part, want):
        assert torch.allclose(c + f, w, atol=1e-12)
    norm = lambda xs: sum(x.pow(2).sum() for x in xs).sqrt().item()  # noqa: E731
    assert norm(future_part) > 0.05 * norm(want)  # CoT's gradient is not the JSD gradient
