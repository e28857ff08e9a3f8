"""Caccia et al.'s (ICLR 2020) pair of text metrics. The LM score's model is the generator of an
MLE run on the same training split, standing in for the unknown data distribution when scoring a
generator's samples (``lm_score``, :func:`cot_ray.metrics.lm_score`), as the oracle does for
NLL_oracle; the reverse-LM score trains that run's recipe on the samples and scores the real
test split with it (:func:`reverse_lm_score`), coverage as NLL_test is."""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Callable

import torch

from .checkpoint import BEST, CHECKPOINT
from .errors import ConfigError
from .files import file_sha256
from .loop import run_trainer
from .metrics import make_evaluator
from .models import LanguageModel
from .rundir import checkpoint_models, resume_config, run_checkpoint
from .text import Vocab


def load_lm_scorer(model_run: str, data) -> tuple[LanguageModel, str]:
    """The generator of the run in ``model_run`` (its best checkpoint, else its last) as the
    LM-score model for runs on the text data set ``data``; -> (model in eval mode, SHA-256 of the
    checkpoint it came from). One-line :class:`ConfigError` when it cannot score them: oracle data,
    a run that is not MLE, or another vocabulary."""
    what = f"--lm-score {model_run}"
    if not data.is_text:
        raise ConfigError(f"{what}: the LM score is a text metric; on the oracle, nll_oracle is the exact one")
    cfg = resume_config(model_run)
    if cfg.cot.algo != "mle":
        raise ConfigError(f"{what}: the LM-score model must be an MLE run on the training split (this one is "
                          f"{cfg.cot.algo}): train one with cot-ray train --algo mle --data ...")
    vocab = Vocab.load(cfg.data.vocab_path) if cfg.data.vocab_path and os.path.exists(cfg.data.vocab_path) else None
    if vocab is None or vocab != data.vocab:
        theirs = "none saved" if vocab is None else f"{len(vocab):,} tokens"
        raise ConfigError(f"{what}: its vocabulary ({theirs}) is not the evaluated run's ({len(data.vocab):,} "
                          "tokens): train the LM-score model on the same training file and settings")
    path = os.path.join(model_run, BEST)
    if not os.path.exists(path):
        path = os.path.join(model_run, CHECKPOINT)
    g, _ = checkpoint_models(cfg, run_checkpoint(cfg, path), data.vocab_size)
    return g.eval(), file_sha256(path)


REVERSE_LM_SAMPLES = 10000  # generated sentences the reverse-LM model trains on, by default (COCO's training split: 10,000)


def reverse_lm_score(lm_run: str, samples: torch.Tensor, data, workdir: str,
                     echo: Callable[[str], None] = lambda s: None) -> dict:
    """Caccia et al.'s reverse-LM score: train a fresh model by MLE on a generator's ``samples``
    (N, T) with the recipe of the MLE run ``lm_run`` (its architecture, optimizer, budget and
    early stopping on NLL_valid, here the NLL of 1/20 of the samples held out, at most 2,048),
    then score the real test split of ``data`` with its best checkpoint. Low when the samples
    cover the data. The run goes under ``workdir`` (the caller's to keep or delete);
    -> {"reverse_lm_score": per-token NLL of the test split, "reverse_lm_iteration": the best
    checkpoint's iteration}."""
    load_lm_scorer(lm_run, data)  # the same checks as the LM score's model
    cfg = copy.deepcopy(resume_config(lm_run))
    cfg.run.logdir, cfg.run.name, cfg.run.minutes = workdir, "reverse_lm", 0.0
    cfg.eval.num_train, cfg.eval.select = 0, "nll_valid"
    if cfg.run.patience == 0:  # an MLE run without early stopping: the usual rule
        cfg.run.patience, cfg.eval.every = 6, 250
    n_valid = max(1, min(2048, len(samples) // 20))
    on_samples = dataclasses.replace(data, train=samples[n_valid:], valid=samples[:n_valid], references=None,
                                     valid_rows=None, notes=[], summary=f"{len(samples):,} generated sentences")
    out = run_trainer(cfg, data=on_samples, echo=echo)
    path = os.path.join(out["run_dir"], BEST)
    best_cfg = resume_config(out["run_dir"])
    state = run_checkpoint(best_cfg, path if os.path.exists(path) else os.path.join(out["run_dir"], CHECKPOINT))
    model = checkpoint_models(best_cfg, state, data.vocab_size)[0]
    evaluator = make_evaluator(dataclasses.replace(data, references=None, valid=None), cfg.eval)
    return {"reverse_lm_score": evaluator.evaluate(model, None, 0)["nll_test"],
            "reverse_lm_iteration": int(state["iteration"])}
