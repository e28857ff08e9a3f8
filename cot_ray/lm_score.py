"""The LM-score model of text runs (Caccia et al., ICLR 2020): the generator of an MLE run on the
same training split, standing in for the unknown data distribution when scoring a generator's
samples (``lm_score``, :func:`cot_ray.metrics.lm_score`), as the oracle does for NLL_oracle."""

from __future__ import annotations

import os

from .checkpoint import BEST, CHECKPOINT
from .errors import ConfigError
from .files import file_sha256
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
