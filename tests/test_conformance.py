"""The conformance suite: what every registered architecture must do, run over each of them.

A new architecture (docs/models.md, "Adding an architecture") is done when this file passes on
it: its config and model are registered under one name; its logits are causal and its
next-token distributions normalised; its sampler draws the model's own probabilities on a tiny
problem that can be enumerated, and returns the log-probabilities that scoring gives; its
dropout masks come from the generator it is given, and only in training; its weights come back
from a checkpoint file bitwise; the fused losses of its output layer equal the reference losses
on its logits; and a bad value of any of its config keys is a one-line ConfigError naming the key.
"""

from __future__ import annotations

import copy
import dataclasses
import os

import pytest
import torch

from cot_ray.checkpoint import (
    G,
    learner_part,
    learner_weights,
    load_checkpoint,
    save_checkpoint,
)
from cot_ray.config_loading import load_config
from cot_ray.errors import ConfigError
from cot_ray.learners import GeneratorLearner
from cot_ray.model_config import ARCH_CONFIGS, arch_fields
from cot_ray.models import ARCHITECTURES, build_model
from cot_ray.models.fused import (
    fused_cot_generator_loss,
    fused_mixture_loss,
    fused_mle_loss,
)
from cot_ray.models.losses import cot_generator_loss, mixture_loss, mle_loss
from tests.test_models import exact_probs, frequencies_match

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = sorted(ARCH_CONFIGS)


def tiny_model(arch: str, vocab: int, seed: int = 0, start_token: int = 0, **keys):
    """An ``arch`` model of width 8 and two layers (its other keys at their defaults), N(0, 1)
    parameters drawn from ``seed`` so that its distributions are far from uniform, in eval mode."""
    cfg = ARCH_CONFIGS[arch](**{"hidden_dim": 8, "num_layers": 2, "init_std": 1.0, **keys})
    cfg.validate("generator")
    model = ARCHITECTURES[arch](vocab, cfg, start_token=start_token)
    model.init_weights(torch.Generator().manual_seed(seed))
    return model.eval()


def test_every_architecture_has_a_config_and_a_model_under_one_name():
    assert set(ARCH_CONFIGS) == set(ARCHITECTURES) and len(ARCHS) >= 2
    for arch, cls in ARCH_CONFIGS.items():
        assert cls().arch == arch
        assert isinstance(build_model(5, cls(hidden_dim=8), seed=0), ARCHITECTURES[arch])
        assert type(load_config(None, [f"mediator.arch={arch}"]).mediator) is cls


@pytest.mark.parametrize("start", [0, 2])
@pytest.mark.parametrize("arch", ARCHS)
def test_changing_a_token_changes_no_earlier_positions_logits(arch, start):
    """Position t's logits see the start token and x_1..x_{t-1} only: changing x_t leaves the
    logits of positions <= t bitwise equal and changes position t + 1's."""
    m = tiny_model(arch, vocab=7, seed=1, start_token=start)
    x = torch.randint(0, 7, (5, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = m(x)
        assert base.shape == (5, 6, 7)
        assert torch.equal(base[:, 0], base[:1, 0].expand(5, -1))  # the start token only
        for t in range(6):
            y = x.clone()
            y[:, t] = (y[:, t] + 1) % 7
            moved = m(y)
            assert torch.equal(moved[:, :t + 1], base[:, :t + 1]), t
            if t + 1 < 6:
                assert (moved[:, t + 1] - base[:, t + 1]).abs().max() > 1e-4, t
    assert not torch.equal(base[:, 0], tiny_model(arch, vocab=7, seed=1, start_token=start + 1)(x)[:, 0])


@pytest.mark.parametrize("arch", ARCHS)
def test_next_token_and_sequence_probabilities_sum_to_one(arch):
    m = tiny_model(arch, vocab=3, seed=3)
    assert exact_probs(m, 3).sum().item() == pytest.approx(1.0, abs=1e-12)  # all 27 sequences, float64
    x = torch.randint(0, 3, (4, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(m.log_probs(x).exp().sum(-1), torch.ones(4, 5), atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_sampled_frequencies_are_the_models_probabilities(arch):
    """200,000 draws of the 27 sequences of V = 3, T = 3 (fixed seed): every frequency within 5
    binomial standard deviations (+ 1/N) of the model's probability; the check rejects the
    probabilities of another seed's model and the model's own shifted by one sequence."""
    m = tiny_model(arch, vocab=3, seed=4)
    probs = exact_probs(m, 3)
    assert probs.max() / probs.min() > 20  # far from uniform
    x = m.sample(200_000, 3, torch.Generator().manual_seed(0))
    assert x.shape == (200_000, 3) and x.dtype == torch.long
    assert frequencies_match(x, probs, 3)
    assert not frequencies_match(x, exact_probs(tiny_model(arch, vocab=3, seed=5), 3), 3)
    assert not frequencies_match(x, probs.roll(1), 3)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("arch", ARCHS)
def test_sampled_log_probs_are_the_scored_log_probs(arch, temperature):
    m = tiny_model(arch, vocab=11, seed=7, start_token=3)
    x, lp = m.sample(300, 6, torch.Generator().manual_seed(2), with_log_prob=True, temperature=temperature)
    assert lp.shape == (300,) and (lp < 0).all()
    with torch.no_grad():
        assert torch.allclose(lp, m.sequence_log_prob(x, temperature=temperature), atol=1e-4, rtol=0)
    assert torch.equal(x, m.sample(300, 6, torch.Generator().manual_seed(2), temperature=temperature))


@pytest.mark.parametrize("arch", ARCHS)
def test_dropout_masks_come_from_the_given_generator_and_only_in_training(arch):
    m = tiny_model(arch, vocab=9, seed=8, dropout=0.3, emb_dropout=0.2)
    plain = tiny_model(arch, vocab=9, seed=8)  # the same weights without dropout
    x = torch.randint(0, 9, (4, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = plain.hidden(x)
        assert torch.equal(m.hidden(x, torch.Generator().manual_seed(11)), ref)  # eval: none, whatever the seed
        m.train()
        torch.manual_seed(0)  # the global RNG plays no part
        a = m.hidden(x, torch.Generator().manual_seed(11))
        torch.manual_seed(1)
        b = m.hidden(x, torch.Generator().manual_seed(11))
        c = m.hidden(x, torch.Generator().manual_seed(12))
        assert torch.equal(a, b) and not torch.allclose(a, c) and (a - ref).abs().max() > 1e-3
        assert torch.equal(plain.train().hidden(x, torch.Generator().manual_seed(11)), ref)  # p = 0: none
    # sampling never drops out
    assert torch.equal(m.sample(50, 4, torch.Generator().manual_seed(6)),
                       m.eval().sample(50, 4, torch.Generator().manual_seed(6)))


@pytest.mark.parametrize("arch", ARCHS)
def test_a_learners_weights_come_back_from_a_checkpoint_file_bitwise(arch, tmp_path):
    cfg = load_config(None, ["cot.algo=mle", f"generator.arch={arch}", "generator.hidden_dim=8", "cot.batch_size=8",
                             "run.seed=3"])
    x = torch.randint(0, 13, (64, 5), generator=torch.Generator().manual_seed(0))
    g = GeneratorLearner(cfg, 13, 5)
    g.build("cpu", x)
    g.step_mle()  # weights and optimizer moments away from their initial values
    path = os.path.join(tmp_path, "checkpoint.pt")
    save_checkpoint(path, {"iteration": 1, "m_updates": 0, "elapsed": 0.0, "config": cfg.to_dict(),
                           "g": g.state()})
    state = load_checkpoint(path)
    assert ARCHITECTURES[arch].vocab_size_of(learner_weights(state, G)) == 13
    h = GeneratorLearner(cfg, 13, 5)
    h.build("cpu", x)
    h.load_state(learner_part(state, G))
    for (name, a), (_, b) in zip(g.model.state_dict().items(), h.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(g.sample(20), h.sample(20))  # the sampling stream came back too
    assert g.step_mle() == h.step_mle()


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_losses_equal_the_reference_losses_on_its_logits(arch):
    """Values and every parameter's gradient, in float64, of the fused MLE, mixture and CoT
    generator losses (chunks that do not divide the rows) against the references."""
    g = copy.deepcopy(tiny_model(arch, vocab=13, seed=6)).double()
    m = copy.deepcopy(tiny_model(arch, vocab=13, seed=7, hidden_dim=16)).double()
    x = torch.randint(0, 13, (6, 5), generator=torch.Generator().manual_seed(2))
    mask = (torch.rand(6, 5, generator=torch.Generator().manual_seed(3)) > 0.3).double()

    def grads(loss):
        g.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in g.parameters()]

    def agree(fused, ref):
        assert fused.item() == pytest.approx(ref.item(), rel=1e-10)
        for a, b in zip(grads(fused), grads(ref)):
            assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)

    agree(fused_mle_loss(g.hidden(x), *g.output_layer(), x, mask, chunk=7)[0], mle_loss(g(x), x, mask)[0])
    with torch.no_grad():
        m_hidden, m_logits = m.hidden(x), m(x)
    agree(fused_cot_generator_loss(g.hidden(x), *g.output_layer(), m_hidden, *m.output_layer(), mask, chunk=4)[0],
          cot_generator_loss(g(x), m_logits, mask)[0])
    a, b = x[:4], x[4:]
    agree(fused_mixture_loss(g.hidden(x), [a, b], [0.25, 0.75], *g.output_layer(), [mask[:4], None], chunk=3)[0],
          mixture_loss([g(a), g(b)], [a, b], [0.25, 0.75], [mask[:4], None])[0])


BAD = {int: -1, float: -1.0, str: "bogus"}  # a value that no key of these types may take


@pytest.mark.parametrize("arch", ARCHS)
def test_a_bad_value_of_any_of_its_keys_is_a_one_line_error_naming_the_key(arch):
    """Every key but ``arch`` (and booleans, which have no bad value) refuses its type's bad
    value; a key that only another architecture has names that architecture."""
    cls = ARCH_CONFIGS[arch]
    for f in dataclasses.fields(cls):
        if f.name == "arch" or f.type in ("bool", bool):
            continue
        bad = BAD[type(f.default)]
        with pytest.raises(ConfigError) as e:
            load_config(None, [f"mediator.arch={arch}", f"mediator.{f.name}={bad}"])
        assert str(e.value).startswith(f"config key 'mediator.{f.name}' ") and "\n" not in str(e.value), str(e.value)
    others = {k: name for name, other in ARCH_CONFIGS.items() if name != arch for k in arch_fields(other)}
    for key, owner in others.items():
        if key not in arch_fields(cls):
            with pytest.raises(ConfigError, match=f"^config key 'mediator.{key}' belongs to arch '{owner}'"):
                load_config(None, [f"mediator.arch={arch}", f"mediator.{key}={BAD[int]}"])
