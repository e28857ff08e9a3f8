"""What training needs from a data source: train/test sequences, batches, decoding.

The synthetic source draws fixed training and test sets from the bundled oracle with a seed
and caches them on disk, so every run (and every Ray worker) sees the same sequences.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from .config import DataConfig
from .models import LSTMLM
from .oracle import SEQ_LEN, build_oracle, sample_oracle


@dataclass
class Dataset:
    """Sequences as int64 tensors (N, T) on the CPU, plus what it takes to read them."""

    train: torch.Tensor
    test: torch.Tensor
    vocab_size: int
    seq_len: int
    eos_id: Optional[int] = None  # None: fixed-length sequences, every position counts
    oracle: Optional[LSTMLM] = None  # the true distribution, when it is known
    decode_fn: Optional[Callable[[list], str]] = None

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self.decode_fn is not None:
            return self.decode_fn(ids)
        return " ".join(str(i) for i in ids)


def default_cache_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "cot-ray")


def synthetic_sets(num_train: int, num_test: int, seed: int, cache_dir: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Oracle training and test sets (int64 arrays), generated once per (seed, sizes) and cached."""
    cache_dir = cache_dir or default_cache_dir()
    path = os.path.join(cache_dir, f"oracle-seed{seed}-train{num_train}-test{num_test}.npz")
    if os.path.exists(path):
        try:
            with np.load(path, allow_pickle=False) as d:
                train, test = d["train"], d["test"]
            if train.shape == (num_train, SEQ_LEN) and test.shape == (num_test, SEQ_LEN):
                return train, test
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is simply regenerated below
    oracle = build_oracle()
    both = sample_oracle(oracle, num_train + num_test, seed).numpy()
    train, test = both[:num_train], both[num_train:]
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}.npz"
    np.savez(tmp, train=train, test=test)
    os.replace(tmp, path)
    return train, test


def load_dataset(cfg: DataConfig) -> Dataset:
    """Build the data set that ``cfg`` names."""
    if cfg.source == "oracle":
        train, test = synthetic_sets(cfg.num_train, cfg.num_test, cfg.seed, cfg.cache_dir)
        oracle = build_oracle()
        return Dataset(torch.from_numpy(train), torch.from_numpy(test), oracle.vocab_size, SEQ_LEN,
                       eos_id=None, oracle=oracle)
    raise ValueError(f"config key 'data.source' must be 'oracle', got {cfg.source!r}")


def write_token_file(path: str, seqs: np.ndarray) -> None:
    """One sequence per line, space-separated token ids; written atomically."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in seqs:
            f.write(" ".join(map(str, row.tolist())) + "\n")
    os.replace(tmp, path)


class BatchSampler:
    """Epochs of shuffled batches drawn from its own RNG; its state makes resuming exact."""

    def __init__(self, data: torch.Tensor, batch_size: int, seed: int):
        if len(data) < batch_size:
            raise ValueError(f"the training set has {len(data)} sequences, fewer than the batch size "
                             f"{batch_size}: lower cot.batch_size")
        self.data = data
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(len(data), generator=self.gen)
        self.pos = 0

    def next(self) -> torch.Tensor:
        """-> (batch_size, T); the tail of an epoch that does not fill a batch is skipped."""
        if self.pos + self.batch_size > len(self.data):
            self.perm = torch.randperm(len(self.data), generator=self.gen)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return self.data[idx]

    def state(self) -> dict:
        return {"gen": self.gen.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def load_state(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.perm = state["perm"].clone()
        self.pos = int(state["pos"])
