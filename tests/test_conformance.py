"""What every registered model architecture must do, parametrised over ``models.ARCHITECTURES``:
a new architecture is done when it passes this file (and its own tests of what only it has).

Causality, probabilities that sum to one, sampled frequencies equal to the model's
probabilities, sampled and scored log-probabilities that agree, seeded dropout (off in eval
mode, never from the global RNG), weights that survive a checkpoint, the fused losses equal to
the reference losses on (B, T, V) logits (values and gradients), one-line config errors.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

import cot_ray.models as models
from cot_ray.checkpoint import load_checkpoint, save_checkpoint
from cot_ray.config import ConfigError, ModelConfig, load_config
from cot_ray.models import build_model, cpu_weights, model_from_weights, vocab_size_of
from cot_ray.models.fused import fused_cot_generator_loss, fused_mixture_loss, fused_mle_loss
from cot_ray.models.losses import cot_generator_loss, mixture_loss, mle_loss

pytestmark = pytest.mark.usefixtures("one_thread")
ARCHS = sorted(models.ARCHITECTURES)


def tiny(arch: str, vocab: int = 4, seed: int = 0, width: int = 8, layers: int = 2, init_std: float = 1.0,
         dropout: float = 0.0, emb_dropout: float = 0.0):
    """A small model of ``arch`` (width divisible by 2 heads of an even size), in eval mode."""
    cfg = ModelConfig(arch=arch, emb_dim=width, hidden_dim=width, num_layers=layers, num_heads=2,
                      init_std=init_std, dropout=dropout, emb_dropout=emb_dropout)
    return build_model(vocab, cfg, seed=seed).eval()


def all_sequences(vocab: int, seq_len: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(vocab), repeat=seq_len)))


@torch.no_grad()
def exact_probs(model, seq_len: int) -> torch.Tensor:
    """(V^T,) float64 probability of every sequence, scored by the model in float64."""
    return copy.deepcopy(model).double().sequence_log_prob(all_sequences(model.vocab_size, seq_len)).exp()


def frequencies_match(samples: torch.Tensor, probs: torch.Tensor, vocab: int, sigmas: float = 5.0) -> bool:
    """Every sequence's empirical frequency within ``sigmas`` binomial standard deviations (+1/N)."""
    T, n = samples.shape[1], len(samples)
    index = (samples * torch.tensor([vocab ** (T - 1 - k) for k in range(T)])).sum(1)
    freq = torch.bincount(index, minlength=len(probs)).double() / n
    return bool(((freq - probs).abs() <= sigmas * (probs * (1 - probs) / n).sqrt() + 1.0 / n).all())


@pytest.mark.parametrize("arch", ARCHS)
def test_a_later_token_changes_no_earlier_step(arch):
    m = tiny(arch, vocab=7, seed=1, width=16)
    x = torch.randint(0, 7, (5, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = m(x)
        assert base.shape == (5, 6, 7)
        for t in range(6):
            y = x.clone()
            y[:, t] = (y[:, t] + 1) % 7
            moved = m(y)
            torch.testing.assert_close(moved[:, :t + 1], base[:, :t + 1], atol=1e-6, rtol=0)
            if t + 1 < 6:
                assert (moved[:, t + 1] - base[:, t + 1]).abs().max() > 1e-4, t  # the next step sees it


@pytest.mark.parametrize("arch", ARCHS)
def test_next_token_and_sequence_probabilities_sum_to_one(arch):
    m = tiny(arch, vocab=3, seed=2)
    x = torch.randint(0, 3, (4, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(m(x).softmax(-1).sum(-1), torch.ones(4, 5), atol=1e-5, rtol=0)
    assert exact_probs(m, 3).sum().item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("arch", ARCHS)
def test_sampled_frequencies_are_the_models_probabilities(arch):
    V, T = 4, 3
    m = tiny(arch, vocab=V, seed=4, init_std=1.5)
    probs = exact_probs(m, T)
    assert probs.max() / probs.min() > 20  # far from uniform, so that the check has something to see
    x = m.sample(100_000, T, torch.Generator().manual_seed(0))
    assert x.shape == (100_000, T) and x.dtype == torch.long
    assert frequencies_match(x, probs, V)
    assert not frequencies_match(x, probs.roll(1), V)  # the check has power
    assert not frequencies_match(x, exact_probs(tiny(arch, vocab=V, seed=5, init_std=1.5), T), V)


@pytest.mark.parametrize("arch", ARCHS)
def test_sampled_log_probs_equal_the_scored_ones_and_a_seed_fixes_the_draw(arch):
    m = tiny(arch, vocab=7, seed=7, width=8)
    x, lp = m.sample(400, 5, torch.Generator().manual_seed(2), with_log_prob=True)
    with torch.no_grad():
        torch.testing.assert_close(lp, m.sequence_log_prob(x), atol=2e-5, rtol=0)
        tokens = m.log_probs(x).gather(2, x[..., None]).squeeze(-1)
        torch.testing.assert_close(m.sequence_log_prob(x), tokens.sum(1), atol=1e-5, rtol=0)
    assert torch.equal(x, m.sample(400, 5, torch.Generator().manual_seed(2)))
    assert not torch.equal(x, m.sample(400, 5, torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("arch", ARCHS)
def test_dropout_is_seeded_off_in_eval_mode_and_never_from_the_global_rng(arch):
    m = tiny(arch, vocab=9, seed=8, width=16, dropout=0.3, emb_dropout=0.2)
    x = torch.randint(0, 9, (4, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = m.eval()(x)
        assert torch.equal(m(x, torch.Generator().manual_seed(1)), ref)  # eval: no dropout
        m.train()
        torch.manual_seed(0)
        a = m(x, torch.Generator().manual_seed(1))
        torch.manual_seed(1)
        b = m(x, torch.Generator().manual_seed(1))
        c = m(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.allclose(a, c) and (a - ref).abs().max() > 1e-3
    assert torch.equal(m.sample(50, 4, torch.Generator().manual_seed(6)),
                       m.eval().sample(50, 4, torch.Generator().manual_seed(6)))  # sampling never drops out


@pytest.mark.parametrize("arch", ARCHS)
def test_weights_survive_a_checkpoint(arch, tmp_path):
    m = tiny(arch, vocab=11, seed=9)
    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint(path, {"iteration": 0, "m_updates": 0, "elapsed": 0.0, "config": {},
                           "g": {"model": cpu_weights(m), "optim": {}, "gen": torch.Generator().get_state(), "steps": 0}})
    weights = load_checkpoint(path)["g"]["model"]
    assert vocab_size_of(weights, m.cfg) == 11
    x = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.allclose(tiny(arch, vocab=11, seed=10)(x), m(x))  # another draw: other logits
        assert torch.equal(model_from_weights(11, m.cfg, weights)(x), m(x))


def _grads(model, loss) -> list:
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("arch", ARCHS)
def test_the_fused_losses_equal_the_reference_losses(arch):
    """Values and gradients of every parameter: MLE, the mediator's mixture and CoT's KL, with
    the output layer as ``output_layer()`` gives it (tied or not, with a bias or without)."""
    g, m = tiny(arch, vocab=13, seed=6, width=8).train(), tiny(arch, vocab=13, seed=7, width=16, layers=1)
    x = torch.randint(0, 13, (6, 5), generator=torch.Generator().manual_seed(2))
    mask = (torch.rand(6, 5, generator=torch.Generator().manual_seed(3)) > 0.3).float()
    g.eval()  # dropout 0: the two paths see the same hidden states

    fused, _ = fused_mle_loss(g.hidden(x), *g.output_layer(), x, mask, chunk=7)
    ref, _ = mle_loss(g(x), x, mask)
    assert fused.item() == pytest.approx(ref.item(), rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(_grads(g, fused), _grads(g, ref)))

    with torch.no_grad():
        m_hidden, m_logits = m.hidden(x), m(x)
    fused, _ = fused_cot_generator_loss(g.hidden(x), *g.output_layer(), m_hidden, *m.output_layer(), mask, chunk=4)
    ref, _ = cot_generator_loss(g(x), m_logits, mask)
    assert fused.item() == pytest.approx(ref.item(), rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(_grads(g, fused), _grads(g, ref)))

    a, b = x[:4], x[4:]
    fused, _ = fused_mixture_loss(g.hidden(x), [a, b], [0.25, 0.75], *g.output_layer(), [mask[:4], None], chunk=3)
    ref, _ = mixture_loss([g(a), g(b)], [a, b], [0.25, 0.75], [mask[:4], None])
    assert fused.item() == pytest.approx(ref.item(), rel=1e-6)
    assert all(torch.allclose(u, w, atol=1e-6) for u, w in zip(_grads(g, fused), _grads(g, ref)))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("key,value", [("num_layers", 0), ("hidden_dim", 0), ("dropout", 1.0), ("init", "xavier")])
def test_a_bad_model_field_is_a_one_line_error_naming_the_key(arch, key, value):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"mediator.arch={arch}", f"mediator.{key}={value}"])
    assert f"'mediator.{key}'" in str(err.value) and "\n" not in str(err.value)
