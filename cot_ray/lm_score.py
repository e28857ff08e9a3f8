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


def _best_or_last(run_dir: str) -> str:
    """A run's best checkpoint (best.pt), else its last."""
    path = os.path.join(run_dir, BEST)
    return path if os.path.exists(path) else os.path.join(run_dir, CHECKPOINT)


def check_lm_run(model_run: str, data):
    """The config of the MLE run ``model_run``, checked to be able to score runs on the text data
    set ``data``; one-line :class:`ConfigError` otherwise: oracle data, a run that is not MLE, or
    another vocabulary."""
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
    return cfg


def load_lm_scorer(model_run: str, data) -> tuple[LanguageModel, str]:
    """The generator of the run in ``model_run`` (its best checkpoint, else its last) as the
    LM-score model for runs on the text data set ``data`` (checked by :func:`check_lm_run`);
    -> (model in eval mode, SHA-256 of the checkpoint it came from)."""
    cfg = check_lm_run(model_run, data)
    path = _best_or_last(model_run)
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
    cfg = copy.deepcopy(check_lm_run(lm_run, data))
    cfg.run.logdir, cfg.run.name, cfg.run.minutes = workdir, "reverse_lm", 0.0
    cfg.eval.num_train, cfg.eval.select = 0, "nll_valid"
    if cfg.run.patience == 0:  # an MLE run without early stopping: the usual rule
        cfg.run.patience, cfg.eval.every = 6, 250
    n_valid = max(1, min(2048, len(samples) // 20))
    on_samples = dataclasses.replace(data, train=samples[n_valid:], valid=samples[:n_valid], references=None,
                                     valid_rows=None, notes=[], summary=f"{len(samples):,} generated sentences")
    out = run_trainer(cfg, data=on_samples, echo=echo)
    best_cfg = resume_config(out["run_dir"])
    state = run_checkpoint(best_cfg, _best_or_last(out["run_dir"]))
    model = checkpoint_models(best_cfg, state, data.vocab_size)[0]
    evaluator = make_evaluator(dataclasses.replace(data, references=None, valid=None), cfg.eval)
    return {"reverse_lm_score": evaluator.evaluate(model, None, 0)["nll_test"],
            "reverse_lm_iteration": int(state["iteration"])}
