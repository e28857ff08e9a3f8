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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_evaluation_in_a_gpu_learner_computes_on_its_gpu(tiny):
    """What `evaluation in the generator's process` means on a GPU worker: the evaluation's
    sampling and scoring allocate on the GPU (not on the CPU beside it), and give the same kind
    of numbers as on the CPU (the samples differ: the GPU draws from its own generator)."""
    from cot_ray.metrics import make_evaluator
    from cot_ray.rundir import build_models

    cfg = tiny("eval.num_samples=256")  # scored on all 64 of TINY's test sequences
    g, m, _ = _learners(cfg, "cuda:0")
    evaluator = make_evaluator(load_dataset(cfg.data), cfg.eval)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    res = g.evaluate(evaluator, m.get_weights(), seed=5)
    assert torch.cuda.max_memory_allocated() > before, "the evaluation allocated nothing on the GPU"
    data = load_dataset(cfg.data)
    g_cpu, m_cpu = build_models(cfg, data.vocab_size, g.get_weights(), m.get_weights(), "cpu")
    ref = make_evaluator(data, cfg.eval).evaluate(g_cpu, m_cpu, 5)  # the same weights, scored on the CPU
    assert set(res) == set(ref) and res["nll_test"] == pytest.approx(ref["nll_test"], abs=1e-3)


# ----------------------------------------------------------------------------- resuming on another device


def _as_if_on_cuda(state: dict) -> dict:
    """A learner state as a CUDA learner writes it: its generators' states are Philox's 16 bytes
    (seed, offset), not the CPU Mersenne Twister's 5,056."""
    out = dict(state)
    for key in ("gen", "dropout_gen"):
        if key in out:
            out[key] = torch.tensor([7, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0], dtype=torch.uint8)
    out["rng_device"] = "cuda"
    if isinstance(out.get("inner"), dict):
        out["inner"] = _as_if_on_cuda(out["inner"])
    return out


def test_a_state_of_another_devices_generators_is_refused_in_one_line(tiny):
    from cot_ray.checkpoint import CheckpointError
    from cot_ray.learners import rng_device

    g, m, _ = _learners(tiny("nested.enabled=true", "inner_mediator.emb_dim=8", "inner_mediator.hidden_dim=8"), "cpu")
    gs, ms = g.state(), m.state()
    assert rng_device(gs) == rng_device(ms) == rng_device(ms["inner"]) == "cpu"
    legacy = {k: v for k, v in gs.items() if k != "rng_device"}  # older checkpoints: told by the state's size
    assert rng_device(legacy) == "cpu" and rng_device(_as_if_on_cuda(legacy) | {"rng_device": None}) is None
    g.load_state(legacy)  # the same device: fine
    for learner, state, who in ((g, gs, "generator"), (m, ms, "mediator")):
        with pytest.raises(CheckpointError) as err:
            learner.load_state(_as_if_on_cuda(state))
        msg = str(err.value)
        assert "\n" not in msg and f"checkpoint's {who} drew its random numbers on cuda but would continue on cpu" \
            in msg and "resume it on a machine with GPUs (--gpus-per-worker 1" in msg, msg
    inner_only = dict(ms, inner=_as_if_on_cuda(ms["inner"]))  # --inner-actor on a GPU, M on the CPU
    with pytest.raises(CheckpointError, match=r"inner mediator \(level 1\) drew its random numbers on cuda"):
        m.load_state(inner_only)


def test_cli_resume_of_a_gpu_checkpoint_on_cpus_is_one_line(tmp_path, data_cache):
    """`cot-ray train --resume` of a run whose generator ran on a GPU, here on CPUs: one line
    that says what differs and how to resume, and the checkpoint is left as it was."""
    import json

    from click.testing import CliRunner

    from cot_ray.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
    from cot_ray.cli import main
    from tests.conftest import TINY

    sets = [a for kv in TINY + [f"data.cache_dir={data_cache}"] for a in ("--set", kv)]
    runner = CliRunner()
    res = runner.invoke(main, ["train", "--local", "--json", "--iters", "2", "--logdir", str(tmp_path), *sets])
    assert res.exit_code == 0, res.output
    run_dir = json.loads(res.output.strip().splitlines()[-1])["run_dir"]
    path = f"{run_dir}/{CHECKPOINT}"
    state = load_checkpoint(path)
    state["g"] = _as_if_on_cuda(state["g"])
    save_checkpoint(path, state)
    before = open(path, "rb").read()
    res = runner.invoke(main, ["train", "--resume", run_dir, "--iters", "4", "--local"])
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1].startswith("Error: the checkpoint's generator drew its random numbers "
                                                          "on cuda but would continue on cpu"), res.output
    assert open(path, "rb").read() == before
