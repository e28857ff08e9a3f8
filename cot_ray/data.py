"""What training needs from a data source: train/test sequences, batches, decoding.

The synthetic source draws fixed training and test sets from the bundled oracle with a seed
and caches them on disk, so every run (and every Ray worker) sees the same sequences.

Text sources ("coco": the COCO captions shipped in ``assets/``; "text": any pair of files) are
read, tokenised on whitespace and encoded with a vocabulary built from the training file, or
with the run's saved one (``data.vocab_path``); see :mod:`cot_ray.text` for the id convention.
All data loading goes through :func:`load_dataset`, so every process of a run gets the same
sequences from the same config.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib import resources
from typing import Callable, Optional

import numpy as np
import torch

from .config import DataConfig
from .files import atomic_file
from .models import LanguageModel, sequence_log_probs
from .models.oracle import SEQ_LEN, build_oracle, sample_oracle
from .text import EOS_ID, MAX_TEST_UNK_RATE, DataError, Vocab, encode_corpus, read_corpus

VOCAB_FILE = "vocab.json"  # a text run's vocabulary, in its run directory
COCO_FILES = ("coco_train.txt", "coco_test.txt")  # in cot_ray/assets
SHIPPED_SETS = (88, 9984, 9984)  # (seed, num_train, num_test) of the oracle sets shipped in cot_ray/assets
SHIPPED_FILE = "oracle_seed88_train9984_test9984.npz"
ORACLE_VALID = 2048  # validation sequences of the oracle when data.num_valid is -1
TEXT_VALID_MAX = 2048  # text: at most this many training sentences held out when data.num_valid is -1


@dataclass
class Dataset:
    """Sequences as int64 tensors (N, T) on the CPU, plus what it takes to read them."""

    train: torch.Tensor
    test: torch.Tensor
    vocab_size: int
    seq_len: int
    eos_id: Optional[int] = None  # None: fixed-length sequences, every position counts
    oracle: Optional[LanguageModel] = None  # the true distribution, when it is known
    test_logp: Optional[torch.Tensor] = None  # (M,) float64 log P of each test sequence, with the oracle
    valid: Optional[torch.Tensor] = None  # (K, T) validation sequences for model selection (never the test set)
    decode_fn: Optional[Callable[[list], str]] = None
    vocab: Optional[Vocab] = None  # text: the token <-> id map
    references: Optional[list] = None  # text: the test sentences as token lists, uncut (BLEU references)
    summary: str = ""  # one line on what was loaded (sizes), for the run's log
    notes: list = field(default_factory=list)  # one-line remarks the user should see (truncation, ...)
    stats: dict = field(default_factory=dict)  # text: train/test encoding stats (see text.encode_corpus)

    @property
    def is_text(self) -> bool:
        return self.vocab is not None

    def tokens(self, ids) -> list:
        """Text: the words of one sequence up to its first EOS, padding dropped."""
        return self.vocab.decode_tokens(ids)

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self.decode_fn is not None:
            return self.decode_fn(ids)
        return " ".join(str(i) for i in ids)


def default_cache_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "cot-ray")


def synthetic_sets(num_train: int, num_test: int, seed: int,
                   cache_dir: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Oracle training and test sets (int64 arrays) and the oracle's log-probability of each
    test sequence (float64: what every evaluation's H(P), JSD and KL(P || G) need).

    The default sets (seed 88, 9,984 + 9,984 sequences: the benchmark) ship with the package,
    so every machine trains and evaluates on the very same sequences whatever its float
    rounding, and a first run does not wait for them. Other seeds and sizes are drawn once from
    the oracle and cached in ``cache_dir``.
    """
    if (seed, num_train, num_test) == SHIPPED_SETS:  # the benchmark's sets: shipped, the same everywhere
        with resources.as_file(resources.files("cot_ray") / "assets" / SHIPPED_FILE) as shipped:
            with np.load(shipped, allow_pickle=False) as d:
                return d["train"].astype(np.int64), d["test"].astype(np.int64), d["test_logp"]
    cache_dir = cache_dir or default_cache_dir()
    path = os.path.join(cache_dir, f"oracle-seed{seed}-train{num_train}-test{num_test}.npz")
    train = test = test_logp = None
    if os.path.exists(path):
        try:
            with np.load(path, allow_pickle=False) as d:
                train, test = d["train"], d["test"]
                test_logp = d["test_logp"] if "test_logp" in d.files else None
            if train.shape != (num_train, SEQ_LEN) or test.shape != (num_test, SEQ_LEN):
                train = test = test_logp = None
        except (OSError, ValueError, KeyError):
            train = test = test_logp = None  # a damaged cache entry is simply regenerated below
    if train is not None and test_logp is not None and test_logp.shape == (num_test,):
        return train, test, test_logp
    oracle = build_oracle()
    if train is None:
        both = sample_oracle(oracle, num_train + num_test, seed).numpy()
        train, test = both[:num_train], both[num_train:]
    test_logp = sequence_log_probs(oracle, torch.from_numpy(test)).numpy()
    os.makedirs(cache_dir, exist_ok=True)
    with atomic_file(path, "wb") as f:
        np.savez(f, train=train, test=test, test_logp=test_logp)
    return train, test, test_logp


def synthetic_valid(num_valid: int, seed: int, cache_dir: str = "") -> np.ndarray:
    """A validation set of oracle sequences: a draw of its own (a seed derived from the data
    seed, so it shares no sequence stream with the training and test sets), cached."""
    cache_dir = cache_dir or default_cache_dir()
    path = os.path.join(cache_dir, f"oracle-valid-seed{seed}-n{num_valid}.npz")
    if os.path.exists(path):
        try:
            with np.load(path, allow_pickle=False) as d:
                valid = d["valid"]
            if valid.shape == (num_valid, SEQ_LEN):
                return valid
        except (OSError, ValueError, KeyError):
            pass
    valid_seed = int(np.random.SeedSequence([seed, 0x7A11D]).generate_state(1)[0])
    valid = sample_oracle(build_oracle(), num_valid, valid_seed).numpy()
    os.makedirs(cache_dir, exist_ok=True)
    with atomic_file(path, "wb") as f:
        np.savez(f, valid=valid)
    return valid


def valid_split(n: int, num_valid: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of ``n`` training sentences: (kept for training, held out for validation), a
    seeded choice of ``num_valid`` (-1: 5% of them, at most 2,048); both in file order."""
    k = min(TEXT_VALID_MAX, n // 20) if num_valid < 0 else min(num_valid, n - 1)
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng([seed, 0x7A11D]).permutation(n)[:k]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def load_dataset(cfg: DataConfig) -> Dataset:
    """Build the data set that ``cfg`` names."""
    if cfg.source == "oracle":
        train, test, test_logp = synthetic_sets(cfg.num_train, cfg.num_test, cfg.seed, cfg.cache_dir)
        oracle = build_oracle()
        n_valid = ORACLE_VALID if cfg.num_valid < 0 else cfg.num_valid
        valid = torch.from_numpy(synthetic_valid(n_valid, cfg.seed, cfg.cache_dir)) if n_valid else None
        return Dataset(torch.from_numpy(train), torch.from_numpy(test), oracle.vocab_size, SEQ_LEN,
                       eos_id=None, oracle=oracle, test_logp=torch.from_numpy(test_logp), valid=valid)
    if cfg.source == "coco":
        with ExitStack() as stack:
            train_path, test_path = [str(stack.enter_context(resources.as_file(
                resources.files("cot_ray") / "assets" / name))) for name in COCO_FILES]
            return text_dataset(cfg, train_path, test_path)
    if cfg.source == "text":
        if not cfg.train_path or not cfg.test_path:
            raise DataError("data.source 'text' needs data.train_path and data.test_path: give "
                            "--data PATH/train.txt --test-data PATH/test.txt")
        return text_dataset(cfg, cfg.train_path, cfg.test_path)
    raise ValueError(f"config key 'data.source' must be 'oracle', 'coco' or 'text', got {cfg.source!r}")


def text_dataset(cfg: DataConfig, train_path: str, test_path: str) -> Dataset:
    """Read and encode a training and a test file of sentences (see DataConfig for the rules).

    With ``cfg.vocab_path`` the saved vocabulary is used as is (so ids match a trained model even
    if the training file changed since; a note says so when it did); otherwise the vocabulary is
    built from the training file with ``min_count`` and ``max_vocab``.
    """
    train_sents = read_corpus(train_path, role="training")
    test_sents = read_corpus(test_path, role="test")
    built = Vocab.build(train_sents, min_count=cfg.min_count, max_size=cfg.max_vocab or None)
    notes = []
    vocab = built
    if cfg.vocab_path:
        vocab = Vocab.load(cfg.vocab_path)
        if vocab != built:
            notes.append(f"the vocabulary of '{train_path}' ({len(built)} tokens) differs from the saved "
                         f"'{cfg.vocab_path}' ({len(vocab)} tokens): using the saved one")
    max_len = cfg.max_len or max(len(s) for s in train_sents) + 1
    keep, held = valid_split(len(train_sents), cfg.num_valid, cfg.seed)
    valid = None
    if len(held):
        valid, _ = encode_corpus([train_sents[i] for i in held], vocab, max_len)
        train_sents = [train_sents[i] for i in keep]
    train, train_stats = encode_corpus(train_sents, vocab, max_len)
    test, test_stats = encode_corpus(test_sents, vocab, max_len)
    for role, path, st in (("training", train_path, train_stats), ("test", test_path, test_stats)):
        if st["unk_rate"] > MAX_TEST_UNK_RATE:
            source = f"'{cfg.vocab_path}'" if cfg.vocab_path else f"'{train_path}'"
            raise DataError(f"{role} file '{path}' does not match the vocabulary of {source}: "
                            f"{st['unk_rate']:.1%} of its tokens are unknown: give files of the same corpus "
                            "(or lower data.min_count / raise data.max_vocab)")
    summary = (f"text data: {len(train)} training, {0 if valid is None else len(valid)} validation (held out of "
               f"the training file) and {len(test)} test sentences, vocabulary "
               f"{len(vocab)} tokens, {max_len} tokens per sequence (<eos> included), "
               f"{test_stats['unk_rate']:.2%} of test words unknown")
    for role, st in (("training", train_stats), ("test", test_stats)):
        if st["truncated"]:
            notes.append(f"{st['truncated']} {role} sentences are longer than data.max_len - 1 = "
                         f"{max_len - 1} words: cut to {max_len} words, without <eos>")
    return Dataset(torch.from_numpy(train), torch.from_numpy(test), len(vocab), max_len, eos_id=EOS_ID,
                   decode_fn=vocab.decode, vocab=vocab, references=test_sents, summary=summary, notes=notes,
                   stats={"train": train_stats, "test": test_stats},
                   valid=None if valid is None else torch.from_numpy(valid))


def save_run_data(run_dir: str, cfg: DataConfig, data: Dataset) -> None:
    """Keep what decodes a text run: RUN_DIR/vocab.json (atomically), and record it in ``cfg``.

    ``cfg.vocab_path`` then names the saved vocabulary and ``cfg.max_len`` the resolved length,
    so the saved config rebuilds exactly this data set; ``cfg.num_valid`` becomes the number of
    validation sequences it holds.
    """
    cfg.num_valid = 0 if data.valid is None else len(data.valid)
    if data.vocab is None:
        return
    path = os.path.abspath(os.path.join(run_dir, VOCAB_FILE))
    data.vocab.save(path)
    cfg.vocab_path = path
    cfg.max_len = data.seq_len


def run_vocab_path(run_dir: str) -> Optional[str]:
    """RUN_DIR/vocab.json if the run saved one."""
    path = os.path.join(run_dir, VOCAB_FILE)
    return path if os.path.exists(path) else None


def write_token_file(path: str, seqs: np.ndarray) -> None:
    """One sequence per line, space-separated token ids; written atomically."""
    with atomic_file(path) as f:
        for row in seqs:
            f.write(" ".join(map(str, row.tolist())) + "\n")


class BatchSampler:
    """Batches of training sequences; its state makes resuming exact.

    ``shuffle`` (the default): epochs of batches in an order drawn from its own RNG, reshuffled
    every epoch. Otherwise the authors' loader: the data cut in file order into
    ``len(data) // batch_size`` fixed batches, cycled in order for ever.
    """

    def __init__(self, data: torch.Tensor, batch_size: int, seed: int, shuffle: bool = True):
        if len(data) < batch_size:
            raise ValueError(f"the training set has {len(data)} sequences, fewer than the batch size "
                             f"{batch_size}: lower cot.batch_size")
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = self._order()
        self.pos = 0

    def _order(self) -> torch.Tensor:
        return torch.randperm(len(self.data), generator=self.gen) if self.shuffle else torch.arange(len(self.data))

    def next(self) -> torch.Tensor:
        """-> (batch_size, T); the tail of an epoch that does not fill a batch is skipped."""
        if self.pos + self.batch_size > len(self.data):
            self.perm = self._order()
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
