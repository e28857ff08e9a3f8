"""What training needs from a data source: train/test sequences, batches, decoding.

The synthetic source draws fixed training and test sets from the bundled oracle with a seed
and caches them on disk, so every run (and every Ray worker) sees the same sequences.

Text sources ("coco": the COCO captions shipped in ``assets/``; "text": any pair of files) are
read, tokenised on whitespace and encoded with a vocabulary built from the training file, or
with the run's saved one (``data.vocab_path``); see :mod:`cot_ray.text` for the id convention.
The training file is encoded once into a cached, memory-mapped token array
(:mod:`cot_ray.corpus`), and sentences are padded only when a batch takes them (:class:`TokenRows`).
A text run keeps its vocabulary and its evaluation sentences, so eval and sample never read
the training file again.
All data loading goes through :func:`load_dataset`, so every process of a run gets the same
sequences from the same config.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Callable, Optional

import numpy as np
import torch

from .config import DataConfig
from .corpus import encoded_corpus
from .files import atomic_file
from .models import LanguageModel, sequence_log_probs
from .models.oracle import SEQ_LEN, build_oracle, sample_oracle
from .seeds import VALIDATION_SET, derive_seed
from .text import (
    EOS_ID,
    MAX_TEST_UNK_RATE,
    DataError,
    TokenRows,
    Vocab,
    encode_sentences,
    encoding_stats,
    read_corpus,
)

VOCAB_FILE = "vocab.json"  # a text run's vocabulary, in its run directory
EVAL_FILE = "eval_data.npz"  # a text run's validation and first training sentences, in its run directory
LONG_LINES_FIT = 0.999  # long_lines_note: the share of sentences that a suggested max_len fits whole
LONG_LINES_RATIO = 2  # ... warned when the longest sentence needs more than this times that length
COCO_FILES = ("coco_train.txt", "coco_test.txt")  # in cot_ray/assets
SHIPPED_SETS = (88, 9984, 9984)  # (seed, num_train, num_test) of the oracle sets shipped in cot_ray/assets
SHIPPED_FILE = "oracle_seed88_train9984_test9984.npz"
SHIPPED_TORCH = "2.13.0"  # the torch release whose sampler drew the shipped sets (another draws other bits)
ORACLE_VALID = 2048  # validation sequences of the oracle when data.num_valid is -1
TEXT_VALID_MAX = 2048  # text: at most this many training sentences held out when data.num_valid is -1


@dataclass
class Dataset:
    """Sequences as int64 tensors (N, T) on the CPU (text: :class:`TokenRows`, indexed alike),
    plus what it takes to read them."""

    train: torch.Tensor  # or TokenRows
    test: torch.Tensor  # or TokenRows
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
    valid_rows: Optional[TokenRows] = None  # text: ``valid`` unpadded, as a run saves it (eval_data.npz)

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
    valid_seed = derive_seed(seed, VALIDATION_SET)
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


def load_dataset(cfg: DataConfig, run_dir: Optional[str] = None, need: str = "train",
                 num_train: Optional[int] = None) -> Dataset:
    """Build the data set that ``cfg`` names.

    ``need``: "train" (everything: training, resuming); on a text run (``run_dir``, whose saved
    vocabulary and ``max_len`` the config records) "eval" and "sample" never read the training
    file: "eval" takes the test file, and the validation and first ``num_train`` training
    sentences that the run saved (RUN_DIR/eval_data.npz), and "sample" only the vocabulary (no
    sentences at all). A run that saved less than that is read as for "train".
    """
    if need not in ("train", "eval", "sample"):
        raise ValueError(f"need must be 'train', 'eval' or 'sample', got {need!r}")
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
            return text_dataset(cfg, train_path, test_path, run_dir, need, num_train)
    if cfg.source == "text":
        if not cfg.train_path or not cfg.test_path:
            raise DataError("data.source 'text' needs data.train_path and data.test_path: give "
                            "--data PATH/train.txt --test-data PATH/test.txt")
        return text_dataset(cfg, cfg.train_path, cfg.test_path, run_dir, need, num_train)
    raise ValueError(f"config key 'data.source' must be 'oracle', 'coco' or 'text', got {cfg.source!r}")


def long_lines_note(lengths: np.ndarray) -> Optional[str]:
    """One line when a few very long training sentences set the padded length of every
    sequence (``data.max_len`` 0: the longest + 1), suggesting a ``max_len`` that fits all but
    them; None otherwise. ``lengths``: ``(N,)`` words per sentence.

    "A few" are the sentences past the length that fits ``LONG_LINES_FIT`` of them all; "very
    long": the longest needs more than ``LONG_LINES_RATIO`` times the tokens per sequence of
    that length (so every other sequence is mostly padding)."""
    if len(lengths) == 0:
        return None
    fit = int(np.percentile(lengths, 100 * LONG_LINES_FIT, method="higher"))  # words that fit LONG_LINES_FIT
    longest = int(lengths.max())
    if longest + 1 <= LONG_LINES_RATIO * (fit + 1):
        return None
    over = int(np.count_nonzero(lengths > fit))
    return (f"{over:,} of {len(lengths):,} training sentences are longer than {fit:,} words (the longest has "
            f"{longest:,}) and pad every sequence to {longest + 1:,} tokens: give data.max_len={fit + 1} to cut "
            f"them there ({1 - over / len(lengths):.2%} of the sentences fit whole)")


def text_dataset(cfg: DataConfig, train_path: str, test_path: str, run_dir: Optional[str] = None,
                 need: str = "train", num_train: Optional[int] = None) -> Dataset:
    """Read and encode a training and a test file of sentences (see DataConfig for the rules).

    With ``cfg.vocab_path`` the saved vocabulary is used as is (so ids match a trained model even
    if the training file changed since; a note says so when it did); otherwise the vocabulary is
    built from the training file with ``min_count`` and ``max_vocab``. The training file is
    encoded once into ``cfg.cache_dir`` (:mod:`cot_ray.corpus`) and its sentences are padded only
    when a batch takes them (``Dataset.train`` and ``test`` are :class:`TokenRows`). ``need``,
    ``run_dir``, ``num_train``: as in :func:`load_dataset`.
    """
    saved = Vocab.load(cfg.vocab_path) if cfg.vocab_path else None
    if saved is not None and cfg.max_len and run_dir is not None:
        if need == "sample":
            return _decoding_dataset(saved, cfg.max_len)
        if need == "eval":
            kept = _saved_eval_data(cfg, run_dir, saved, test_path, num_train)
            if kept is not None:
                return kept
    notes: list = []
    corpus, built = encoded_corpus(train_path, cfg.cache_dir or default_cache_dir(), cfg.min_count, cfg.max_vocab,
                                   saved, role="training", note=notes.append)
    test_sents = read_corpus(test_path, role="test")
    vocab = built
    if saved is not None:
        vocab = saved
        if vocab != built:
            notes.append(f"the vocabulary of '{train_path}' ({len(built)} tokens) differs from the saved "
                         f"'{cfg.vocab_path}' ({len(vocab)} tokens): using the saved one")
    lengths = corpus.lengths  # (N,) every training sentence, the held-out ones too
    max_len = cfg.max_len or int(lengths.max()) + 1
    if not cfg.max_len:
        long_note = long_lines_note(lengths)
        if long_note:
            notes.append(long_note)
    keep, held = valid_split(len(corpus), cfg.num_valid, cfg.seed)
    if not len(held):
        keep = np.arange(len(corpus))
    valid = corpus.rows(held, max_len) if len(held) else None
    train = corpus.rows(keep, max_len)
    train_stats = encoding_stats(lengths[keep], corpus.unk[keep], max_len)
    return _with_test(cfg, vocab, max_len, train, valid, train_stats, test_sents, train_path, test_path, notes)


def _with_test(cfg: DataConfig, vocab: Vocab, max_len: int, train: TokenRows, valid: Optional[TokenRows],
               train_stats: Optional[dict], test_sents: list, train_path: str, test_path: str,
               notes: list) -> Dataset:
    """The text data set of these training rows and test sentences: checks, summary and notes."""
    tokens, lengths, unk = encode_sentences(test_sents, vocab)
    test = TokenRows(tokens, np.cumsum(lengths) - lengths, lengths, max_len)
    test_stats = encoding_stats(lengths, unk, max_len)
    checked = (("training", train_path, train_stats),) if train_stats is not None else ()
    for role, path, st in checked + (("test", test_path, test_stats),):
        if st["unk_rate"] > MAX_TEST_UNK_RATE:
            source = f"'{cfg.vocab_path}'" if cfg.vocab_path else f"'{train_path}'"
            raise DataError(f"{role} file '{path}' does not match the vocabulary of {source}: "
                            f"{st['unk_rate']:.1%} of its tokens are unknown: give files of the same corpus "
                            "(or lower data.min_count / raise data.max_vocab)")
    what = (f"{len(train)} training, {0 if valid is None else len(valid)} validation (held out of the training "
            "file)" if train_stats is not None else
            f"{len(train)} training and {0 if valid is None else len(valid)} validation sentences (saved by the "
            "run)")
    summary = (f"text data: {what} and {len(test)} test sentences, vocabulary "
               f"{len(vocab)} tokens, {max_len} tokens per sequence (<eos> included), "
               f"{test_stats['unk_rate']:.2%} of test words unknown")
    for role, st in (("training", train_stats), ("test", test_stats)):
        if st is not None and st["truncated"]:
            notes.append(f"{st['truncated']} {role} sentences are longer than data.max_len - 1 = "
                         f"{max_len - 1} words: cut to {max_len} words, without <eos>")
    return Dataset(train, test, len(vocab), max_len, eos_id=EOS_ID, decode_fn=vocab.decode, vocab=vocab,
                   references=test_sents, summary=summary, notes=notes,
                   stats={"train": train_stats, "test": test_stats},
                   valid=None if valid is None else valid[:], valid_rows=valid)  # (K, T): scored whole


def _decoding_dataset(vocab: Vocab, max_len: int) -> Dataset:
    """What decodes a text run's samples and nothing more: its vocabulary and length, no sentences."""
    empty = TokenRows(np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64),
                      max_len)
    return Dataset(empty, empty, len(vocab), max_len, eos_id=EOS_ID, decode_fn=vocab.decode, vocab=vocab,
                   summary=f"text run: vocabulary {len(vocab)} tokens, {max_len} tokens per sequence")


def _saved_eval_data(cfg: DataConfig, run_dir: str, vocab: Vocab, test_path: str,
                     num_train: Optional[int]) -> Optional[Dataset]:
    """A text run's evaluation data without its training file: the test file, and the validation
    and first training sentences from RUN_DIR/eval_data.npz; None when the run saved none or fewer
    training sentences than ``num_train`` asks for (then the training file is read)."""
    path = os.path.join(run_dir, EVAL_FILE)
    try:
        with np.load(path, allow_pickle=False) as z:
            parts = {k: z[k] for k in z.files}
        valid_rows = _ragged_rows(parts, "valid", cfg.max_len)
        train = _ragged_rows(parts, "train", cfg.max_len)
        total = int(parts["num_train"])
    except (OSError, ValueError, KeyError):  # none (an older run) or damaged: read the training file
        return None
    if len(train) < min(total, num_train if num_train is not None else total):
        return None
    if parts.get("vocab_size") is not None and int(parts["vocab_size"]) != len(vocab):
        return None
    valid = valid_rows if len(valid_rows) else None
    test_sents = read_corpus(test_path, role="test")
    return _with_test(cfg, vocab, cfg.max_len, train, valid, None, test_sents, "", test_path, [])


def _ragged_rows(parts: dict, name: str, max_len: int) -> TokenRows:
    tokens, lengths = parts[f"{name}_tokens"], parts[f"{name}_lengths"].astype(np.int64)
    if tokens.ndim != 1 or lengths.ndim != 1 or len(tokens) != int(lengths.sum()):
        raise ValueError(f"{EVAL_FILE}: {name} arrays do not match")
    return TokenRows(tokens.astype(np.int32), np.cumsum(lengths) - lengths, lengths, max_len)


def save_run_data(run_dir: str, cfg: DataConfig, data: Dataset, num_train: int = 0) -> DataConfig:
    """Keep what decodes and evaluates a text run: RUN_DIR/vocab.json and RUN_DIR/eval_data.npz
    (the validation sentences and the first ``num_train`` training ones, ragged int32: what
    ``cot-ray eval`` and ``compare`` need besides the test file), both atomically; -> ``cfg``
    with the vocabulary recorded (a new config: ``cfg`` is left as it was).

    ``vocab_path`` then names the saved vocabulary and ``max_len`` the resolved length, so the
    saved config rebuilds exactly this data set; ``num_valid`` is the number of validation
    sequences it holds.
    """
    cfg = replace(cfg, num_valid=0 if data.valid is None else len(data.valid))
    if data.vocab is None:
        return cfg
    path = os.path.abspath(os.path.join(run_dir, VOCAB_FILE))
    data.vocab.save(path)
    cfg = replace(cfg, vocab_path=path, max_len=data.seq_len)
    if not isinstance(data.train, TokenRows):
        return cfg
    parts = {"num_train": np.int64(len(data.train)), "vocab_size": np.int64(len(data.vocab))}
    head = data.train.take(np.arange(max(0, min(num_train, len(data.train)))))
    for name, rows in (("train", head), ("valid", data.valid_rows if data.valid_rows is not None else head.take([]))):
        parts[f"{name}_tokens"], parts[f"{name}_lengths"] = rows.ragged()
    with atomic_file(os.path.join(run_dir, EVAL_FILE), "wb") as f:
        np.savez(f, **parts)
    return cfg


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
