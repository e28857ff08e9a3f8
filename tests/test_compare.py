"""How `cot-ray compare` decides which runs are seeds of one configuration, and labels them."""

from __future__ import annotations

from cot_ray.compare import configuration, group_labels
from cot_ray.config_loading import load_config


def _groups(*override_lists):
    configs = [configuration(load_config(None, list(o))) for o in override_lists]
    return group_labels(configs), configs


def test_seeds_and_bookkeeping_do_not_split_a_group():
    labels, configs = _groups(["run.seed=0", "eval.every=250"], ["run.seed=1", "eval.every=500", "run.threads=2"])
    assert configs[0] == configs[1] and labels == ["cot", "cot"]


def test_settings_an_algorithm_never_reads_neither_split_nor_label_it():
    # an MLE run has no mediator; a plain CoT run has no inner mediator
    labels, configs = _groups(["cot.algo=mle", "mediator.emb_dropout=0", "m_optim.lr=0.001", "cot.m_steps=2"],
                              ["cot.algo=mle", "inner_mediator.emb_dropout=0", "cot.sync_every=3"],
                              ["inner_mediator.emb_dropout=0", "nested.depth=2", "inner_optim.lr=0.01"],
                              [])
    assert configs[0] == configs[1] and configs[2] == configs[3]
    assert labels == ["mle", "mle", "cot", "cot"]


def test_the_rivals_and_the_exact_mediator_group_by_their_own_keys_only():
    """A MixCE run reads mixce.eta, not TaiLr's keys nor M's; CoT with the exact mediator reads
    no mediator model; their labels name what differs."""
    labels, configs = _groups(["cot.algo=mixce", "mixce.eta=0.2", "tailr.gamma=0.5", "mediator.emb_dim=8"],
                              ["cot.algo=mixce", "mixce.eta=0.2"],
                              ["cot.algo=mixce", "mixce.eta=0.7"],
                              ["cot.algo=tailr", "mixce.eta=0.7"], ["cot.algo=tailr"],
                              ["cot.mediator=exact", "mediator.emb_dim=8", "m_optim.lr=0.01"],
                              ["cot.mediator=exact"], [])
    assert configs[0] == configs[1] and configs[3] == configs[4] and configs[5] == configs[6]
    assert len({repr(c) for c in configs}) == 5
    assert labels[0] == "mixce (mixce.eta=0.2)" and labels[2] == "mixce (mixce.eta=0.7)" and labels[3] == "tailr"
    assert labels[5] == "cot (cot.mediator=exact)" and labels[7] == "cot (cot.mediator=learned)"


def test_settings_that_are_read_split_groups_and_name_the_difference():
    labels, configs = _groups(["mediator.emb_dropout=0"], [], ["cot.algo=mle", "cot.g_steps=2"], ["cot.algo=mle"],
                              ["nested.enabled=true", "inner_mediator.emb_dropout=0"],
                              ["nested.enabled=true"])
    assert len({repr(c) for c in configs}) == 6
    assert labels[0].startswith("cot (") and "mediator.emb_dropout=0.0" in labels[0]
    assert "cot.g_steps=2" in labels[2] and "cot.g_steps=1" in labels[3]
    assert "inner_mediator.emb_dropout=0.0" in labels[4] and "inner_mediator.emb_dropout=0.25" in labels[5]


def test_curves_side_by_side_one_row_per_temperature_with_the_spread_where_there_are_seeds():
    from cot_ray.compare import curves_table

    stat = lambda m, s=None: {"mean": m, "std": s}  # noqa: E731
    result = {"text": False, "groups": [
        {"group": "cot", "checkpoint": "best", "seeds": [0], "rows": [
            {"temperature": 0.9, "nll_oracle": stat(8.9304), "nll_test": stat(7.3931)},
            {"temperature": 1.0, "nll_oracle": stat(9.2781), "nll_test": stat(7.3779)}]},
        {"group": "mle", "checkpoint": "last", "seeds": [0, 1, 2], "rows": [
            {"temperature": 1.0, "nll_oracle": stat(9.6981, 0.0614), "nll_test": stat(7.6802, 0.0109)}]}]}
    assert curves_table(result).splitlines() == [
        "| T | cot, best (1 seed): nll_oracle / nll_test | mle, last (3 seeds): nll_oracle / nll_test |",
        "|---|---|---|",
        "| 0.9 | 8.930 / 7.393 | - |",
        "| 1 | 9.278 / 7.378 | 9.698 ± 0.061 / 7.680 ± 0.011 |"]
    # on text the axes are BLEU-4 / self-BLEU-4
    result = {"text": True, "groups": [{"group": "mle", "checkpoint": "best", "seeds": [0], "rows": [
        {"temperature": 1.0, "bleu4": stat(0.25), "self_bleu4": stat(0.5)}]}]}
    assert curves_table(result).splitlines()[2] == "| 1 | 0.250 / 0.500 |"
