"""The recipe's knobs: the mediator's initialisation, embedding dropout, weight decay and the
batch order, each against a direct computation, and the long-horizon benchmark's verdict."""

from __future__ import annotations

import copy
import glob
import importlib.util
import json
import math
import os
import re

import pytest
import torch

from cot_ray.checkpoint import CHECKPOINT, load_checkpoint
from cot_ray.config_loading import load_config, save_config
from cot_ray.data import BatchSampler, load_dataset
from cot_ray.errors import ConfigError
from cot_ray.learners import GeneratorLearner
from cot_ray.model_config import LSTMConfig
from cot_ray.models import LSTMLM
from cot_ray.rundir import read_metrics
from tests.conftest import TINY, assert_same_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make(init="normal", emb=6, hidden=5, layers=1, vocab=40, seed=0, **kw) -> LSTMLM:
    m = LSTMLM(vocab, LSTMConfig(emb_dim=emb, hidden_dim=hidden, num_layers=layers, init=init, **kw))
    m.init_weights(torch.Generator().manual_seed(seed))
    return m


# ----------------------------------------------------------------------------- initialisation

@pytest.mark.parametrize("emb,hidden", [(6, 5), (4, 8)])  # wide and tall input kernels
def test_orthogonal_init_is_orthogonal_per_gate_with_zero_lstm_biases(emb, hidden):
    m = make("orthogonal", emb=emb, hidden=hidden, layers=2, init_std=0.1)
    for name, p in m.named_parameters():
        if name.startswith("lstm.bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        elif name.startswith("lstm.weight"):
            assert p.shape[0] == 4 * hidden
            for gate in p.detach().chunk(4, dim=0):  # i, f, g, o: each (H, in) block on its own
                rows, cols = gate.shape
                gram = gate @ gate.T if rows <= cols else gate.T @ gate
                assert torch.allclose(gram, torch.eye(min(rows, cols)), atol=1e-5), name
    # the embedding and output layer stay N(0, init_std)
    flat = torch.cat([m.embed.weight.flatten(), m.out.weight.flatten(), m.out.bias.flatten()]).detach()
    assert flat.std().item() == pytest.approx(0.1, rel=0.15)


def test_orthogonal_gates_are_independent_blocks_not_one_matrix():
    """Orthogonalising the whole (4H, H) recurrent kernel (one mutation away) would leave each
    gate's block with rows of norm about 1/2, not 1."""
    m = make("orthogonal", emb=8, hidden=8)
    gate = m.lstm.weight_hh_l0.detach()[:8]
    assert torch.allclose(gate.norm(dim=1), torch.ones(8), atol=1e-5)


def test_orthogonal_init_is_reproducible_and_normal_init_unchanged():
    a, b, c = make("orthogonal", seed=3), make("orthogonal", seed=3), make("orthogonal", seed=4)
    for (n, pa), (_, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        assert torch.equal(pa, pb), n
        if "bias_" not in n:
            assert not torch.equal(pa, pc), n
    gen = torch.Generator().manual_seed(5)
    for p in make("normal", seed=5, init_std=0.1).parameters():  # the default draws exactly as before
        assert torch.equal(p, torch.randn(p.shape, generator=gen) * 0.1)


# ----------------------------------------------------------------------------- embedding dropout

def test_embedding_dropout_masks_the_lstm_inputs_then_the_outputs():
    m = make(emb=6, hidden=5, emb_dropout=0.3, dropout=0.5, init_std=1.0).train()
    x = torch.randint(0, 40, (7, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = m.hidden(x, torch.Generator().manual_seed(2))
        gen = torch.Generator().manual_seed(2)
        e = m.embed(m._inputs(x))
        keep_e = torch.empty_like(e).bernoulli_(0.7, generator=gen)  # first the embedding mask
        h, _ = m.lstm(e * keep_e / 0.7)
        keep_h = torch.empty_like(h).bernoulli_(0.5, generator=gen)  # then the output mask
        assert torch.allclose(got, h * keep_h / 0.5, atol=1e-6)
        assert 0.55 < keep_e.mean().item() < 0.85
        # eval mode: neither dropout
        h_eval, _ = m.lstm(e)
        assert torch.equal(m.eval().hidden(x, torch.Generator().manual_seed(2)), h_eval)


def test_zero_embedding_dropout_draws_nothing():
    """Runs without it keep their bits: no random numbers are taken for a zero rate."""
    m = make(emb_dropout=0.0, dropout=0.0).train()
    gen = torch.Generator().manual_seed(8)
    before = gen.get_state()
    m.hidden(torch.zeros(3, 4, dtype=torch.long), gen)
    assert torch.equal(gen.get_state(), before)


def test_the_default_mediator_drops_inputs_and_outputs_in_its_step_and_the_generator_nothing(tiny):
    """The long-horizon fix: M's default step drops a quarter of its input embeddings on top of
    half its LSTM outputs (without the input dropout M memorises the training set and G turns)."""
    from cot_ray.learners import MediatorLearner

    default = load_config(None, [])
    assert (default.mediator.emb_dropout, default.mediator.dropout) == (0.25, 0.5)
    assert (default.inner_mediator.emb_dropout, default.inner_mediator.dropout) == (0.25, 0.5)
    assert (default.generator.emb_dropout, default.generator.dropout) == (0.0, 0.0)

    cfg = tiny()
    data = load_dataset(cfg.data)
    fake = data.train[:16].flip(0)

    def step_loss(emb_dropout):
        c = copy.deepcopy(cfg)
        c.mediator.emb_dropout = emb_dropout
        m = MediatorLearner(c, data.vocab_size, data.seq_len, data.eos_id)
        m.build("cpu", data.train)
        return m.step(fake)["m_mix_nll"], m

    with_it, m = step_loss(0.25)
    assert with_it == step_loss(0.25)[0] and with_it != step_loss(0.0)[0]  # seeded, and it is applied
    assert not m.model.training  # evaluation (M's held-out NLL, G's step) sees no dropout


# ----------------------------------------------------------------------------- weight decay

def test_weight_decay_shrinks_every_weight_by_lr_times_decay_each_step(tiny):
    """AdamW: the step with decay wd equals the step without it minus lr * wd * (old weights)."""
    steps = {}
    for wd in (0.0, 0.25):
        cfg = tiny("cot.algo=mle", f"g_optim.weight_decay={wd}", "g_optim.lr=0.01")
        data = load_dataset(cfg.data)
        g = GeneratorLearner(cfg, data.vocab_size, data.seq_len)
        g.build("cpu", data.train)
        before = {k: v.clone() for k, v in g.get_weights().items()}
        g.step_mle()
        steps[wd] = (before, g.get_weights())
    (b0, a0), (b1, a1) = steps[0.0], steps[0.25]
    for k in b0:
        assert torch.equal(b0[k], b1[k])  # same start
        assert torch.allclose(a1[k], a0[k] - 0.01 * 0.25 * b0[k], atol=1e-6), k


# ----------------------------------------------------------------------------- batch order

def test_fixed_batches_cycle_in_file_order_and_skip_the_tail():
    data = torch.arange(10).unsqueeze(1)  # 10 "sequences"; batches of 3 -> 3 batches, row 9 never used
    s = BatchSampler(data, 3, seed=0, shuffle=False)
    got = [s.next().squeeze(1).tolist() for _ in range(7)]
    assert got == [[0, 1, 2], [3, 4, 5], [6, 7, 8]] * 2 + [[0, 1, 2]]
    # resuming mid-cycle continues the cycle
    t = BatchSampler(data, 3, seed=5, shuffle=False)
    t.load_state(copy.deepcopy(s.state()))
    assert t.next().squeeze(1).tolist() == s.next().squeeze(1).tolist() == [3, 4, 5]


def test_shuffled_batches_reshuffle_every_epoch():
    data = torch.arange(12).unsqueeze(1)
    s = BatchSampler(data, 4, seed=0)
    epochs = [sorted(sum((s.next().squeeze(1).tolist() for _ in range(3)), [])) for _ in range(2)]
    assert epochs == [list(range(12))] * 2  # every sequence once per epoch
    orders = [torch.cat([s.next() for _ in range(3)]).squeeze(1).tolist() for _ in range(3)]
    assert len({tuple(o) for o in orders}) == 3  # a new order each epoch


# ----------------------------------------------------------------------------- config

@pytest.mark.parametrize("override,expect", [
    ("mediator.init=xavier", "config key 'mediator.init' must be 'normal' or 'orthogonal'"),
    ("mediator.emb_dropout=1.0", "config key 'mediator.emb_dropout' must be in [0, 1)"),
    ("m_optim.weight_decay=-0.1", "config key 'm_optim.weight_decay' must be >= 0"),
    ("eval.num_train=-1", "config key 'eval.num_train' must be >= 0"),
    ("data.shuffle=maybe", "config key 'data.shuffle' must be of type bool"),
])
def test_recipe_knobs_reject_bad_values_in_one_line(override, expect):
    with pytest.raises(ConfigError, match=re.escape(expect)):
        load_config(None, [override])


# ----------------------------------------------------------------------------- long-horizon benchmark

def _long_horizon(name="long_horizon"):
    """A benchmark script as a module (benchmarks/NAME.py, which imports its neighbours)."""
    import sys

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        path = os.path.join(ROOT, "benchmarks", f"{name}.py")
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(os.path.join(ROOT, "benchmarks"))


def _write_curve(run_dir, rows):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w", encoding="utf-8") as f:
        for it, o, t in rows:
            f.write(json.dumps({"iteration": it, "elapsed_s": it / 10, "nll_oracle": o, "nll_test": t}) + "\n")


@pytest.mark.parametrize("last,improving", [((20000, 9.5, 7.4), True), ((20000, 9.5, 7.6), False),
                                            ((20000, 9.9, 7.4), False)])
def test_long_horizon_calls_a_run_improving_only_if_both_nlls_beat_the_turn(tmp_path, last, improving):
    lh = _long_horizon()
    _write_curve(tmp_path / "arm", [(2500, 10.0, 7.7), (7500, 9.6, 7.5), last])
    out = lh.summarize("arm", str(tmp_path / "arm"), [], 1.0)
    assert out["improving"] is improving
    assert out["iterations"] == 20000 and out["improving_after"] == 7500
    assert [r["iteration"] for r in out["curve"]] == [2500, 7500, 20000]
    assert math.isfinite(out["curve"][0]["nll_oracle"])


def test_long_horizon_table_lines_up_every_arms_evaluations(tmp_path):
    lh = _long_horizon()
    _write_curve(tmp_path / "a", [(2500, 10.0, 7.7), (7500, 9.6, 7.5)])
    _write_curve(tmp_path / "b", [(2500, 10.1, 7.8), (5000, 9.9, 7.6), (7500, 9.4, 7.45)])
    table = lh.markdown_table([lh.summarize("a", str(tmp_path / "a"), [], 1.0),
                               lh.summarize("b", str(tmp_path / "b"), ["mediator.emb_dropout=0.25"], 1.0)])
    head, rule, a, b = table.splitlines()
    assert head.split(" | ")[2:5] == ["2,500", "5,000", "7,500"]
    assert a.split(" | ")[2:5] == ["10.000 / 7.700", "", "9.600 / 7.500"]  # a missing evaluation stays empty
    assert b.split(" | ")[1] == "mediator.emb_dropout=0.25" and "9.400 / 7.450" in b


def test_long_horizon_selected_table_names_the_evaluation_each_arms_own_metric_picked(tmp_path):
    lh = _long_horizon()
    for name, algo in (("mle", "mle"), ("cot", "cot")):
        run_dir = tmp_path / name
        os.makedirs(run_dir)
        save_config(load_config(None, [f"cot.algo={algo}"]), str(run_dir / "config.yaml"))
        with open(run_dir / "metrics.jsonl", "w", encoding="utf-8") as f:
            for it, o, t, v in ((500, 10.0, 7.8, 7.82), (1000, 9.7, 7.68, 7.69), (1500, 9.4, 7.73, 7.74)):
                f.write(json.dumps({"iteration": it, "nll_oracle": o, "nll_test": t, "nll_valid": v,
                                    "balanced_valid": o + v}) + "\n")
    head, rule, mle, cot = lh.selected_table({"mle": str(tmp_path / "mle"), "cot": str(tmp_path / "cot")}).splitlines()
    # MLE early-stops on NLL_valid: 1,000; CoT selects on NLL_oracle + NLL_valid: 1,500
    assert mle.split(" | ")[2:] == ["1,500", "nll_valid", "1,000 (7.6900)", "9.700 / 7.680", "9.400 / 7.730 |"]
    assert cot.split(" | ")[3:5] == ["balanced_valid", "1,500 (17.1400)"]


def test_long_horizon_arm_continued_with_other_checkpoint_and_eval_intervals_ends_where_a_straight_arm_ends(
        tmp_path, data_cache):
    lh = _long_horizon()
    sets = TINY + [f"data.cache_dir={data_cache}"]
    lh.run_arm("straight", 6, 3, str(tmp_path), 0, 1, sets, checkpoint_every=6)
    lh.run_arm("stopped", 3, 3, str(tmp_path), 0, 1, sets, checkpoint_every=1)
    with pytest.raises(SystemExit, match="was started with"):
        lh.run_arm("stopped", 6, 3, str(tmp_path), 0, 1, sets + ["cot.m_steps=2"])
    out = lh.run_arm("stopped", 6, 2, str(tmp_path), 0, 1, [], checkpoint_every=2)  # evaluated more often
    assert out["overrides"] == sets and out["iterations"] == 6
    assert [r["iteration"] for r in out["curve"]] == [3, 4, 6]
    straight, stopped = (load_checkpoint(str(tmp_path / name / CHECKPOINT)) for name in ("straight", "stopped"))
    assert straight["iteration"] == stopped["iteration"] == 6
    assert_same_tree(straight["g"], stopped["g"], "g")
    assert_same_tree(straight["m"], stopped["m"], "m")
    assert [r["nll_test"] for r in read_metrics(str(tmp_path / "straight"))] == \
        [r["nll_test"] for r in read_metrics(str(tmp_path / "stopped")) if r["iteration"] != 4]


def test_equal_budget_sets_the_costlier_arm_against_the_other_at_equal_iterations_and_equal_wallclock(tmp_path):
    eb = _long_horizon("equal_budget")
    plain = [(i, 12 - i / 5000, 8 - i / 50000) for i in list(range(2500, 20001, 2500)) + [25000, 30000]]
    _write_curve(tmp_path / "plain", plain)
    _write_curve(tmp_path / "nested", [(i, 11 - i / 5000, 8 - i / 40000) for i in range(2500, 17501, 2500)])
    rows = eb.pair_rows(*(eb.with_gap(read_metrics(str(tmp_path / d))) for d in ("plain", "nested")), 1.99)
    assert [r["iteration"] for r in rows] == [2500, 5000, 7500, 10000, 12500, 15000, 17500]
    assert all(r["base_equal_iterations"]["iteration"] == r["iteration"] for r in rows)
    # twice the cost: the plain arm's evaluation nearest 1.99 N, none where it has no evaluation close by
    # (17,500 x 1.99 = 34,825: 4,825 past its last, more than half its 5,000 spacing)
    assert [r["base_equal_wallclock"] and r["base_equal_wallclock"]["iteration"] for r in rows] == \
        [5000, 10000, 15000, 20000, 25000, 30000, None]
    table = eb.markdown(rows, "plain", "nested", 1.99).splitlines()
    assert table[2].split(" | ")[1] == "10.500 / 7.938" and table[2].endswith("| 11.000 / 7.900 (5,000) | - / - |")
    assert table[8].endswith("| - | - |")
    # M's held-out NLL and its train/test gap, where the run logged them
    gap = eb.with_gap([{"iteration": 1, "m_nll_test": 7.5, "m_nll_train": 7.1}, {"iteration": 2}])
    assert gap[0]["m_gap"] == pytest.approx(0.4) and "m_gap" not in gap[1]


# ----------------------------------------------------------------------------- the docs' figures from committed files

def _doc_blocks(name: str) -> list[str]:
    """The text between ``<!-- name -->`` and ``<!-- /name -->``, without the newlines around it,
    in README.md and every docs/**/*.md that has it (at least one does)."""
    pages = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"),
                                                                 recursive=True))
    found = []
    for page in pages:
        text = open(page, encoding="utf-8").read()
        for part in text.split(f"<!-- {name} -->\n")[1:]:
            assert f"<!-- /{name} -->" in part, f"{page}: <!-- {name} --> is not closed"
            found.append(part.split(f"<!-- /{name} -->")[0].rstrip("\n"))
    assert found, f"no page of README.md or docs/ holds the table <!-- {name} -->"
    return found


def test_the_long_horizon_table_is_the_one_the_committed_curves_give():
    lh = _long_horizon()
    root = os.path.join(ROOT, "docs", "long_horizon")
    arms = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    table = lh.markdown_table([lh.summarize(a, os.path.join(root, a), lh.arm_overrides(os.path.join(root, a)), 0.0)
                               for a in arms])
    for shown in _doc_blocks("long-horizon-table"):
        assert shown == table, "the long-horizon table is stale: python benchmarks/long_horizon.py " \
                               "--dir docs/long_horizon --table"


def test_the_committed_cot_vs_mle_comparison_is_what_compare_gives_from_the_committed_sweeps():
    from cot_ray.compare import compare_runs, curves_table, parse_reference

    committed = json.load(open(os.path.join(ROOT, "docs", "cot_vs_mle", "compare.json"), encoding="utf-8"))
    cwd = os.getcwd()
    os.chdir(ROOT)  # the run directories are recorded relative to the repository
    try:
        again = compare_runs([r["run_dir"] for r in committed["runs"]], committed["temperatures"], ("best",),
                             samples=4096, seed=0,
                             references=tuple(parse_reference(f"{r['label']}={r['nll_oracle']}/{r['nll_test']}")
                                              for r in committed["references"]))
    finally:
        os.chdir(cwd)
    assert again["groups"] == committed["groups"] and again["runs"] == committed["runs"]
    assert again["references"] == committed["references"]
    for shown in _doc_blocks("cot-vs-mle-table"):
        assert shown == curves_table(committed).rstrip("\n"), "the CoT-vs-MLE table is stale: docs/cot_vs_mle/compare.md has it"


def test_the_nested_table_is_the_one_equal_budget_gives_from_the_committed_curves():
    eb = _long_horizon("equal_budget")
    plain, nested = (os.path.join(ROOT, "docs", *d) for d in (("long_horizon", "default_s0"),
                                                            ("nested_long", "nested_d1")))
    cost = json.load(open(os.path.join(ROOT, "docs", "nested_long", "iteration_cost.json"), encoding="utf-8"))
    ratio = round(cost["nested"]["ms_per_iter"] / cost["mle_mediator"]["ms_per_iter"], 2)
    assert ratio == 1.99  # the conversion docs/results.md states is the measured one
    rows = eb.pair_rows(eb.with_gap(read_metrics(plain)), eb.with_gap(read_metrics(nested)), ratio)
    for shown in _doc_blocks("nested-long-table"):
        assert shown == eb.markdown(rows, "default_s0", "nested_d1", ratio), \
            "the nested table is stale: python benchmarks/equal_budget.py docs/long_horizon/default_s0 " \
            "docs/nested_long/nested_d1 --cost-ratio 1.99"
