"""The models' configs: one dataclass per architecture, registered under its ``arch`` name.

A model section of the config (``generator``, ``mediator``, ``inner_mediator``) holds the config
of the architecture its ``arch`` names. The keys every architecture has are in
:class:`ModelConfig`, the base; each architecture's dataclass adds its own keys and checks all
of them (:meth:`ModelConfig.validate`). The model classes are registered by the same names in
:data:`cot_ray.models.ARCHITECTURES`. Plain Python: imports neither torch nor Ray, so that a
config is checked before anything heavy starts.

    >>> TransformerConfig(hidden_dim=16, num_heads=4).validate("generator")
    Traceback (most recent call last):
    ...
    cot_ray.errors.ConfigError: config key 'generator.num_heads' must divide generator.hidden_dim (16) into heads of an even width (rotary positions), got 4
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from .errors import check

# arch name -> its config dataclass; filled by @register_arch_config
ARCH_CONFIGS: dict[str, type] = {}


def register_arch_config(name: str):
    """Class decorator: register a :class:`ModelConfig` subclass as the config of ``arch: name``."""
    def register(cls: type) -> type:
        assert name not in ARCH_CONFIGS, f"architecture {name!r} registered twice"
        assert cls.__dataclass_fields__["arch"].default == name, f"{cls.__name__}.arch must default to {name!r}"
        ARCH_CONFIGS[name] = cls
        return cls
    return register


@dataclass
class ModelConfig:
    """An autoregressive language model (G, M and inner mediators). ``arch`` selects the
    architecture, and with it the keys of the section; these keys every architecture has."""

    # the architecture: "lstm" or "transformer" (cot_ray/models/). Setting it keeps the section's
    # keys that both architectures have and gives the others the new architecture's defaults; in
    # one YAML mapping or one command line, arch applies first, whatever the order of the keys
    arch: str = "lstm"
    hidden_dim: int = 32  # LSTM state width; transformer: the width of its residual stream (d_model)
    num_layers: int = 1  # stacked LSTM layers, or Transformer blocks
    # drop probability in the model's own training step only: LSTM on its outputs; transformer on
    # attention probabilities and on each residual branch (attention and feed-forward outputs)
    dropout: float = 0.0
    emb_dropout: float = 0.0  # drop probability on the token embeddings fed to the first layer (own training step only)
    # "normal": every parameter N(0, init_std) (transformer: LayerNorms 1 and 0, biases 0, the
    # residual branches' output projections scaled by 1/sqrt(2 layers)); "orthogonal" (LSTM only):
    # the authors' cuDNN mediator, LSTM kernels orthogonal per gate and LSTM biases 0
    init: str = "normal"
    init_std: float = 0.1  # standard deviation of the N(0, init_std) parameters

    INITS = ("normal",)  # the values of ``init`` this architecture has

    def validate(self, section: str) -> None:
        """Raise a one-line ConfigError naming ``section.KEY`` for an impossible value."""
        for f in ("hidden_dim", "num_layers"):
            check(getattr(self, f) >= 1, f"{section}.{f}", f"must be >= 1, got {getattr(self, f)}")
        for f in ("dropout", "emb_dropout"):
            check(0.0 <= getattr(self, f) < 1.0, f"{section}.{f}", f"must be in [0, 1), got {getattr(self, f)}")
        check(self.init in self.INITS, f"{section}.init",
              f"must be {' or '.join(repr(i) for i in self.INITS)} for arch {self.arch!r}, got {self.init!r}")
        check(self.init_std > 0, f"{section}.init_std", f"must be > 0, got {self.init_std}")

    @classmethod
    def accept_legacy(cls, data: dict, section: str, hidden_dim: int) -> dict:
        """``data`` (a section's keys) without the keys that earlier versions wrote for this
        architecture and that it no longer has, checked; ConfigError if one holds a value that
        the architecture cannot honour."""
        return data


@register_arch_config("lstm")
@dataclass
class LSTMConfig(ModelConfig):
    """The keys of a model section with `arch: lstm` (cot_ray/models/lstm.py): an embedding,
    stacked LSTM layers and an output layer with a bias."""

    arch: str = "lstm"
    emb_dim: int = 32  # token embedding width

    INITS = ("normal", "orthogonal")

    def validate(self, section: str) -> None:
        super().validate(section)
        check(self.emb_dim >= 1, f"{section}.emb_dim", f"must be >= 1, got {self.emb_dim}")


@register_arch_config("transformer")
@dataclass
class TransformerConfig(ModelConfig):
    """The keys of a model section with `arch: transformer` (cot_ray/models/transformer.py): a
    decoder-only causal Transformer, pre-LayerNorm blocks, rotary positions. Its width is
    `hidden_dim`: it has no `emb_dim` (a config.yaml of earlier versions that holds one equal to
    `hidden_dim` loads)."""

    arch: str = "transformer"
    num_heads: int = 4  # attention heads (hidden_dim / num_heads even, for the rotary positions)
    ff_dim: int = 0  # feed-forward width; 0: 4 x hidden_dim
    tie_output: bool = True  # the output layer is the token embedding, without a bias

    def validate(self, section: str) -> None:
        super().validate(section)
        h = self.hidden_dim
        check(self.num_heads >= 1 and h % self.num_heads == 0 and (h // self.num_heads) % 2 == 0,
              f"{section}.num_heads", f"must divide {section}.hidden_dim ({h}) into heads of an even "
              f"width (rotary positions), got {self.num_heads}")
        check(self.ff_dim >= 0, f"{section}.ff_dim", f"must be >= 0 (0: 4 x hidden_dim), got {self.ff_dim}")

    @classmethod
    def accept_legacy(cls, data: dict, section: str, hidden_dim: int) -> dict:
        """Earlier versions gave the transformer an ``emb_dim`` equal to its ``hidden_dim`` (their
        config.yaml holds it): accepted and dropped when equal."""
        if "emb_dim" not in data:
            return data
        check(data["emb_dim"] == hidden_dim, f"{section}.emb_dim",
              f"belongs to arch {arch_having('emb_dim')!r}, and {section}.arch is 'transformer', whose embedding "
              f"width is {section}.hidden_dim ({hidden_dim}), got {data['emb_dim']!r}: drop it, or set "
              f"{section}.hidden_dim")
        return {k: v for k, v in data.items() if k != "emb_dim"}


def arch_fields(cls: type) -> list[str]:
    """The keys of a model section of architecture config ``cls``."""
    return [f.name for f in dataclasses.fields(cls)]


def arch_having(key: str) -> Optional[str]:
    """The first registered architecture whose config has ``key``, or None."""
    return next((name for name, cls in ARCH_CONFIGS.items() if key in arch_fields(cls)), None)


def switch_arch(current: ModelConfig, arch: str, section: str) -> ModelConfig:
    """``current`` as a config of architecture ``arch``: the keys both have keep their values,
    the others take ``arch``'s defaults; ConfigError naming ``section.arch`` if none is registered."""
    check(arch in ARCH_CONFIGS, f"{section}.arch", f"must be one of {', '.join(ARCH_CONFIGS)}, got {arch!r}")
    cls = ARCH_CONFIGS[arch]
    if type(current) is cls:
        return current
    common = set(arch_fields(cls)) & set(arch_fields(type(current))) - {"arch"}
    return cls(**{k: getattr(current, k) for k in common})


# The keys of the one flat model config of earlier versions, whose config.yaml files hold them all
# in every model section, whatever the architecture; there the keys of another architecture had
# no effect, and loading such a file drops them.
FLAT_MODEL_KEYS = frozenset({"arch", "emb_dim", "hidden_dim", "num_layers", "dropout", "emb_dropout", "num_heads",
                             "ff_dim", "tie_output", "init", "init_std"})


def model_section(current: ModelConfig, data: dict, section: str) -> tuple[ModelConfig, dict]:
    """The config that a model section's mapping ``data`` starts from (``current``, switched to
    the architecture ``data["arch"]`` names if it names one), and the keys left to set on it.
    A key of another architecture is a one-line ConfigError naming that architecture."""
    rest = dict(data)
    if "arch" in rest:
        arch = rest.pop("arch")
        check(isinstance(arch, str), f"{section}.arch", f"must be of type str, got {type(arch).__name__} {arch!r}")
        current = switch_arch(current, arch, section)
    cls = type(current)
    own = set(arch_fields(cls))
    if FLAT_MODEL_KEYS <= set(data):
        rest = {k: v for k, v in rest.items() if k in own or k not in FLAT_MODEL_KEYS or k == "emb_dim"}
    rest = cls.accept_legacy(rest, section, rest.get("hidden_dim", current.hidden_dim))
    for key in rest:
        other = arch_having(key) if key not in own else None
        check(other is None, f"{section}.{key}", f"belongs to arch {other!r}, and {section}.arch is "
              f"{current.arch!r}: set {section}.arch={other}, or drop the key")
    return current, rest
