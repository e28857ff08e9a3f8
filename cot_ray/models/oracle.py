"""The SeqGAN oracle of the synthetic Turing test: a fixed random LSTM that plays the data.

Weights ship inside the package (``assets/seqgan_oracle_params.npz``). One step, with x the
embedding of the previous token (row vectors, ``x W`` rather than ``W x``)::

    i = sigmoid(x Wi + h Ui + bi)      f = sigmoid(x Wf + h Uf + bf)
    o = sigmoid(x Wog + h Uog + bog)   g = tanh(x Wc + h Uc + bc)
    c' = f * c + i * g                 h' = o * tanh(c')
    logits = h' Wo + bo

These are exactly torch's LSTM equations, so the oracle is an ``LSTMLM`` whose weights are
the transposed SeqGAN matrices: it shares the fast sampler and the exact log-probabilities.
"""

from __future__ import annotations

import os
from importlib import resources

import numpy as np
import torch

from ..model_config import LSTMConfig
from .lstm import LSTMLM

VOCAB_SIZE = 5000
SEQ_LEN = 20
PARAM_NAMES = ("emb", "Wi", "Ui", "Wf", "Uf", "Wog", "Uog", "Wc", "Uc", "bi", "bf", "bog", "bc", "Wo", "bo")


def load_params(path: str | None = None) -> dict[str, np.ndarray]:
    """The 15 oracle arrays by name (float32), from the package unless ``path`` is given."""
    if path is None:
        ref = resources.files("cot_ray") / "assets" / "seqgan_oracle_params.npz"
        with resources.as_file(ref) as p:
            return _read_npz(str(p))
    return _read_npz(path)


def _read_npz(path: str) -> dict[str, np.ndarray]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"oracle parameters '{path}' not found: reinstall cot-ray (pip install -e .)")
    with np.load(path, allow_pickle=False) as d:
        missing = [k for k in PARAM_NAMES if k not in d]
        if missing:
            raise ValueError(f"oracle parameters '{path}' lack arrays {missing}: use the SeqGAN oracle npz")
        return {k: d[k].astype(np.float32) for k in PARAM_NAMES}


def build_oracle(params: dict[str, np.ndarray] | None = None, device: str | torch.device = "cpu") -> LSTMLM:
    """The oracle as a frozen ``LSTMLM`` (vocabulary 5000, embedding 32, hidden 32, start token 0)."""
    p = load_params() if params is None else params
    emb_dim, hidden = p["Wi"].shape
    model = LSTMLM(p["emb"].shape[0], LSTMConfig(emb_dim=emb_dim, hidden_dim=hidden, num_layers=1,
                                                 dropout=0.0), start_token=0)
    t = {k: torch.from_numpy(v) for k, v in p.items()}
    with torch.no_grad():
        model.embed.weight.copy_(t["emb"])
        # torch's gate order is (i, f, g, o); its weights act as W x, hence the transposes.
        model.lstm.weight_ih_l0.copy_(torch.cat([t["Wi"], t["Wf"], t["Wc"], t["Wog"]], dim=1).t())
        model.lstm.weight_hh_l0.copy_(torch.cat([t["Ui"], t["Uf"], t["Uc"], t["Uog"]], dim=1).t())
        model.lstm.bias_ih_l0.copy_(torch.cat([t["bi"], t["bf"], t["bc"], t["bog"]]))
        model.lstm.bias_hh_l0.zero_()
        model.out.weight.copy_(t["Wo"].t())
        model.out.bias.copy_(t["bo"])
    model.requires_grad_(False)
    return model.eval().to(device)


def sample_oracle(oracle: LSTMLM, n: int, seed: int, seq_len: int = SEQ_LEN, chunk: int = 4096) -> torch.Tensor:
    """``n`` oracle sequences from ``seed``: (n, seq_len) int64 on the CPU, reproducible."""
    gen = torch.Generator(device=oracle.out.weight.device).manual_seed(seed)
    parts = [oracle.sample(min(chunk, n - i), seq_len, gen).cpu() for i in range(0, n, chunk)]
    return torch.cat(parts) if parts else torch.empty(0, seq_len, dtype=torch.long)
