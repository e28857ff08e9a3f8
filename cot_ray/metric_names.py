"""The names of the evaluation metrics, without torch: what a run reports, for the CLI, the
sweep files (which are checked before anything heavy is imported) and the metrics themselves."""

from __future__ import annotations

BLEU_ORDERS = (2, 3, 4, 5)
ORACLE_KEYS = ("kl_forward", "kl_reverse", "nll_oracle", "nll_test", "entropy_g", "balanced_nll", "jsd",
               "nll_train", "nll_valid", "balanced_valid")  # oracle runs; the quantities that move first
TEXT_KEYS = ("nll_test",) + tuple(f"bleu{n}" for n in BLEU_ORDERS) + tuple(f"self_bleu{n}" for n in BLEU_ORDERS) \
    + ("nll_train", "nll_valid")  # text runs
MEDIATOR_KEYS = ("jsd_mediator", "m_nll_train", "m_nll_test", "m_nll_fake")  # runs with a mediator (oracle)
TEXT_MEDIATOR_KEYS = ("m_nll_train", "m_nll_test")  # runs with a mediator (text)
LM_SCORE_KEYS = ("lm_score",)  # text, given an LM-score model (eval/compare --lm-score MODEL_RUN)
REVERSE_LM_KEYS = ("reverse_lm_score", "reverse_lm_iteration")  # text, eval --lm-score MODEL_RUN --reverse-lm
METRIC_KEYS = tuple(dict.fromkeys(ORACLE_KEYS + TEXT_KEYS + MEDIATOR_KEYS + LM_SCORE_KEYS
                                  + REVERSE_LM_KEYS))  # every key, in display order


def metric_keys(text: bool, mediator: bool, train: bool = True, valid: bool = True) -> tuple:
    """The keys an evaluation reports: on text or on the oracle, with or without a mediator,
    with or without scoring training sequences (``eval.num_train`` > 0) and a validation set."""
    keys = (TEXT_KEYS + (TEXT_MEDIATOR_KEYS if mediator else ())) if text else \
        (ORACLE_KEYS + (MEDIATOR_KEYS if mediator else ()))
    drop = (() if train else ("nll_train", "m_nll_train")) + (() if valid else ("nll_valid", "balanced_valid"))
    return tuple(k for k in keys if k not in drop)
