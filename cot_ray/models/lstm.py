"""The autoregressive LSTM language model (G, M and the oracle): one implementation of
:class:`cot_ray.models.interface.LanguageModel`.

Shapes: B batch, T sequence length, V vocabulary, E embedding, H hidden.
A sequence ``x_1..x_T`` is scored as ``prod_t p(x_t | x_<t)``; the first input is
``start_token`` (:data:`~cot_ray.models.interface.START_TOKEN`, SeqGAN's token 0), which is
not part of the sequence.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..config import ModelConfig
from .interface import START_TOKEN, TokenModel, seeded_dropout
from .sampler import TokenDrawer


class LSTMLM(TokenModel):
    """Embedding -> (dropout) -> LSTM -> (dropout) -> linear over the whole vocabulary."""

    def __init__(self, vocab_size: int, cfg: ModelConfig, start_token: int = START_TOKEN):
        super().__init__()
        self.vocab_size = vocab_size
        self.cfg = cfg
        self.start_token = start_token
        self.embed = nn.Embedding(vocab_size, cfg.emb_dim)
        self.lstm = nn.LSTM(cfg.emb_dim, cfg.hidden_dim, cfg.num_layers, batch_first=True)
        self.out = nn.Linear(cfg.hidden_dim, vocab_size)

    @property
    def device(self) -> torch.device:
        return self.out.weight.device

    def output_layer(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Weight (V, H) and bias (V,) of the output layer."""
        return self.out.weight, self.out.bias

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator) -> None:
        """Draw the initial parameters from ``generator`` (reproducible on any device).

        ``init`` "normal": every parameter ~ N(0, init_std) (the authors' generator).
        "orthogonal": the authors' cuDNN mediator: each gate's input and recurrent kernel is a
        (semi-)orthogonal matrix, the LSTM biases are 0, and the embedding and output layer are
        N(0, init_std). Parameters are drawn in ``named_parameters`` order.
        """
        for name, p in self.named_parameters():
            if self.cfg.init == "orthogonal" and name.startswith("lstm."):
                if name.startswith("lstm.bias"):
                    p.zero_()
                else:  # (4H, in): one (H, in) block per gate (i, f, g, o)
                    for block in p.chunk(4, dim=0):
                        nn.init.orthogonal_(block, generator=generator)
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * self.cfg.init_std)

    def hidden(self, tokens: torch.Tensor, dropout_generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """LSTM outputs, with dropout in training mode: tokens (B, T) -> (B, T, H).

        In training mode ``emb_dropout`` drops embedding entries fed to the LSTM and ``dropout``
        drops LSTM outputs (in that order), with masks drawn from ``dropout_generator`` so that
        runs are reproducible whichever process the model lives in.
        """
        x = self.embed(self._inputs(tokens))  # (B, T, E)
        x = seeded_dropout(x, self.cfg.emb_dropout, self.training, dropout_generator)
        h, _ = self.lstm(x)  # (B, T, H)
        return seeded_dropout(h, self.cfg.dropout, self.training, dropout_generator)

    @torch.no_grad()
    def sample(self, n: int, seq_len: int, generator: torch.Generator, with_log_prob: bool = False,
               temperature: float = 1.0, stop_id: Optional[int] = None):
        """Draw ``n`` sequences of ``seq_len`` tokens: -> (n, seq_len) int64, on the model's device.

        With ``stop_id`` (text: the EOS token) drawing stops once every row has drawn it, and
        the positions left are filled with ``stop_id``: everything up to each row's first
        ``stop_id`` is the same as without it (the uniforms are drawn up front), and what comes
        after is padding, which no loss or metric reads. The log-probability then covers the
        drawn positions only.

        With ``with_log_prob`` also return each sequence's exact log-probability (n,), which
        the sampler gets almost for free from the normaliser it computes anyway. At
        ``temperature`` T the tokens come from softmax(logits / T), and the log-probabilities
        are the tempered model's.

        Inverse-CDF sampling: one uniform per row, scaled to the row's total unnormalised
        probability, is located in the cumulative sums. It is exact (P(token i) = p_i) and on a
        CPU several times faster than ``torch.multinomial`` or Gumbel-max over 5,000 tokens
        (see benchmarks/sampler.py). Dropout is never applied while sampling.

        The search is two-level: the vocabulary is cut into about sqrt(V) blocks of about
        sqrt(V) tokens; the cumulative sum over block totals picks the block, and the cumulative
        sum inside that one block picks the token. A full (n, V) cumulative sum is a sequential
        scan along each row and cost more than the exponentials; the block totals are a plain
        reduction: a draw from (128, 5,000) logits takes 0.32 ms instead of 0.50 ms on a 2-core
        CPU (benchmarks/sampler.py). The (n, V) logits and probabilities live in buffers
        allocated once per call.
        """
        dev = self.device
        w_ih = [getattr(self.lstm, f"weight_ih_l{k}") for k in range(self.cfg.num_layers)]
        w_hh = [getattr(self.lstm, f"weight_hh_l{k}") for k in range(self.cfg.num_layers)]
        bias = [getattr(self.lstm, f"bias_ih_l{k}") + getattr(self.lstm, f"bias_hh_l{k}")
                for k in range(self.cfg.num_layers)]
        # The first layer's input projection, precomputed for every token: (V, 4H).
        emb_proj = torch.addmm(bias[0], self.embed.weight, w_ih[0].t())
        H = self.cfg.hidden_dim
        h = [torch.zeros(n, H, device=dev) for _ in range(self.cfg.num_layers)]
        c = [torch.zeros(n, H, device=dev) for _ in range(self.cfg.num_layers)]
        x = torch.full((n,), self.start_token, dtype=torch.long, device=dev)
        draw = TokenDrawer(n, seq_len, generator, *self.output_layer(), temperature, with_log_prob, stop_id)
        for t in range(seq_len):
            inp = None
            for k in range(self.cfg.num_layers):
                if k == 0:
                    gates = emb_proj.index_select(0, x).addmm_(h[0], w_hh[0].t())  # (n, 4H)
                else:
                    gates = torch.addmm(bias[k], inp, w_ih[k].t()).addmm_(h[k], w_hh[k].t())
                i, f, g, o = gates.chunk(4, dim=1)  # torch's gate order
                c[k] = torch.sigmoid(f) * c[k] + torch.sigmoid(i) * torch.tanh(g)
                h[k] = torch.sigmoid(o) * torch.tanh(c[k])
                inp = h[k]
            x = draw(inp, t)  # (n,): drawn from the output layer's logits of inp
            if draw.done:
                break
        return draw.result()
