"""Nested CoT: the mediator trained by an inner CoT game instead of MLE.

The exact checks use the enumerable problem of test_losses (vocabulary 3, length 3: all 27
sequences), so the distance between the trained mediator and its target (P + G) / 2 is an
exact JSD, not an estimate. The learners are the production ones, fed with samples.
"""

from __future__ import annotations

import itertools
import json
import os

import pytest
import torch

from cot_ray.checkpoint import CHECKPOINT, load_checkpoint
from cot_ray.config_loading import load_config
from cot_ray.learners import MediatorLearner, build_inner
from cot_ray.loop import run_trainer
from cot_ray.model_config import LSTMConfig
from cot_ray.models import LSTMLM
from cot_ray.models.losses import mediator_loss, mixture_loss, token_nll
from cot_ray.rundir import resume_config
from tests.conftest import assert_same_tree, event_scalars

V, T = 3, 3
ALL = torch.tensor(list(itertools.product(range(V), repeat=T)))  # (27, T)

pytestmark = pytest.mark.usefixtures("one_thread")


def _lm(seed: int) -> LSTMLM:
    m = LSTMLM(V, LSTMConfig(emb_dim=4, hidden_dim=8, init_std=1.0))
    m.init_weights(torch.Generator().manual_seed(seed))
    return m.eval()


@torch.no_grad()
def _probs(model: LSTMLM) -> torch.Tensor:
    return model.sequence_log_prob(ALL).double().exp()  # (27,)


def _jsd(p: torch.Tensor, q: torch.Tensor) -> float:
    m = 0.5 * (p + q)
    return 0.5 * ((p * (p / m).log()).sum() + (q * (q / m).log()).sum()).item()


def _train_mediator(depth: int, steps: int):
    """A nested mediator of ``depth`` levels trained on samples of P (real) and G (fake).

    -> (exact JSD of M to (P + G) / 2 at the start, at the end, last stats)."""
    P, G = _lm(0), _lm(1)
    q = 0.5 * (_probs(P) + _probs(G))
    gen = torch.Generator().manual_seed(5)
    real = P.sample(20000, T, gen)
    small = ["emb_dim=8", "hidden_dim=16", "dropout=0.0"]
    cfg = load_config(None, [f"mediator.{kv}" for kv in small + ["init_std=1.0"]]
                      + [f"inner_mediator.{kv}" for kv in small]
                      + ["m_optim.lr=0.01", "inner_optim.lr=0.01", "cot.batch_size=64",
                         "nested.enabled=true", f"nested.depth={depth}"])
    m = MediatorLearner(cfg, V, T)
    m.build("cpu", real, build_inner(cfg, V, T, None, "cpu"))
    start = _jsd(_probs(m.model), q)
    stats = {}
    for _ in range(steps):
        stats = m.step(G.sample(64, T, gen))
    return start, _jsd(_probs(m.model), q), stats


def test_mixture_loss_with_two_halves_is_the_mediator_loss():
    gen = torch.Generator().manual_seed(0)
    lr, lf = (torch.randn(b, 4, 6, generator=gen, dtype=torch.float64) for b in (5, 3))
    r, f = torch.randint(0, 6, (5, 4), generator=gen), torch.randint(0, 6, (3, 4), generator=gen)
    mr, mf = (torch.rand(5, 4, generator=gen) > 0.3).double(), torch.ones(3, 4, dtype=torch.float64)
    got, stats = mixture_loss([lr, lf], [r, f], [0.5, 0.5], [mr, mf], (None, "own"))
    want, _ = mediator_loss(lr, r, lf, f, mr, mf)
    assert got.item() == want.item()
    assert stats["nll_own"].item() == pytest.approx(token_nll(lf, f).mean().item(), abs=1e-12)
    # three groups: each weight multiplies its own group's mean token NLL
    x = torch.randint(0, 6, (2, 4), generator=gen)
    lx = torch.randn(2, 4, 6, generator=gen, dtype=torch.float64)
    got3, _ = mixture_loss([lr, lf, lx], [r, f, x], [0.25, 0.25, 0.5])
    want3 = sum(w * token_nll(lg, t).mean() for w, lg, t in ((0.25, lr, r), (0.25, lf, f), (0.5, lx, x)))
    assert got3.item() == pytest.approx(want3.item(), abs=1e-12)


def test_nested_mediator_converges_to_the_mixture():
    """M never sees an MLE step: only CoT steps against its inner mediator, which learns the
    mixture of (P + G) / 2 and M. M still ends at (P + G) / 2: exact JSD 0.29 -> < 0.01."""
    start, end, stats = _train_mediator(depth=1, steps=400)
    assert start > 0.2
    assert end < 0.01
    assert {"m_kl", "m_grad_norm", "inner/mix_nll", "inner/nll_own", "inner/grad_norm"} == set(stats)


def test_depth_two_trains_every_level_and_converges():
    start, end, stats = _train_mediator(depth=2, steps=300)
    assert {"m_kl", "inner/kl", "inner/inner/mix_nll"} <= set(stats)
    assert start > 0.2
    assert end < 0.03


@pytest.mark.parametrize("inner", ["lstm", "transformer"])
def test_nested_run_resumes_exactly_and_logs_inner_losses(tiny, inner):
    overrides = ("nested.enabled=true", "nested.depth=2", "nested.m_steps=2", "nested.g_steps=2",
                 "inner_mediator.emb_dim=8", "inner_mediator.hidden_dim=8", "eval.every=2",
                 "run.checkpoint_every=100", f"inner_mediator.arch={inner}",
                 *(("inner_mediator.num_heads=2",) if inner == "transformer" else ()))
    quiet = lambda msg: None  # noqa: E731
    full = run_trainer(tiny(*overrides, "run.iters=4", "run.name=full"), echo=quiet)
    half = run_trainer(tiny(*overrides, "run.iters=2", "run.name=half"), echo=quiet)
    resumed = run_trainer(resume_config(half["run_dir"], iters=4), resume_dir=half["run_dir"], echo=quiet)
    a, b = (load_checkpoint(os.path.join(r["run_dir"], CHECKPOINT)) for r in (full, resumed))
    assert "inner" in a["m"] and "inner" in a["m"]["inner"]  # both levels are in the checkpoint
    assert_same_tree({k: a[k] for k in ("g", "m", "iteration")}, {k: b[k] for k in ("g", "m", "iteration")})
    assert resumed["metrics"] == full["metrics"]
    assert {"jsd_mediator", "nll_oracle"} <= set(full["metrics"])
    tags = set(event_scalars(full["run_dir"]))
    assert {"train/m_kl", "train/inner/kl", "train/inner/grad_norm", "train/inner/inner/mix_nll",
            "train/g_kl"} <= tags


def test_a_plain_checkpoint_cannot_resume_as_nested(tiny):
    plain = run_trainer(tiny("run.iters=1", "run.name=plain"), echo=lambda m: None)
    state = load_checkpoint(os.path.join(plain["run_dir"], CHECKPOINT))
    cfg = tiny("nested.enabled=true")
    m = MediatorLearner(cfg, 5000, 20)
    m.build("cpu", torch.zeros(16, 20, dtype=torch.long), build_inner(cfg, 5000, 20, None, "cpu"))
    with pytest.raises(ValueError, match="trained without nesting"):
        m.load_state(state["m"])


def test_cli_trains_nested_and_eval_reports_the_same_metrics(tmp_path, data_cache):
    from click.testing import CliRunner

    from cot_ray.cli import main
    from tests.conftest import TINY

    sets = [a for kv in TINY + [f"data.cache_dir={data_cache}", "inner_mediator.emb_dim=8",
                                "inner_mediator.hidden_dim=8"] for a in ("--set", kv)]
    runner = CliRunner()
    res = runner.invoke(main, ["train", "--local", "--json", "--nested", "--nest-depth", "1", "--iters", "2",
                               "--logdir", str(tmp_path), *sets], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert "m_kl" in res.output  # the progress line shows the mediator's CoT loss
    ev = runner.invoke(main, ["eval", summary["run_dir"], "--json"], catch_exceptions=False)
    assert ev.exit_code == 0, ev.output
    metrics = json.loads(ev.output.strip().splitlines()[-1])
    assert set(metrics) >= {"nll_oracle", "nll_test", "balanced_nll", "jsd", "jsd_mediator"}
    # the checkpoint's G and M: NLL_test is exact; the rest is over other G samples (eval's seed)
    assert metrics["nll_test"] == pytest.approx(summary["metrics"]["nll_test"], rel=1e-6)
    assert metrics["jsd_mediator"] == pytest.approx(summary["metrics"]["jsd_mediator"], rel=0.01)
