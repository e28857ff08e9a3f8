"""LSTMLM: causality, exact log-probabilities, the inverse-CDF sampler, dropout and init."""

import copy
import itertools
import math

import pytest
import torch

import cot_ray.models as models
from cot_ray.model_config import LSTMConfig
from cot_ray.models import LSTMLM, copy_weights, cpu_weights
from cot_ray.models.sampler import draw_blocked

# Tiny tensors: one intra-op thread (shared fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def make(vocab=4, seed=0, init_std=1.0, hidden=8, emb=4, layers=1, dropout=0.0, start_token=0):
    m = LSTMLM(vocab, LSTMConfig(emb_dim=emb, hidden_dim=hidden, num_layers=layers, dropout=dropout,
                                  init_std=init_std), start_token=start_token)
    m.init_weights(torch.Generator().manual_seed(seed))
    return m.eval()


def all_sequences(vocab, seq_len):
    return torch.tensor(list(itertools.product(range(vocab), repeat=seq_len)))


def seq_index(x, vocab):
    """(N, T) -> (N,) row of ``all_sequences`` (base-vocab number, first token most significant)."""
    T = x.shape[1]
    return (x * torch.tensor([vocab ** (T - 1 - k) for k in range(T)])).sum(1)


@torch.no_grad()
def exact_probs(model, seq_len):
    """(V^T,) float64 probabilities of every sequence, from sequence_log_prob in float64."""
    m64 = copy.deepcopy(model).double()
    return m64.sequence_log_prob(all_sequences(model.vocab_size, seq_len)).exp()


def frequencies_match(samples, probs, vocab, sigmas=5.0):
    """Every empirical sequence frequency within ``sigmas`` binomial standard deviations (+1/N)."""
    n = len(samples)
    freq = torch.bincount(seq_index(samples, vocab), minlength=len(probs)).double() / n
    bound = sigmas * (probs * (1 - probs) / n).sqrt() + 1.0 / n
    return bool(((freq - probs).abs() <= bound).all())


# ----------------------------------------------------------------------------- forward / log-probs

def test_the_first_position_is_the_lstm_fed_the_start_token():
    """(Causality and normalisation of every architecture: tests/test_conformance.py.)"""
    for start in (0, 2):
        m = make(vocab=5, seed=1, start_token=start)
        x = torch.randint(0, 5, (6, 4), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            h, _ = m.lstm(m.embed(torch.full((1, 1), start)))
            assert torch.allclose(m(x)[0, 0], m.out(h)[0, 0], atol=1e-6)


def test_sequence_log_prob_sums_token_log_probs_and_respects_the_mask():
    m = make(vocab=6, seed=2)
    x = torch.randint(0, 6, (5, 4), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.float32)
    with torch.no_grad():
        tok = m.log_probs(x).gather(2, x[..., None]).squeeze(-1)
        assert torch.allclose(m.sequence_log_prob(x), tok.sum(1), atol=1e-5)
        assert torch.allclose(m.sequence_log_prob(x, mask), (tok * mask).sum(1), atol=1e-5)
        assert torch.allclose(m.log_probs(x).exp().sum(-1), torch.ones(5, 4), atol=1e-5)


# ----------------------------------------------------------------------------- sampler

V, T, N = 4, 3, 100_000


@pytest.mark.parametrize("shift", [1, -1])
def test_an_off_by_one_sampler_would_be_caught(monkeypatch, shift):
    m = make(vocab=V, seed=4, init_std=1.0)
    probs = exact_probs(m, T)
    real = torch.searchsorted

    def off_by_one(cdf, values, right=False):
        return (real(cdf, values, right=right) + shift).clamp_(min=0)

    monkeypatch.setattr(models.torch, "searchsorted", off_by_one)
    x = m.sample(N, T, torch.Generator().manual_seed(0))
    assert not frequencies_match(x, probs, V)


def zero_prob_model(token):
    """A model under which ``token`` has probability exactly 0 (exp underflows) at every step."""
    m = make(vocab=V, seed=6, init_std=1.0)
    with torch.no_grad():
        m.out.weight[token] = 0.0
        m.out.bias[token] = -300.0
    return m


@pytest.mark.parametrize("token", [0, 1, V - 1])
def test_a_zero_probability_token_is_never_sampled(token):
    m = zero_prob_model(token)
    x, lp = m.sample(N, T, torch.Generator().manual_seed(1), with_log_prob=True)
    assert not (x == token).any()
    assert torch.isfinite(lp).all()
    # every other token is sampled at every position
    for t in range(T):
        assert set(x[:, t].unique().tolist()) == set(range(V)) - {token}


def test_zero_probability_token_would_be_sampled_by_an_off_by_one(monkeypatch):
    # V 4 is two blocks of two tokens; token 1 is the second of block 0. Each step searches the
    # block totals, then inside the block: shift the second search.
    m = zero_prob_model(1)
    real = torch.searchsorted
    calls = itertools.count()
    monkeypatch.setattr(models.torch, "searchsorted",
                        lambda cdf, values, right=False: real(cdf, values, right=right) + next(calls) % 2)
    x = m.sample(2000, T, torch.Generator().manual_seed(1))
    assert (x == 1).any()


def test_sampler_is_exact_when_the_last_block_is_padded():
    # V 7: three blocks of three tokens, the last holds tokens 6 and two zero-probability pads.
    vocab, steps = 7, 2
    m = make(vocab=vocab, seed=9, init_std=1.0)
    x = m.sample(N, steps, torch.Generator().manual_seed(5))
    assert x.max().item() <= vocab - 1
    assert frequencies_match(x, exact_probs(m, steps), vocab)
    with torch.no_grad():  # the last real token, beside the padding, at probability 0: never drawn
        m.out.weight[vocab - 1] = 0.0
        m.out.bias[vocab - 1] = -300.0
    x = m.sample(N, steps, torch.Generator().manual_seed(5))
    assert not (x == vocab - 1).any() and set(x.unique().tolist()) == set(range(vocab - 1))


@pytest.mark.parametrize("layers,start", [(1, 0), (2, 0), (2, 3)])
def test_sampled_log_probs_equal_sequence_log_prob(layers, start):
    m = make(vocab=7, seed=7, hidden=6, emb=5, layers=layers, start_token=start)
    x, lp = m.sample(500, 5, torch.Generator().manual_seed(2), with_log_prob=True)
    assert lp.shape == (500,) and lp.dtype == torch.float32
    with torch.no_grad():
        assert torch.allclose(lp, m.sequence_log_prob(x), atol=2e-5, rtol=0)
    assert (lp < 0).all()


def test_sampling_is_deterministic_given_the_generator():
    m = make(vocab=V, seed=8)
    a = m.sample(300, T, torch.Generator().manual_seed(3))
    b, _ = m.sample(300, T, torch.Generator().manual_seed(3), with_log_prob=True)
    c = m.sample(300, T, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert m.sample(0, T, torch.Generator().manual_seed(3)).shape == (0, T)


# ----------------------------------------------------------------------------- dropout

def test_lstm_dropout_is_an_inverted_bernoulli_mask_on_its_outputs():
    """(Seeded dropout of every architecture, and none in eval mode: tests/test_conformance.py.)"""
    m = make(vocab=5, seed=9, hidden=16, dropout=0.5)
    x = torch.randint(0, 5, (8, 6), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        m.train()
        a = m(x, torch.Generator().manual_seed(1))
        # exactly: out(h * keep / (1 - p)) with keep ~ Bernoulli(1 - p) drawn from the generator
        h, _ = m.lstm(m.embed(m._inputs(x)))
        keep = torch.empty_like(h).bernoulli_(0.5, generator=torch.Generator().manual_seed(1))
        assert 0.4 < keep.mean().item() < 0.6
        assert torch.allclose(a, m.out(h * keep / 0.5), atol=1e-6)


# ----------------------------------------------------------------------------- init / weights

def test_init_weights_reproducible_and_normal():
    cfg = LSTMConfig(emb_dim=32, hidden_dim=32, init_std=0.1)
    a, b, c = (LSTMLM(50, cfg) for _ in range(3))
    a.init_weights(torch.Generator().manual_seed(11))
    b.init_weights(torch.Generator().manual_seed(11))
    c.init_weights(torch.Generator().manual_seed(12))
    for (na, pa), (nb, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        assert na == nb
        assert torch.equal(pa, pb)
        assert not torch.equal(pa, pc)
    # every parameter, in order, is randn * init_std from the generator
    gen = torch.Generator().manual_seed(11)
    for p in a.parameters():
        assert torch.equal(p, torch.randn(p.shape, generator=gen) * 0.1)
    flat = torch.cat([p.flatten() for p in a.parameters()]).double()
    n = flat.numel()
    assert abs(flat.mean().item()) < 5 * 0.1 / math.sqrt(n)
    assert flat.std().item() == pytest.approx(0.1, rel=5 * math.sqrt(0.5 / n))


def test_copy_weights_round_trip():
    a, b = make(seed=13), make(seed=14)
    w = cpu_weights(a)
    assert all(v.device.type == "cpu" and not v.requires_grad for v in w.values())
    copy_weights(b, {k: v.numpy() for k, v in w.items()})
    for (_, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb)
    w["out.bias"].add_(1.0)  # a copy, not a view
    assert not torch.equal(a.out.bias, w["out.bias"])


def test_a_target_between_a_block_total_and_its_cumulative_sum_never_draws_a_zero_token():
    """The constructed case: a block whose total (a reduction) exceeds the last entry of its
    cumulative sum (a scan) by an ulp, whose last token has probability 0, and a uniform that
    puts the target exactly on that cumulative sum. Without the clamps the search falls off the
    block's end onto the zero-probability token."""
    blk, gen = 8, torch.Generator().manual_seed(0)
    for _ in range(2000):
        p = torch.rand(1, 2 * blk, generator=gen)
        p[0, blk - 1] = 0.0  # the last token of block 0 can never be drawn
        blocks = p.view(1, 2, blk)
        block_total, scan_end = blocks.sum(2)[0, 0], blocks[0, 0].cumsum(0)[-1]
        if block_total <= scan_end:
            continue
        total = blocks.sum(2).cumsum(1)[0, -1]
        u = (scan_end / total).reshape(1, 1)
        for _ in range(20):  # the uniform whose target u * total is exactly the scan's end
            if (u * total).item() == scan_end.item():
                break
            u = torch.nextafter(u, torch.ones(1, 1) if (u * total).item() < scan_end.item() else torch.zeros(1, 1))
        if (u * total).item() != scan_end.item():
            continue
        tok, _ = draw_blocked(p.clone(), blk, 2 * blk, u)
        assert p[0, tok.item()] > 0
        assert tok.item() == blk - 2  # the block's last token of positive probability
        return
    pytest.fail("no constructed case found")


# ----------------------------------------------------------------------------- temperature

def _tempered_probs(model, seq_len, temp):
    """(V^T,) float64 probabilities of every sequence under softmax(logits / temp), by enumeration
    with the full (B, T, V) logits (not the code under test's per-position path)."""
    m64 = copy.deepcopy(model).double()
    x = all_sequences(model.vocab_size, seq_len)
    with torch.no_grad():
        lp = torch.log_softmax(m64(x) / temp, dim=-1).gather(2, x.unsqueeze(2)).squeeze(2).sum(1)
    return lp.exp()


@pytest.mark.parametrize("temp", [0.5, 0.8, 1.6])
def test_tempered_log_probs_and_samples_are_softmax_of_logits_over_t(temp):
    m = make(vocab=V, seed=4, init_std=1.0)
    want = _tempered_probs(m, T, temp)
    assert want.sum().item() == pytest.approx(1.0, abs=1e-12)
    m64 = copy.deepcopy(m).double()
    x = all_sequences(V, T)
    with torch.no_grad():
        got = m64.sequence_log_probs_at(x, (1.0, temp))  # one pass, two temperatures
    assert torch.allclose(got[1].exp(), want, atol=1e-12)
    assert torch.allclose(got[0].exp(), exact_probs(m, T), atol=1e-12)
    assert torch.equal(got[1], m64.sequence_log_prob(x, temperature=temp))
    samples, lp = m.sample(N, T, torch.Generator().manual_seed(1), with_log_prob=True, temperature=temp)
    assert frequencies_match(samples, want, V)
    assert not frequencies_match(samples, exact_probs(m, T), V)  # T matters, and the check sees it
    assert torch.allclose(lp.double().exp(), want[seq_index(samples, V)], rtol=1e-4)


def test_sampling_with_stop_id_keeps_every_drawn_token_and_pads_after_the_last_stop():
    """Text: drawing stops once every row has drawn EOS; the positions drawn until then (and
    their log-probability) are those of the sampler without ``stop_id``, the rest is EOS."""
    from cot_ray.text import loss_mask
    m = make(vocab=6, seed=3, init_std=0.5)
    with torch.no_grad():
        m.out.bias[1] += 1.5  # EOS (id 1) likely enough that every row ends well before T
    n, T = 64, 30
    full, lp_full = m.sample(n, T, torch.Generator().manual_seed(5), with_log_prob=True)
    short, lp_short = m.sample(n, T, torch.Generator().manual_seed(5), with_log_prob=True, stop_id=1)
    kept = loss_mask(full, 1).bool()  # up to and including each row's first EOS
    assert kept.all(dim=1).logical_not().all(), "every row must end before T for this test to mean anything"
    assert (full[~kept] != 1).any()  # without stop_id, what follows EOS is random tokens
    last = int(kept.sum(dim=1).max())  # positions drawn before every row had stopped
    assert last < T
    assert torch.equal(short[:, :last], full[:, :last])  # every drawn position, EOS-masked or not
    assert (short[:, last:] == 1).all()
    # the log-probability covers the drawn positions only
    prefix_lp = (m.log_probs(full).gather(2, full[:, :, None]).squeeze(2)[:, :last]).sum(dim=1)
    assert torch.allclose(lp_short, prefix_lp, atol=1e-4)
