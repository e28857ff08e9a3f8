"""How `cot-ray compare` decides which runs are seeds of one configuration, and labels them."""

from __future__ import annotations

from cot_ray.compare import configuration, group_labels
from cot_ray.config import load_config


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


def test_settings_that_are_read_split_groups_and_name_the_difference():
    labels, configs = _groups(["mediator.emb_dropout=0"], [], ["cot.algo=mle", "cot.g_steps=2"], ["cot.algo=mle"],
                              ["nested.enabled=true", "inner_mediator.emb_dropout=0"],
                              ["nested.enabled=true"])
    assert len({repr(c) for c in configs}) == 6
    assert labels[0].startswith("cot (") and "mediator.emb_dropout=0.0" in labels[0]
    assert "cot.g_steps=2" in labels[2] and "cot.g_steps=1" in labels[3]
    assert "inner_mediator.emb_dropout=0.0" in labels[4] and "inner_mediator.emb_dropout=0.25" in labels[5]
