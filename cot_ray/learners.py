"""Learners: one model, its optimizer and its RNG streams, and how to take one step.

Every learner has one shape, so that the Ray runtime makes actors of the classes as they are
(``ray.remote(GeneratorLearner).options(...)``) and tests run the very same classes in process:

* a cheap constructor that only keeps the configuration (``cfg, vocab_size, seq_len,
  eos_id``): an actor that Ray restarts reruns only this;
* ``build(device, ...)`` creates the model, optimizer and RNG streams of the run's seed on
  ``device``, with what the learner works with passed in (the training set; for a nested
  mediator, the inner learner one level down). A learner does not know where it lives:
  placement is the caller's decision;
* ``is_built()``; training calls (``step``/``fit``/``sample``...); ``get_weights()`` and
  ``state()``/``load_state()`` (everything that leaves a learner is on the CPU).

Everything random a learner does comes from generators it owns, so a run is reproducible
whichever process each learner lives in (see docs/runtime.md, "Determinism"). Process-wide settings
(torch threads, glibc's malloc) belong to the process: the entry points and the runtime set
them, never a learner.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from . import seeds
from .checkpoint import WEIGHTS, CheckpointError
from .config import LIKELIHOOD_ALGOS, Config, ModelConfig, OptimConfig, learned_mediator
from .data import BatchSampler
from .errors import ConfigError
from .models import (
    LanguageModel,
    build_model,
    copy_weights,
    cpu_weights,
    model_from_weights,
)
from .models.fused import (
    fused_cot_generator_loss,
    fused_kl_to_log_probs,
    fused_mixture_loss,
    fused_mle_loss,
    fused_weighted_mle_loss,
)
from .models.losses import exact_mixture_log_probs, mixce_weights, tailr_weights
from .models.oracle import build_oracle
from .seeds import derive_seed
from .text import loss_mask, trim_padding


def token_weighting(cfg: Config):
    """The token weights of ``cfg``'s reweighted MLE (a function of the model's probabilities of
    the data tokens), or None for plain MLE and CoT."""
    if cfg.cot.algo == "mixce":
        return functools.partial(mixce_weights, eta=cfg.mixce.eta)
    if cfg.cot.algo == "tailr":
        return functools.partial(tailr_weights, gamma=cfg.tailr.gamma, min_weight=cfg.tailr.min_weight)
    return None


def level_prefix(level: int) -> str:
    """Stats prefix of a mediator: "m_" for M; "inner/" per level below it (TensorBoard
    then shows them as train/inner/..., train/inner/inner/...)."""
    return "m_" if level == 0 else "inner/" * level


class LearnerNotBuiltError(RuntimeError):
    """A learner was called before :meth:`build` (for example an actor that Ray restarted)."""


# The state sizes of torch's device generators: the CPU's Mersenne Twister, CUDA's Philox (seed, offset).
_RNG_STATE_BYTES = {5056: "cpu", 16: "cuda"}


def rng_device(state: dict) -> Optional[str]:
    """The device type whose generators a learner's checkpointed state comes from: recorded as
    ``rng_device``, or (older checkpoints) told by the size of its generator state."""
    if "rng_device" in state:
        return state["rng_device"]
    gen = state.get("gen", state.get("dropout_gen"))
    return _RNG_STATE_BYTES.get(int(gen.numel())) if isinstance(gen, torch.Tensor) else None


def check_rng_device(state: dict, device: torch.device, who: str) -> None:
    """A one-line :class:`CheckpointError` when a learner's state was drawn by another device's
    generators than ``device``'s: a CPU generator (mt19937) and a CUDA one (Philox) are
    different random streams, so no state of one continues the other; the run resumes exactly
    only on the device type it ran on."""
    saved = rng_device(state)
    if saved is None or saved == device.type:
        return
    how = ("on a machine with GPUs (--gpus-per-worker 1, or --local with --set run.device=cuda)" if saved == "cuda"
           else "on CPUs (--gpus-per-worker 0, or --local)")
    raise CheckpointError(f"the checkpoint's {who} drew its random numbers on {saved} but would continue on "
                          f"{device.type}, whose random generator is another stream: the run cannot continue exactly "
                          f"there; resume it {how}")


def _build(vocab_size: int, mcfg: ModelConfig, ocfg: OptimConfig, seed: int, device: torch.device):
    model = build_model(vocab_size, mcfg, seed, device).eval()  # training steps switch to training mode and back
    # AdamW is Adam with decoupled weight decay; at weight_decay 0 it computes exactly Adam's steps.
    optim = torch.optim.AdamW(model.parameters(), lr=ocfg.lr, betas=(ocfg.beta1, ocfg.beta2),
                              weight_decay=ocfg.weight_decay)
    return model, optim


def _update(model: LanguageModel, optim: torch.optim.Optimizer, loss: torch.Tensor, grad_clip: float) -> float:
    optim.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    optim.step()
    return norm


def _to_floats(stats: dict, prefix: str) -> dict:
    return {f"{prefix}{k}": float(v) for k, v in stats.items()}


def _mean_stats(stats: list[dict]) -> dict:
    """Per-key means of several steps' stats (a key missing from some steps averages the rest)."""
    sums: dict = {}
    for st in stats:
        for k, v in st.items():
            total, n = sums.get(k, (0.0, 0))
            sums[k] = (total + v, n + 1)
    return {k: total / n for k, (total, n) in sums.items()}


def _cpu_state(optim: torch.optim.Optimizer) -> dict:
    """The optimizer's state_dict with every tensor copied to the CPU."""
    def cpu(x):
        if isinstance(x, torch.Tensor):
            return x.detach().to("cpu", copy=True)
        if isinstance(x, dict):
            return {k: cpu(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(cpu(v) for v in x)
        return x

    return cpu(optim.state_dict())


def _hidden(model: LanguageModel, tokens: torch.Tensor, dropout_gen: Optional[torch.Generator] = None,
            bf16: bool = False) -> torch.Tensor:
    """``model.hidden(tokens)`` (B, T, H); with ``bf16`` its forward pass (and so its backward)
    runs in bfloat16 autocast and the states come back as float32: the weights, the optimizer
    and the losses' reductions stay float32 (``run.precision`` "bf16")."""
    if not bf16:
        return model.hidden(tokens, dropout_gen)
    with torch.autocast(model.device.type, dtype=torch.bfloat16):
        return model.hidden(tokens, dropout_gen).float()


def _cot_update(model: LanguageModel, optim: torch.optim.Optimizer, target: LanguageModel, own: torch.Tensor,
                mask: Optional[torch.Tensor], grad_clip: float, chunk: int,
                dropout_gen: Optional[torch.Generator] = None, bf16: bool = False) -> dict:
    """One CoT generator update of ``model`` on its own samples ``own`` (B, T): minimise the
    per-step KL(pi_model || pi_target) with ``target`` held fixed (no gradient reaches it)."""
    model.train()
    with torch.no_grad():
        t_hidden = _hidden(target, own, bf16=bf16)  # (B, T, H_target); the fused loss runs both output layers
    loss, stats = fused_cot_generator_loss(_hidden(model, own, dropout_gen, bf16), *model.output_layer(),
                                           t_hidden, *target.output_layer(), mask, chunk)
    stats["grad_norm"] = _update(model, optim, loss, grad_clip)
    model.eval()
    return stats


def check_bf16(model: LanguageModel, mcfg: ModelConfig, key: str) -> None:
    """``run.precision`` bf16 needs the device's bfloat16 kernels for ``model``: one forward pass
    of two tokens in autocast (no seeded generator is touched), else a one-line ConfigError
    (oneDNN, for one, runs an LSTM in bfloat16 only on CPUs with AVX512-BF16 or AMX)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _hidden(model, torch.zeros((1, 2), dtype=torch.long, device=model.device), bf16=True)
    except RuntimeError as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"run.precision bf16: torch cannot run the {key} ({mcfg.arch}) in bfloat16 on "
                          f"{model.device.type} here ({reason.rstrip('.')}): use run.precision fp32"
                          + (f", or {key}.arch transformer" if mcfg.arch == "lstm" else "")) from None
    finally:
        model.train(was_training)


class _Learner:
    """What every learner shares: the configuration, the built flag, weights out."""

    def __init__(self, cfg: Config, vocab_size: int, seq_len: int, eos_id: Optional[int] = None):
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.eos_id = eos_id
        self.chunk = cfg.run.chunk_rows
        self.bf16 = cfg.run.precision == "bf16"  # training forward passes in bfloat16 autocast
        self.model: Optional[LanguageModel] = None  # set by build()

    def is_built(self) -> bool:
        return self.model is not None

    def _need_built(self) -> None:
        if self.model is None:
            raise LearnerNotBuiltError(f"{type(self).__name__} is not built yet: call build() first")

    def get_weights(self) -> dict:
        """Detached CPU copies of the model's parameters."""
        self._need_built()
        return cpu_weights(self.model)

    def device_name(self) -> str:
        """The torch device the learner computes on ("" before it is built)."""
        return str(self.device) if self.is_built() else ""


class GeneratorLearner(_Learner):
    """G: samples sequences and takes CoT steps against a local copy of M (or MLE steps)."""

    def build(self, device: str = "cpu", train: Optional[torch.Tensor] = None) -> None:
        """Fresh model, optimizer and RNG streams on ``device``; MLE needs the training set ``train``."""
        cfg = self.cfg
        self.device = torch.device(device)
        self.model, self.optim = _build(self.vocab_size, cfg.generator, cfg.g_optim,
                                        derive_seed(cfg.run.seed, seeds.INIT_G), self.device)
        if self.bf16:
            check_bf16(self.model, cfg.generator, "generator")
        self.sample_gen = torch.Generator(device=self.device).manual_seed(derive_seed(cfg.run.seed, seeds.SAMPLE_G))
        self.batches = None
        if cfg.cot.algo in LIKELIHOOD_ALGOS:
            if train is None:
                raise ValueError(f"an {cfg.cot.algo} generator needs the training set: build(device, train)")
            self.batches = BatchSampler(train, cfg.cot.batch_size, derive_seed(cfg.run.seed, seeds.BATCH_G),
                                        cfg.data.shuffle)
        self.token_weight = token_weighting(cfg)
        # G's copy of the mediator (CoT only): only ever evaluated, never trained here.
        self.mediator = None
        if learned_mediator(cfg):
            self.mediator = build_model(self.vocab_size, cfg.mediator, device=self.device).eval().requires_grad_(False)
        # The exact mediator's data distribution (cot.mediator exact): the oracle, on G's device.
        self.oracle = None
        if cfg.cot.algo == "cot" and cfg.cot.mediator == "exact":
            self.oracle = build_oracle().to(self.device).eval().requires_grad_(False)
        self.steps = 0

    def sample(self, n: int) -> torch.Tensor:
        """-> (n, T) int64 on the CPU (cheap to send to another worker)."""
        self._need_built()
        self.model.eval()
        return self.model.sample(n, self.seq_len, self.sample_gen, stop_id=self.eos_id).cpu()

    def set_mediator_weights(self, weights: dict) -> None:
        self._need_built()
        copy_weights(self.mediator, weights)

    def evaluate(self, evaluator, m_weights: Optional[dict], seed: int) -> dict:
        """Evaluate G here, on its device (and M, given its weights): what a GPU run does, so
        that the test set is scored where the model already is. ``evaluator`` is a
        :class:`cot_ray.metrics.Evaluator`."""
        self._need_built()
        m = model_from_weights(self.vocab_size, self.cfg.mediator, m_weights, str(self.device)) \
            if m_weights is not None else None
        return evaluator.to(self.device).evaluate(self.model, m, seed)

    def step_cot(self, fake: torch.Tensor, start: int = 0, size: Optional[int] = None) -> dict:
        """One CoT update on ``fake[start:start+size]``, G's own samples: minimise KL(pi_G || pi_M)."""
        self._need_built()
        fake, = trim_padding([fake[start:start + (size or len(fake))].to(self.device)], self.eos_id)
        if self.oracle is not None:
            stats = self._exact_cot_update(fake)
        else:
            stats = _cot_update(self.model, self.optim, self.mediator, fake, loss_mask(fake, self.eos_id),
                                self.cfg.g_optim.grad_clip, self.chunk, bf16=self.bf16)
        self.steps += 1
        return _to_floats(stats, "g_")

    def _exact_cot_update(self, fake: torch.Tensor) -> dict:
        """CoT's generator update against the exact mixture (P + G) / 2 of the oracle and G as
        it is now (:func:`exact_mixture_log_probs`), held fixed during the update."""
        self.model.eval()
        with torch.no_grad():
            m_log_probs = exact_mixture_log_probs(self.oracle(fake), self.model(fake), fake)  # (B, T, V)
        self.model.train()
        loss, stats = fused_kl_to_log_probs(_hidden(self.model, fake, bf16=self.bf16), *self.model.output_layer(),
                                            m_log_probs, loss_mask(fake, self.eos_id), self.chunk)
        stats["grad_norm"] = _update(self.model, self.optim, loss, self.cfg.g_optim.grad_clip)
        self.model.eval()
        return stats

    def step_mle(self) -> dict:
        """One update on a batch of real sequences: MLE, or MixCE's or TaiLr's reweighted MLE."""
        self._need_built()
        real, = trim_padding([self.batches.next().to(self.device)], self.eos_id)
        self.model.train()
        hidden, mask = _hidden(self.model, real, bf16=self.bf16), loss_mask(real, self.eos_id)
        if self.token_weight is None:
            loss, stats = fused_mle_loss(hidden, *self.model.output_layer(), real, mask, self.chunk)
        else:
            loss, stats = fused_weighted_mle_loss(hidden, *self.model.output_layer(), real, self.token_weight,
                                                  mask, self.chunk)
        stats["grad_norm"] = _update(self.model, self.optim, loss, self.cfg.g_optim.grad_clip)
        self.steps += 1
        return _to_floats(stats, "g_")

    def state(self) -> dict:
        self._need_built()
        return {WEIGHTS: cpu_weights(self.model), "optim": _cpu_state(self.optim),
                "mediator": cpu_weights(self.mediator) if self.mediator is not None else None,
                "gen": self.sample_gen.get_state().cpu(), "rng_device": self.device.type,
                "batches": self.batches.state() if self.batches else None, "steps": self.steps}

    def load_state(self, state: dict) -> None:
        self._need_built()
        check_rng_device(state, self.device, "generator")
        copy_weights(self.model, state[WEIGHTS])
        self.optim.load_state_dict(state["optim"])
        if self.mediator is not None:
            copy_weights(self.mediator, state["mediator"])
        self.sample_gen.set_state(state["gen"])
        if self.batches is not None:
            self.batches.load_state(state["batches"])
        self.steps = int(state["steps"])


class InnerMediatorLearner(_Learner):
    """A model fitted to a weighted mixture of groups of sequences: by MLE, or by nested CoT.

    ``fit(groups)`` takes one step towards ``sum_k w_k * D_k``, where ``groups`` is
    ``[(tokens_k (n_k, T), w_k), ...]`` with weights summing to 1 and ``tokens_k`` samples of
    ``D_k``. At the innermost level that step is MLE on the groups, each group's mean per-token
    NLL weighted by ``w_k`` (with two halves of weight 1/2 this is exactly ``L_M``).

    Above it (``cfg.nested``, levels < ``nested.depth``), the model plays the generator of an
    inner CoT game whose data distribution is that mixture: it draws ``(nested.m_steps + 1) * B``
    samples; the inner learner one level down takes ``nested.m_steps`` steps towards the
    balanced mixture of the groups (weights halved) and those samples (weight 1/2); this model
    then takes ``nested.g_steps`` CoT steps against the inner model (the first on the last
    chunk of the samples, each further one on fresh samples), exactly as G does against M.
    The inner learner is reached through four calls (``fit``, ``get_weights``, ``state``,
    ``load_state``) and its weights are copied into ``inner_model`` before the CoT steps, so
    wherever it lives the numbers are the same.
    """

    def __init__(self, cfg: Config, vocab_size: int, seq_len: int, eos_id: Optional[int] = None, level: int = 1):
        super().__init__(cfg, vocab_size, seq_len, eos_id)
        self.level = level
        self.nested = cfg.nested.enabled and level < cfg.nested.depth
        self.mcfg, self.ocfg = (cfg.mediator, cfg.m_optim) if level == 0 else (cfg.inner_mediator, cfg.inner_optim)

    def build(self, device: str = "cpu", inner=None) -> None:
        """Fresh model, optimizer and RNG streams on ``device``.

        A nested level needs ``inner``, the learner one level down (an object with ``fit``,
        ``get_weights``, ``state`` and ``load_state``: a built :class:`InnerMediatorLearner`, or a
        handle to one in another process); :func:`build_inner` builds the in-process chain.
        """
        seed, level = self.cfg.run.seed, self.level
        self.device = torch.device(device)
        self.model, self.optim = _build(self.vocab_size, self.mcfg, self.ocfg,
                                        derive_seed(seed, seeds.level_stream(level, seeds.INIT_M)), self.device)
        if self.bf16:
            check_bf16(self.model, self.mcfg, "mediator" if level == 0 else "inner_mediator")
        self.dropout_gen = torch.Generator(device=self.device).manual_seed(
            derive_seed(seed, seeds.level_stream(level, seeds.DROPOUT_M)))
        if self.nested:
            if inner is None:
                raise ValueError(f"the nested mediator at level {level} needs its inner learner: "
                                 "build(device, inner=...) (see build_inner)")
            self.sample_gen = torch.Generator(device=self.device).manual_seed(
                derive_seed(seed, seeds.level_stream(level, seeds.SAMPLE_M)))
            self.inner_model = build_model(self.vocab_size, self.cfg.inner_mediator, device=self.device).eval()
            self.inner_model.requires_grad_(False)
        self.inner = inner if self.nested else None
        self.steps = 0

    def build_here(self, device: str = "cpu") -> None:
        """:meth:`build` with every inner level below this one built here too (the inner actor)."""
        self.build(device, build_inner(self.cfg, self.vocab_size, self.seq_len, self.eos_id, device, self.level + 1))

    def sample(self, n: int) -> torch.Tensor:
        """-> (n, T) int64 on the CPU: this model's own samples (nested levels only)."""
        self._need_built()
        self.model.eval()
        return self.model.sample(n, self.seq_len, self.sample_gen, stop_id=self.eos_id).cpu()

    def fit(self, groups: list, names: Optional[tuple] = None) -> dict:
        """One step towards the mixture of ``groups``; -> float stats named for this level.

        ``names``: MLE steps report group k's mean NLL as ``nll_<names[k]>`` (None: the
        last group's as ``nll_own``, nested CoT's convention: the outer model's samples last)."""
        self._need_built()
        stats = self._cot_fit(groups) if self.nested else self._mle_fit(groups, names)
        self.steps += 1
        return stats

    def _mle_fit(self, groups: list, names: Optional[tuple]) -> dict:
        tokens = trim_padding([x.to(self.device) for x, _ in groups], self.eos_id)
        names = names if names is not None else (None,) * (len(groups) - 1) + ("own",)
        self.model.train()
        hidden = _hidden(self.model, torch.cat(tokens), self.dropout_gen, self.bf16)  # one pass over every group
        loss, stats = fused_mixture_loss(hidden, tokens, [w for _, w in groups], *self.model.output_layer(),
                                         [loss_mask(x, self.eos_id) for x in tokens],
                                         names, self.chunk)
        stats["grad_norm"] = _update(self.model, self.optim, loss, self.ocfg.grad_clip)
        self.model.eval()
        return _to_floats(stats, level_prefix(self.level))

    def _cot_fit(self, groups: list) -> dict:
        B, nested = self.cfg.cot.batch_size, self.cfg.nested
        own = self.sample((nested.m_steps + 1) * B)
        halved = [(x, 0.5 * w) for x, w in groups]
        inner_stats = [self.inner.fit(halved + [(own[i * B:(i + 1) * B], 0.5)]) for i in range(nested.m_steps)]
        copy_weights(self.inner_model, self.inner.get_weights())
        chunks = [own[nested.m_steps * B:]] + [self.sample(B) for _ in range(nested.g_steps - 1)]
        own_stats = []
        for x in chunks:
            x, = trim_padding([x.to(self.device)], self.eos_id)
            st = _cot_update(self.model, self.optim, self.inner_model, x, loss_mask(x, self.eos_id),
                             self.ocfg.grad_clip, self.chunk, self.dropout_gen, self.bf16)
            own_stats.append(_to_floats(st, level_prefix(self.level)))
        return {**_mean_stats(inner_stats), **_mean_stats(own_stats)}

    def state(self) -> dict:
        self._need_built()
        out = {WEIGHTS: cpu_weights(self.model), "optim": _cpu_state(self.optim),
               "dropout_gen": self.dropout_gen.get_state().cpu(), "rng_device": self.device.type, "steps": self.steps}
        if self.nested:
            out["gen"] = self.sample_gen.get_state().cpu()
            out["inner"] = self.inner.state()
        return out

    def load_state(self, state: dict) -> None:
        self._need_built()
        check_rng_device(state, self.device, "mediator" if self.level == 0 else f"inner mediator (level {self.level})")
        copy_weights(self.model, state[WEIGHTS])
        self.optim.load_state_dict(state["optim"])
        self.dropout_gen.set_state(state["dropout_gen"])
        self.steps = int(state["steps"])
        if self.nested:
            if "inner" not in state:
                raise ValueError("the checkpoint holds a mediator trained without nesting; this run is nested "
                                 "(nested.enabled): resume it with its own saved config")
            self.sample_gen.set_state(state["gen"])
            self.inner.load_state(state["inner"])


class MediatorLearner(InnerMediatorLearner):
    """M: fitted to the balanced mixture of real sequences and G's samples.

    By MLE (``L_M``) by default; with ``nested.enabled`` by an inner CoT game (see
    :class:`InnerMediatorLearner`) on the same two halves.
    """

    def __init__(self, cfg: Config, vocab_size: int, seq_len: int, eos_id: Optional[int] = None):
        super().__init__(cfg, vocab_size, seq_len, eos_id, level=0)

    def build(self, device: str = "cpu", train: Optional[torch.Tensor] = None, inner=None) -> None:
        """As :meth:`InnerMediatorLearner.build`, plus the training set ``train`` for the real batches."""
        if train is None:
            raise ValueError("the mediator needs the training set: build(device, train)")
        super().build(device, inner)
        self.batches = BatchSampler(train, self.cfg.cot.batch_size, derive_seed(self.cfg.run.seed, seeds.BATCH_M),
                                    self.cfg.data.shuffle)

    def build_here(self, device: str = "cpu", train: Optional[torch.Tensor] = None) -> None:
        """:meth:`build` with the inner mediators of nested CoT, every level, built here too:
        in the mediator's own process and on its device (what the actor runtime does by default)."""
        self.build(device, train, build_inner(self.cfg, self.vocab_size, self.seq_len, self.eos_id, device))

    def step(self, fake: torch.Tensor, start: int = 0, size: Optional[int] = None) -> dict:
        """One update towards ``(P + G) / 2`` on a fresh real batch and ``fake[start:start+size]``."""
        self._need_built()
        fake = fake[start:start + (size or len(fake))]
        return self.fit([(self.batches.next(), 0.5), (fake, 0.5)], names=("real", "fake"))

    def state(self) -> dict:
        return {**super().state(), "batches": self.batches.state()}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.batches.load_state(state["batches"])


def build_inner(cfg: Config, vocab_size: int, seq_len: int, eos_id: Optional[int], device: str,
                level: int = 1) -> Optional[InnerMediatorLearner]:
    """The built chain of inner mediators from ``level`` down to the innermost, all on ``device``
    in this process; None when the mediator at ``level - 1`` is not nested."""
    if not (cfg.nested.enabled and level - 1 < cfg.nested.depth):
        return None
    learner = InnerMediatorLearner(cfg, vocab_size, seq_len, eos_id, level)
    learner.build(device, build_inner(cfg, vocab_size, seq_len, eos_id, device, level + 1))
    return learner
