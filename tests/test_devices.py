"""What leaves a learner is on the CPU: a driver (or a cluster head) without a GPU must be able
to unpickle every state, weight and sample that crosses an actor boundary.

On a CPU-only machine every tensor is on the CPU anyway, so the CPU test checks what makes it
true on a GPU: each tensor that leaves is a copy made for leaving (``.to("cpu", copy=True)``),
sharing no memory with the learner's live tensors (its parameters, the optimizer's moments).
Before this rule the optimizer's state went out as the live tensors (on a GPU: CUDA tensors).
The ``gpu`` tests build the learners on a GPU and check the devices themselves.
"""

from __future__ import annotations

import pytest
import torch

from cot_ray.data import load_dataset
from cot_ray.learners import GeneratorLearner, MediatorLearner, build_inner

pytestmark = pytest.mark.usefixtures("one_thread")


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from _tensors(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _tensors(v)


def _live(learner) -> set:
    """Storage addresses of a learner's live tensors: parameters and optimizer state, all levels."""
    out = set()
    while learner is not None:
        out |= {p.untyped_storage().data_ptr() for p in learner.model.parameters()}
        out |= {t.untyped_storage().data_ptr() for t in _tensors(learner.optim.state_dict()["state"])}
        learner = getattr(learner, "inner", None)
    return out


def _learners(cfg, device):
    data = load_dataset(cfg.data)
    args = (cfg, data.vocab_size, data.seq_len, data.eos_id)
    g = GeneratorLearner(*args)
    g.build(device, data.train)
    m = MediatorLearner(*args)
    m.build(device, data.train, build_inner(*args, device))
    fake = g.sample(2 * cfg.cot.batch_size)
    m.step(fake, 0, cfg.cot.batch_size)
    g.set_mediator_weights(m.get_weights())
    g.step_cot(fake, cfg.cot.batch_size, cfg.cot.batch_size)  # both have optimizer state now
    return g, m, fake


def _outgoing(g, m, fake) -> dict:
    return {"g.state": g.state(), "m.state": m.state(), "g.weights": g.get_weights(),
            "m.weights": m.get_weights(), "g.sample": fake}


@pytest.mark.parametrize("nested", [False, True])
def test_everything_leaving_a_learner_is_a_cpu_copy(tiny, nested):
    extra = ("nested.enabled=true", "inner_mediator.emb_dim=8", "inner_mediator.hidden_dim=8") if nested else ()
    g, m, fake = _learners(tiny(*extra), "cpu")
    live = _live(g) | _live(m)
    for name, tree in _outgoing(g, m, fake).items():
        for t in _tensors(tree):
            assert t.device.type == "cpu", name
            assert t.untyped_storage().data_ptr() not in live, f"{name} hands out a live tensor"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_learners_on_a_gpu_hand_out_cpu_tensors(tiny):
    g, m, fake = _learners(tiny("nested.enabled=true", "inner_mediator.emb_dim=8", "inner_mediator.hidden_dim=8"),
                           "cuda:0")
    assert next(g.model.parameters()).is_cuda and next(m.model.parameters()).is_cuda
    for name, tree in _outgoing(g, m, fake).items():
        for t in _tensors(tree):
            assert t.device.type == "cpu", name
