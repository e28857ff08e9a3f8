"""Learners: one model, its optimizer and its RNG streams, and how to take one step.

They are plain classes: the in-process loop calls them directly and the Ray runtime turns
them into actors at the call site (``ray.remote(GeneratorLearner)``). Everything random a
learner does comes from generators it owns, so a run is reproducible whichever process each
learner lives in, and ``state()``/``load_state()`` make resuming exact.
"""

from __future__ import annotations

from typing import Optional

import torch

from .config import Config, ModelConfig, OptimConfig
from .data import BatchSampler
from .losses import cot_generator_loss, mediator_loss, mle_loss
from .models import LSTMLM, copy_weights, cpu_weights
from .text import sequence_mask as text_mask

# Offsets that give each RNG stream of a run its own seed.
_INIT_G, _INIT_M, _SAMPLE_G, _BATCH_G, _BATCH_M, _DROPOUT_M = range(1, 7)


def stream_seed(run_seed: int, stream: int) -> int:
    return run_seed * 1000 + stream


def sequence_mask(tokens: torch.Tensor, eos_id: Optional[int]) -> Optional[torch.Tensor]:
    """The loss mask of ``tokens``; None when sequences have no EOS (every position counts)."""
    return None if eos_id is None else text_mask(tokens, eos_id)


def _build(vocab_size: int, mcfg: ModelConfig, ocfg: OptimConfig, seed: int, device: torch.device):
    model = LSTMLM(vocab_size, mcfg)
    model.init_weights(torch.Generator().manual_seed(seed))
    model.to(device)
    optim = torch.optim.Adam(model.parameters(), lr=ocfg.lr, betas=(ocfg.beta1, ocfg.beta2))
    return model, optim


def _update(model: LSTMLM, optim: torch.optim.Optimizer, loss: torch.Tensor, grad_clip: float) -> float:
    optim.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    optim.step()
    return norm


def _to_floats(stats: dict, prefix: str) -> dict:
    return {f"{prefix}{k}": float(v) for k, v in stats.items()}


class GeneratorLearner:
    """G: samples sequences and takes CoT steps against a local copy of M (or MLE steps)."""

    def __init__(self, cfg: Config, vocab_size: int, seq_len: int, train: Optional[torch.Tensor] = None,
                 eos_id: Optional[int] = None, device: str = "cpu"):
        self.cfg = cfg
        self.seq_len = seq_len
        self.eos_id = eos_id
        self.device = torch.device(device)
        self.model, self.optim = _build(vocab_size, cfg.generator, cfg.g_optim,
                                        stream_seed(cfg.run.seed, _INIT_G), self.device)
        self.gen = torch.Generator(device=self.device).manual_seed(stream_seed(cfg.run.seed, _SAMPLE_G))
        self.batches = None
        if cfg.cot.algo == "mle":
            self.batches = BatchSampler(train, cfg.cot.batch_size, stream_seed(cfg.run.seed, _BATCH_G))
        # G's copy of the mediator (CoT only): only ever evaluated, never trained here.
        self.mediator = None
        if cfg.cot.algo == "cot":
            self.mediator = LSTMLM(vocab_size, cfg.mediator).to(self.device).eval().requires_grad_(False)
        self.steps = 0

    def sample(self, n: int) -> torch.Tensor:
        """-> (n, T) int64 on the CPU (cheap to send to another worker)."""
        self.model.eval()
        return self.model.sample(n, self.seq_len, self.gen).cpu()

    def set_mediator_weights(self, weights: dict) -> None:
        copy_weights(self.mediator, weights)

    def step_cot(self, fake: torch.Tensor, start: int = 0, size: Optional[int] = None) -> dict:
        """One CoT update on ``fake[start:start+size]``, G's own samples: minimise KL(pi_G || pi_M)."""
        fake = fake[start:start + (size or len(fake))].to(self.device)
        mask = sequence_mask(fake, self.eos_id)
        self.model.train()
        with torch.no_grad():
            m_logits = self.mediator(fake)
        loss, stats = cot_generator_loss(self.model(fake), m_logits, mask)
        stats["grad_norm"] = _update(self.model, self.optim, loss, self.cfg.g_optim.grad_clip)
        self.steps += 1
        return _to_floats(stats, "g_")

    def step_mle(self) -> dict:
        """One MLE update on a batch of real sequences."""
        real = self.batches.next().to(self.device)
        self.model.train()
        loss, stats = mle_loss(self.model(real), real, sequence_mask(real, self.eos_id))
        stats["grad_norm"] = _update(self.model, self.optim, loss, self.cfg.g_optim.grad_clip)
        self.steps += 1
        return _to_floats(stats, "g_")

    def get_weights(self) -> dict:
        return cpu_weights(self.model)

    def state(self) -> dict:
        return {"model": cpu_weights(self.model), "optim": self.optim.state_dict(),
                "mediator": cpu_weights(self.mediator) if self.mediator is not None else None, "gen": self.gen.get_state(),
                "batches": self.batches.state() if self.batches else None, "steps": self.steps}

    def load_state(self, state: dict) -> None:
        copy_weights(self.model, state["model"])
        self.optim.load_state_dict(state["optim"])
        if self.mediator is not None:
            copy_weights(self.mediator, state["mediator"])
        self.gen.set_state(state["gen"])
        if self.batches is not None:
            self.batches.load_state(state["batches"])
        self.steps = int(state["steps"])


class MediatorLearner:
    """M: maximum likelihood on a balanced batch of real sequences and G's samples."""

    def __init__(self, cfg: Config, vocab_size: int, seq_len: int, train: torch.Tensor,
                 eos_id: Optional[int] = None, device: str = "cpu"):
        self.cfg = cfg
        self.eos_id = eos_id
        self.device = torch.device(device)
        self.model, self.optim = _build(vocab_size, cfg.mediator, cfg.m_optim,
                                        stream_seed(cfg.run.seed, _INIT_M), self.device)
        self.batches = BatchSampler(train, cfg.cot.batch_size, stream_seed(cfg.run.seed, _BATCH_M))
        self.dropout_gen = torch.Generator(device=self.device).manual_seed(stream_seed(cfg.run.seed, _DROPOUT_M))
        self.steps = 0

    def step(self, fake: torch.Tensor, start: int = 0, size: Optional[int] = None) -> dict:
        """One update of ``L_M`` on a fresh real batch and ``fake[start:start+size]``."""
        fake = fake[start:start + (size or len(fake))].to(self.device)
        real = self.batches.next().to(self.device)
        both = torch.cat([real, fake])  # one forward pass over the 2B sequences
        self.model.train()  # dropout on, drawn from this learner's own generator
        logits = self.model(both, self.dropout_gen)
        n = len(real)
        loss, stats = mediator_loss(logits[:n], real, logits[n:], fake,
                                    sequence_mask(real, self.eos_id), sequence_mask(fake, self.eos_id))
        stats["grad_norm"] = _update(self.model, self.optim, loss, self.cfg.m_optim.grad_clip)
        self.model.eval()
        self.steps += 1
        return _to_floats(stats, "m_")

    def get_weights(self) -> dict:
        return cpu_weights(self.model)

    def state(self) -> dict:
        return {"model": cpu_weights(self.model), "optim": self.optim.state_dict(),
                "batches": self.batches.state(), "dropout_gen": self.dropout_gen.get_state(),
                "steps": self.steps}

    def load_state(self, state: dict) -> None:
        copy_weights(self.model, state["model"])
        self.optim.load_state_dict(state["optim"])
        self.batches.load_state(state["batches"])
        self.dropout_gen.set_state(state["dropout_gen"])
        self.steps = int(state["steps"])
