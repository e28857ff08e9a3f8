"""A decoder-only causal Transformer language model: the second implementation of
:class:`cot_ray.models.interface.LanguageModel`, for G, M and the inner mediators.

Shapes: B batch, T sequence length, V vocabulary, H width (``hidden_dim``), A heads of
D = H / A, F the feed-forward width. As the LSTM, a sequence ``x_1..x_T`` is scored left to
right from a start token (``interface.START_TOKEN``), so position t sees tokens before t only.

The architecture is GPT-2's with two modern choices:

* **pre-LayerNorm blocks**: ``x + drop(attn(LN(x)))`` then ``x + drop(FF(LN(x)))`` (GELU), and a
  final LayerNorm; the residual stream stays an identity path, which trains without warm-up
  at the small sizes CoT uses;
* **rotary positions** (RoPE) instead of a learned position table: positions enter only as
  rotations of queries and keys, so the model has no maximum length baked into its
  parameters (text runs of any ``data.max_len`` use the same model), no extra parameters
  (at 32 wide a 5,000-token model is mostly its embedding), and relative offsets are what
  attention sees;
* the output layer is the token embedding, transposed, without a bias, by default
  (``tie_output``): at V = 5,000 the embedding is most of the parameters, tying halves them,
  and it is the usual choice for language models of this size; untied it is its own layer with
  a bias, as the LSTM's.

Attention runs on ``torch.nn.functional.scaled_dot_product_attention``. Every dropout
(embeddings, attention probabilities, residual branches) draws its masks from the generator
the caller passes, as the LSTM's does, so runs are reproducible in any process; attention
dropout therefore takes a plain softmax(QK^T) path in training (SDPA draws its own masks),
and every other pass, sampling and scoring included, SDPA's. Sampling keeps a key/value cache:
one new position per step, the prefix never recomputed.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from .interface import START_TOKEN, TokenModel, seeded_dropout
from .sampler import TokenDrawer


def rotary_tables(positions: int, head_dim: int, device, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (positions, head_dim / 2) of RoPE's rotation angles pos / 10000^(2i / D)."""
    inv = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(positions, device=device, dtype=torch.float32), inv)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x_2i, x_2i+1) of the last dimension: x (..., T, D), cos/sin (T, D/2)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2)


class Block(nn.Module):
    """One pre-LayerNorm Transformer block: causal self-attention, then a GELU feed-forward."""

    def __init__(self, width: int, heads: int, ff: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.ln2 = nn.LayerNorm(width)
        self.ff_in = nn.Linear(width, ff)
        self.ff_out = nn.Linear(ff, width)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, T, H = x.shape  # -> (B, A, T, D)
        return x.view(B, T, self.heads, H // self.heads).transpose(1, 2)

    def attend(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, p: float, training: bool,
               gen: Optional[torch.Generator]) -> torch.Tensor:
        """Causal self-attention of x (B, T, H) -> (B, T, H), before the output projection."""
        B, T, H = x.shape
        q, k, v = (self._split(t) for t in self.qkv(x).split(H, dim=2))  # (B, A, T, D) each
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if training and p > 0:  # seeded attention dropout: SDPA would draw its masks from the global RNG
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, A, T, T)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            probs = seeded_dropout(scores.masked_fill(~causal, float("-inf")).softmax(dim=-1), p, True, gen)
            out = probs @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return out.transpose(1, 2).reshape(B, T, H)

    def forward(self, x, cos, sin, p: float, training: bool, gen: Optional[torch.Generator]) -> torch.Tensor:
        x = x + seeded_dropout(self.proj(self.attend(self.ln1(x), cos, sin, p, training, gen)), p, training, gen)
        return x + seeded_dropout(self.ff_out(F.gelu(self.ff_in(self.ln2(x)))), p, training, gen)

    def step(self, x: torch.Tensor, cache: tuple, t: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """One new position t of x (n, 1, H), with the keys and values of positions < t in
        ``cache`` (two (n, A, T_max, D) tensors, filled at t here) -> (n, 1, H). No dropout."""
        n, _, H = x.shape
        q, k, v = (self._split(u) for u in self.qkv(self.ln1(x)).split(H, dim=2))  # (n, A, 1, D)
        q, k = rotate(q, cos[t:t + 1], sin[t:t + 1]), rotate(k, cos[t:t + 1], sin[t:t + 1])
        keys, values = cache
        keys[:, :, t:t + 1] = k
        values[:, :, t:t + 1] = v
        out = F.scaled_dot_product_attention(q, keys[:, :, :t + 1], values[:, :, :t + 1])  # every past key
        x = x + self.proj(out.transpose(1, 2).reshape(n, 1, H))
        return x + self.ff_out(F.gelu(self.ff_in(self.ln2(x))))


class TransformerLM(TokenModel):
    """Token embedding -> (dropout) -> pre-LN blocks -> LayerNorm -> output layer (the embedding,
    transposed, unless ``tie_output`` is off)."""

    def __init__(self, vocab_size: int, cfg: ModelConfig, start_token: int = START_TOKEN):
        super().__init__()
        if cfg.hidden_dim % cfg.num_heads or (cfg.hidden_dim // cfg.num_heads) % 2:
            raise ValueError(f"a Transformer of width {cfg.hidden_dim} cannot have {cfg.num_heads} heads: the "
                             "width must be a multiple of the heads, each of an even width (rotary positions)")
        self.vocab_size = vocab_size
        self.cfg = cfg
        self.start_token = start_token
        self.embed = nn.Embedding(vocab_size, cfg.hidden_dim)
        ff = cfg.ff_dim or 4 * cfg.hidden_dim
        self.blocks = nn.ModuleList(Block(cfg.hidden_dim, cfg.num_heads, ff) for _ in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(cfg.hidden_dim)
        self.out = None if cfg.tie_output else nn.Linear(cfg.hidden_dim, vocab_size)
        self._rope: tuple = (0, None, None)  # (positions, cos, sin) cached

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def output_layer(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self.out is None:
            return self.embed.weight, None
        return self.out.weight, self.out.bias

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator) -> None:
        """Draw the parameters from ``generator`` in ``named_parameters`` order: LayerNorms 1
        and 0, biases 0, every other weight N(0, init_std), the residual branches' output
        projections (``proj``, ``ff_out``) N(0, init_std / sqrt(2 * layers)) so that the residual
        stream's variance does not grow with depth (GPT-2's scaling)."""
        depth_scale = 1.0 / math.sqrt(2 * max(self.cfg.num_layers, 1))
        for name, p in self.named_parameters():
            if ".ln" in name or name.startswith("ln_f"):
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                std = self.cfg.init_std * (depth_scale if name.endswith(("proj.weight", "ff_out.weight")) else 1.0)
                p.copy_(torch.randn(p.shape, generator=generator) * std)

    def _rotary(self, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        n, cos, sin = self._rope
        if n < positions or cos.device != self.device:
            cos, sin = rotary_tables(positions, self.cfg.hidden_dim // self.cfg.num_heads, self.device)
            self._rope = (positions, cos, sin)
        return cos[:positions], sin[:positions]

    def hidden(self, tokens: torch.Tensor, dropout_generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """tokens (B, T) -> the final LayerNorm's output (B, T, H); position t sees tokens < t.
        In training mode ``emb_dropout`` drops embedding entries and ``dropout`` attention
        probabilities and each residual branch, with masks from ``dropout_generator``."""
        T = tokens.shape[1]
        cos, sin = self._rotary(T)
        x = seeded_dropout(self.embed(self._inputs(tokens)), self.cfg.emb_dropout, self.training, dropout_generator)
        for block in self.blocks:
            x = block(x, cos.to(x.dtype), sin.to(x.dtype), self.cfg.dropout, self.training, dropout_generator)
        return self.ln_f(x)

    @torch.no_grad()
    def sample(self, n: int, seq_len: int, generator: torch.Generator, with_log_prob: bool = False,
               temperature: float = 1.0, stop_id: Optional[int] = None):
        """``n`` sequences of ``seq_len`` tokens (n, seq_len) int64 on the model's device, with
        a key/value cache per block: each step runs the blocks on one new position only. The
        tokens come from the two-level inverse-CDF sampler (:class:`~cot_ray.models.sampler.TokenDrawer`)
        with one uniform per row and step from ``generator``, drawn up front; ``stop_id`` and
        ``with_log_prob`` as :meth:`cot_ray.models.lstm.LSTMLM.sample`. No dropout."""
        dev = self.device
        H, A = self.cfg.hidden_dim, self.cfg.num_heads
        cos, sin = self._rotary(seq_len)
        dtype = self.embed.weight.dtype
        caches = [(torch.empty(n, A, seq_len, H // A, device=dev, dtype=dtype),
                   torch.empty(n, A, seq_len, H // A, device=dev, dtype=dtype)) for _ in self.blocks]
        x = torch.full((n,), self.start_token, dtype=torch.long, device=dev)
        draw = TokenDrawer(n, seq_len, generator, *self.output_layer(), temperature, with_log_prob, stop_id)
        for t in range(seq_len):
            h = self.embed(x)[:, None, :]  # (n, 1, H)
            for block, cache in zip(self.blocks, caches):
                h = block.step(h, cache, t, cos, sin)
            x = draw(self.ln_f(h)[:, 0], t)  # (n,)
            if draw.done:
                break
        return draw.result()
