"""What the rest of cot-ray relies on of a language model, in one place.

G, M, every inner mediator and the oracle are autoregressive models over a vocabulary of V
tokens: :class:`LanguageModel` lists what the learners, the losses, the metrics, the sampler
and the checkpoints use of them, so that a second architecture plugs in by implementing it
(and registering in :func:`cot_ray.models.build_model`). The helpers below work on any of them.

Shapes: B batch, T sequence length, V vocabulary, H the width of the hidden states that the
output layer reads.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol, Sequence, runtime_checkable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig

MaskFn = Callable[[torch.Tensor], Optional[torch.Tensor]]

# The models' first input, before x_1, of every sequence; not part of the sequence (a model
# never scores or samples it). Token 0, as SeqGAN's (the oracle keeps its own 0, models/oracle.py);
# on text, id 0 is <pad>, which a model sees only as this first input: both mean "nothing yet".
START_TOKEN = 0


@runtime_checkable
class LanguageModel(Protocol):
    """An ``nn.Module`` that scores and samples token sequences ``x_1..x_T``, left to right.

    Everything random it does is drawn from ``torch.Generator`` s the caller passes, never from
    the global RNG, so that a run is reproducible whichever process the model lives in.
    """

    vocab_size: int  # V
    cfg: ModelConfig  # its sizes and regularisation

    @property
    def device(self) -> torch.device:
        """Where its parameters are."""

    def init_weights(self, generator: torch.Generator) -> None:
        """Draw every parameter from ``generator`` (seeded initialisation, the same on any device)."""

    def hidden(self, tokens: torch.Tensor, dropout_generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """tokens (B, T) -> hidden states (B, T, H): position t sees tokens before t only. In
        training mode its dropout masks come from ``dropout_generator`` (seeded dropout); in
        eval mode there is no dropout."""

    def output_layer(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The output layer's weight (V, H) and bias (V,) or None: logits = hidden @ weight.T + bias.
        The fused losses run it themselves, slab by slab, instead of materialising (B, T, V) logits."""

    def forward(self, tokens: torch.Tensor, dropout_generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """tokens (B, T) -> next-token logits (B, T, V)."""

    def sequence_log_probs_at(self, tokens: torch.Tensor, temperatures: Sequence[float],
                              mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """tokens (B, T) -> (K, B) log p_T(x) at each of K temperatures (softmax(logits / T)),
        summed over the positions where ``mask`` (B, T) is 1, from one forward pass."""

    def sample(self, n: int, seq_len: int, generator: torch.Generator, with_log_prob: bool = False,
               temperature: float = 1.0, stop_id: Optional[int] = None):
        """``n`` sequences (n, seq_len) int64 on its device, drawn with the uniforms of
        ``generator`` by the two-level inverse-CDF sampler (:mod:`cot_ray.models.sampler`); with
        ``with_log_prob`` also their exact log-probabilities (n,); ``stop_id``: stop once every
        row has drawn it, padding the rest with it."""

    @staticmethod
    def vocab_size_of(weights: dict) -> Optional[int]:
        """The vocabulary size of a state dict of this architecture (None if it is not one)."""


def seeded_dropout(x: torch.Tensor, p: float, training: bool, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Inverted dropout of ``x`` with its mask drawn from ``generator`` (never the global RNG);
    the identity outside training or at ``p`` 0."""
    if not training or p <= 0:
        return x
    keep = torch.empty_like(x).bernoulli_(1.0 - p, generator=generator)
    return x * keep / (1.0 - p)


class TokenModel(nn.Module):
    """What the architectures share: inputs shifted behind the start token, logits and sequence
    log-probabilities from ``hidden`` and ``output_layer``, the vocabulary size of a state dict
    (the rows of ``embed.weight``). A subclass provides ``embed``, ``hidden``,
    ``output_layer``, ``init_weights`` and ``sample``."""

    vocab_size: int
    start_token: int
    embed: nn.Embedding

    @staticmethod
    def vocab_size_of(weights: dict) -> Optional[int]:
        """The vocabulary size of a state dict of the model: the rows of its embedding."""
        emb = weights.get("embed.weight")
        return None if emb is None else int(emb.shape[0])

    def _inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) -> inputs (B, T): the start token, then x_1..x_{T-1}."""
        start = torch.full_like(tokens[:, :1], self.start_token)
        return torch.cat([start, tokens[:, :-1]], dim=1)

    def forward(self, tokens: torch.Tensor, dropout_generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Next-token logits for every position: tokens (B, T) -> (B, T, V)."""
        return F.linear(self.hidden(tokens, dropout_generator), *self.output_layer())

    def log_probs(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, T, V) log pi(v | x_<t)."""
        return F.log_softmax(self.forward(tokens), dim=-1)

    def sequence_log_prob(self, tokens: torch.Tensor, mask: Optional[torch.Tensor] = None,
                          temperature: float = 1.0) -> torch.Tensor:
        """(B, T) -> (B,) log p(x), summed over the positions where ``mask`` is 1, under the
        model at ``temperature`` (softmax(logits / T); 1: the model itself)."""
        return self.sequence_log_probs_at(tokens, (temperature,), mask)[0]

    def sequence_log_probs_at(self, tokens: torch.Tensor, temperatures: Sequence[float],
                              mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, T) -> (K, B) log p_T(x) at each of the K ``temperatures``, from one forward pass:
        the model and the output layer run once, only the normalisation is per temperature
        (:func:`log_probs_at`)."""
        return log_probs_at(self.hidden(tokens), *self.output_layer(), tokens, temperatures, mask)


def copy_weights(model: nn.Module, weights: dict) -> None:
    """Load a name -> tensor/array mapping into ``model`` in place (any device)."""
    with torch.no_grad():
        for name, p in model.state_dict().items():
            p.copy_(torch.as_tensor(weights[name]))


def cpu_weights(model: nn.Module) -> dict:
    """Detached CPU copies of the parameters: cheap to pickle and send between processes."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def log_probs_at(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], tokens: torch.Tensor,
                 temperatures: Sequence[float], mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sequence log-probabilities from a model's hidden states (B, T, H) and output layer:
    -> (K, B) log p_T(x) at each of the K ``temperatures``, summed over the positions where
    ``mask`` (B, T) is 1. The output layer runs one position at a time, so only a (B, V) slab of
    logits exists at once: scoring thousands of sequences stays in cache (about 2x faster on a
    CPU than materialising (B, T, V) logits) and needs little memory."""
    steps = [[] for _ in temperatures]
    for t in range(tokens.shape[1]):
        logits = F.linear(hidden[:, t], weight, bias)  # (B, V)
        target = logits.gather(1, tokens[:, t:t + 1]).squeeze(1)
        for k, temp in enumerate(temperatures):
            if temp == 1.0:  # exactly the untempered arithmetic
                steps[k].append(target - torch.logsumexp(logits, dim=1))
            else:
                steps[k].append(target / temp - torch.logsumexp(logits / temp, dim=1))
    tok_lp = torch.stack([torch.stack(s, dim=1) for s in steps])  # (K, B, T)
    if mask is not None:
        tok_lp = tok_lp * mask
    return tok_lp.sum(dim=2)


@torch.no_grad()
def sequence_log_probs(model: LanguageModel, seqs: torch.Tensor, mask_fn: Optional[MaskFn] = None,
                       batch_size: int = 512, temperatures: Optional[tuple] = None) -> torch.Tensor:
    """(N, T) -> (N,) float64 log p(x) under ``model`` (in eval mode: no dropout); with
    ``temperatures`` (K of them) -> (K, N), the tempered model's, from one forward pass.

    ``mask_fn`` must give prefix masks (ones up to some position, zeros after), as
    ``text.loss_mask`` does; each batch is then cut after its longest masked prefix, which the
    causal model scores exactly as the full rows (text batches are mostly padding).
    """
    was_training = model.training
    model.eval()
    dev = model.device
    temps = tuple(temperatures) if temperatures is not None else (1.0,)
    out = []
    for i in range(0, len(seqs), batch_size):
        x = seqs[i:i + batch_size]
        mask = mask_fn(x) if mask_fn else None
        if mask is not None:
            keep = max(int(mask.sum(dim=1).max()), 1)
            x, mask = x[:, :keep], mask[:, :keep].to(dev)
        out.append(model.sequence_log_probs_at(x.to(dev), temps, mask).double().cpu())
    model.train(was_training)
    lp = torch.cat(out, dim=1) if out else torch.empty(len(temps), 0, dtype=torch.float64)
    return lp if temperatures is not None else lp[0]
