"""The models and their losses: the language-model interface, its architectures, the sampler,
the reference and fused losses, and the SeqGAN oracle. Imports only the config schema
(:mod:`cot_ray.config`, :mod:`cot_ray.model_config`).

A new architecture implements :class:`LanguageModel` (interface.py) and registers its class in
:data:`ARCHITECTURES` under the name its config dataclass is registered with
(:data:`cot_ray.model_config.ARCH_CONFIGS`); :func:`build_model` is the one place that constructs a
model from a config.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..config import ModelConfig
from .interface import LanguageModel, copy_weights, cpu_weights, sequence_log_probs
from .lstm import LSTMLM
from .transformer import TransformerLM

# arch name -> model class; the names are those of model_config.ARCH_CONFIGS (tests/test_conformance.py)
ARCHITECTURES: dict[str, type] = {"lstm": LSTMLM, "transformer": TransformerLM}


def architecture(cfg: ModelConfig) -> type:
    """The model class of ``cfg.arch``."""
    return ARCHITECTURES[cfg.arch]


def build_model(vocab_size: int, cfg: ModelConfig, seed: Optional[int] = None,
                device: str | torch.device = "cpu") -> LanguageModel:
    """The model ``cfg`` describes, on ``device``; with ``seed`` its parameters drawn from a CPU
    generator of that seed (the same values on any device), else left to be loaded."""
    model = architecture(cfg)(vocab_size, cfg)
    if seed is not None:
        model.init_weights(torch.Generator().manual_seed(seed))
    return model.to(device)


def model_from_weights(vocab_size: int, cfg: ModelConfig, weights: dict, device: str = "cpu") -> LanguageModel:
    """A model of ``cfg`` holding ``weights`` (a state dict), in eval mode."""
    model = build_model(vocab_size, cfg, device=device)
    copy_weights(model, weights)
    return model.eval()


def vocab_size_of(weights: dict, cfg: ModelConfig) -> Optional[int]:
    """The vocabulary size that ``weights`` of an architecture-``cfg`` model were trained with."""
    return architecture(cfg).vocab_size_of(weights) if isinstance(weights, dict) else None


__all__ = ["ARCHITECTURES", "LSTMLM", "LanguageModel", "TransformerLM", "build_model", "copy_weights", "cpu_weights",
           "model_from_weights", "sequence_log_probs", "vocab_size_of"]
