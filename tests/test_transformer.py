"""TransformerLM, the second architecture, beyond what tests/test_conformance.py asks of every
architecture: cached sampling steps exact against the full forward pass, trained by CoT, a
width its heads divide, bf16 autocast.

The exact checks use the enumerable problem of test_models (vocabulary 3, length 3: all 27
sequences), where every probability is computed in float64.
"""

from __future__ import annotations

import copy

import pytest
import torch

from cot_ray.config_loading import load_config
from cot_ray.learners import GeneratorLearner, MediatorLearner
from cot_ray.model_config import LSTMConfig, TransformerConfig
from cot_ray.models import LSTMLM, TransformerLM, build_model
from tests.test_models import all_sequences, exact_probs

pytestmark = pytest.mark.usefixtures("one_thread")

V, T = 3, 3


def tlm(vocab=V, seed=0, width=8, heads=2, layers=2, dropout=0.0, tied=True, init_std=1.0) -> TransformerLM:
    cfg = TransformerConfig(hidden_dim=width, num_layers=layers, num_heads=heads, dropout=dropout, tie_output=tied,
                            init_std=init_std)
    return build_model(vocab, cfg, seed=seed).eval()


def exact_jsd(p: torch.Tensor, q: torch.Tensor) -> float:
    m = 0.5 * (p + q)
    return 0.5 * ((p * (p / m).log()).sum() + (q * (q / m).log()).sum()).item()


@pytest.mark.parametrize("tied", [True, False])
def test_cached_sampling_steps_equal_the_full_forward_pass(tied):
    """The key/value cache computes, one new position per step, the logits that the full
    forward pass computes for the whole sequence: here every step's logits, and the sampled
    sequences' log-probabilities (the sum of the steps') against sequence_log_prob."""
    m = tlm(vocab=11, seed=1, width=16, heads=4, layers=3, tied=tied)
    x, lp = m.sample(32, 7, torch.Generator().manual_seed(0), with_log_prob=True)
    with torch.no_grad():
        full = m(x)  # (32, 7, 11)
        cos, sin = m._rotary(7)
        caches = [(torch.empty(32, 4, 7, 4), torch.empty(32, 4, 7, 4)) for _ in m.blocks]
        inputs = m._inputs(x)
        weight, bias = m.output_layer()
        for t in range(7):
            h = m.embed(inputs[:, t])[:, None, :]
            for block, cache in zip(m.blocks, caches):
                h = block.step(h, cache, t, cos, sin)
            step = torch.nn.functional.linear(m.ln_f(h)[:, 0], weight, bias)
            assert torch.allclose(step, full[:, t], atol=1e-4, rtol=1e-4), t  # float32 sums in another order
        assert torch.allclose(lp, m.sequence_log_prob(x), atol=1e-4, rtol=0)
        # the sum of per-position log-softmax terms: the sequence log-probability, at any temperature
        steps = torch.log_softmax(full / 0.7, dim=-1).gather(2, x[..., None]).squeeze(2).sum(1)
        assert torch.allclose(steps, m.sequence_log_prob(x, temperature=0.7), atol=1e-4, rtol=0)
    assert (bias is None) == tied and m.output_layer()[0] is (m.embed.weight if tied else m.out.weight)


def test_cot_with_transformer_g_and_m_drives_the_exact_jsd_down():
    """The production learners, both Transformers, on samples of a tiny LSTM P: the exact
    JSD(P || G) falls from 0.45 to below 0.05 in 300 iterations."""
    P = LSTMLM(V, LSTMConfig(emb_dim=4, hidden_dim=8, init_std=1.5))
    P.init_weights(torch.Generator().manual_seed(1))
    p = exact_probs(P.eval(), T)
    sizes = ["arch=transformer", "hidden_dim=8", "num_heads=2", "num_layers=2", "init_std=0.5"]
    cfg = load_config(None, [f"generator.{kv}" for kv in sizes] + [f"mediator.{kv}" for kv in sizes]
                      + ["mediator.dropout=0.0", "mediator.emb_dropout=0.0", "g_optim.lr=0.01", "m_optim.lr=0.01",
                         "cot.batch_size=64"])
    real = P.sample(20000, T, torch.Generator().manual_seed(2))
    g, m = GeneratorLearner(cfg, V, T), MediatorLearner(cfg, V, T)
    g.build("cpu")
    m.build("cpu", real)
    start = exact_jsd(p, exact_probs(g.model, T))
    for _ in range(300):
        fake = g.sample(128)
        m.step(fake, 0, 64)
        g.set_mediator_weights(m.get_weights())
        g.step_cot(fake, 64, 64)
    end = exact_jsd(p, exact_probs(g.model, T))
    assert start > 0.3 and end < 0.05, (start, end)  # here 0.45 -> 0.016


def _bf16_runs(arch: str) -> bool:
    """Whether this CPU's torch runs ``arch`` in bfloat16 autocast (oneDNN runs an LSTM in
    bfloat16 only with AVX512-BF16 or AMX)."""
    m = build_model(V, LSTMConfig(emb_dim=4, hidden_dim=4) if arch == "lstm" else TransformerConfig(hidden_dim=4, num_heads=2),
                    seed=0)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            m.hidden(torch.zeros((1, 2), dtype=torch.long))
        return True
    except RuntimeError:
        return False


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_bf16_autocast_trains_like_fp32_with_float32_weights(tiny, arch, data_cache):
    """run.precision bf16: the same run in bfloat16 autocast stays within 0.02 nats of float32
    on the NLLs of fixed sequences after 10 iterations (test, validation, M's test), within 0.05
    on NLL_oracle, and its weights stay float32. NLL_oracle scores G's own samples, which move
    with G's sharpness: the Transformer pair gave 0.021 (1,024 samples as with 64; the fixed-set
    NLLs 0.003) on a Xeon with AMX-BF16 and torch 2.14.1. Where the CPU has no bfloat16 kernels
    for the model, `cot-ray train` says so in one line instead."""
    from cot_ray.loop import run_trainer

    common = (f"generator.arch={arch}", f"mediator.arch={arch}", "run.iters=10", "eval.every=0")
    if not _bf16_runs(arch):
        from click.testing import CliRunner

        from cot_ray.cli import main
        from tests.conftest import TINY

        sets = [a for kv in TINY + [*common, "run.precision=bf16", f"run.logdir={tiny().run.logdir}",
                                    f"data.cache_dir={data_cache}"] for a in ("--set", kv)]
        res = CliRunner().invoke(main, ["train", "--local", *sets])
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert "Error: run.precision bf16: torch cannot run the generator (lstm) in bfloat16 on cpu here" in \
            res.output and "use run.precision fp32, or generator.arch transformer" in res.output, res.output
        return
    out = {p: run_trainer(tiny(*common, f"run.precision={p}", f"run.name={p}"), echo=lambda s: None)
           for p in ("fp32", "bf16")}
    for key, tol in (("nll_test", 0.02), ("m_nll_test", 0.02), ("nll_valid", 0.02), ("nll_oracle", 0.05)):
        assert out["bf16"]["metrics"][key] == pytest.approx(out["fp32"]["metrics"][key], abs=tol), key
    assert out["bf16"]["metrics"] != out["fp32"]["metrics"]  # autocast did run
    from cot_ray.checkpoint import load_checkpoint

    state = load_checkpoint(f"{out['bf16']['run_dir']}/checkpoint.pt")
    assert {t.dtype for t in state["g"]["model"].values()} == {torch.float32}


def test_a_transformer_needs_a_width_its_heads_divide_evenly():
    from cot_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="generator.num_heads' must divide generator.hidden_dim"):
        load_config(None, ["generator.arch=transformer", "generator.num_heads=3"])
    with pytest.raises(ConfigError, match=r"generator.emb_dim' belongs to arch 'lstm', and generator.arch is 'transformer', whose embedding "
                                         r"width is generator.hidden_dim \(32\), got 16"):
        load_config(None, ["generator.arch=transformer", "generator.emb_dim=16"])
    with pytest.raises(ConfigError, match="mediator.arch' must be one of lstm, transformer"):
        load_config(None, ["mediator.arch=gru"])
    m = copy.deepcopy(tlm())
    assert all_sequences(V, T).shape == (27, 3) and isinstance(m, TransformerLM)


def test_eval_and_sample_of_a_transformer_run(tmp_path, data_cache):
    """`cot-ray eval` and `cot-ray sample` build the run's Transformer G (and M) from its
    checkpoint: NLL_test as the run's own final evaluation, samples of the right length."""
    import json

    from click.testing import CliRunner

    from cot_ray.cli import main
    from tests.conftest import TINY

    sets = [a for kv in TINY + [f"data.cache_dir={data_cache}", "generator.arch=transformer",
                                "generator.num_heads=2", "mediator.arch=transformer"] for a in ("--set", kv)]
    runner = CliRunner()
    res = runner.invoke(main, ["train", "--local", "--json", "--iters", "2", "--logdir", str(tmp_path), *sets])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    ev = runner.invoke(main, ["eval", out["run_dir"], "--json", "--samples", "32"])
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.output.strip().splitlines()[-1])["nll_test"] == pytest.approx(out["metrics"]["nll_test"],
                                                                                       rel=1e-6)
    sm = runner.invoke(main, ["sample", out["run_dir"], "-n", "3", "--ids"])
    assert sm.exit_code == 0 and [len(line.split()) for line in sm.output.strip().splitlines()[-3:]] == [20] * 3
