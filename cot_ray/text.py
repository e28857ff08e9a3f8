"""Text corpora for training discrete sequence models.

Token ids follow one fixed convention that the rest of the package relies on:

====  ==========  =====================================================
 id    token       meaning
====  ==========  =====================================================
 0     ``<pad>``   padding after the end of a sentence; also the
                   start-of-sequence input fed to the model at step 0
 1     ``<eos>``   end of sentence
 2     ``<unk>``   a word that is not in the vocabulary
 3+    words       sorted by descending training count, then alphabetically
====  ==========  =====================================================

A corpus is one sentence per line, tokenised by whitespace (punctuation stays
attached to words). Every sentence becomes ``ids + [EOS]`` padded with PAD to a
fixed length ``T``, so a corpus is an ``int64`` array of shape ``(N, T)``::

    >>> vocab = Vocab.build([["a", "b", "a"]])
    >>> data, stats = encode_corpus([["a", "b"], ["b", "zz"]], vocab, max_len=4)
    >>> data.tolist()
    [[3, 4, 1, 0], [4, 2, 1, 0]]
    >>> stats["unk_rate"]
    0.25

A whole corpus is held instead as a ragged array (every sentence's ids one after another, and
its length) that :class:`TokenRows` pads into those same rows only when a batch asks for them.

Only numpy, torch and the standard library are used here (no ray).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from contextlib import contextmanager
from typing import (
    IO,
    Any,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import numpy as np
import torch

from .files import atomic_file

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
PAD_TOKEN = "<pad>"
EOS_TOKEN = "<eos>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS: Tuple[str, str, str] = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)

BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark, ignored at the start of a file

# The test set is rejected when more than this fraction of its tokens is unknown.
MAX_TEST_UNK_RATE = 0.5


class DataError(ValueError):
    """Unusable input data: the message is one line naming the file and the fix."""


def tokenize(line: str) -> List[str]:
    """Split a line on whitespace (the default tokenizer; punctuation stays attached)."""
    return line.split()


# --------------------------------------------------------------------------- vocabulary


class Vocab:
    """A bidirectional token <-> id map with the three specials at ids 0, 1, 2.

    ``Vocab(tokens)`` takes the full id-ordered token list (specials included);
    usually you want :meth:`Vocab.build` or :meth:`Vocab.load` instead.
    """

    def __init__(self, tokens: Sequence[str]):
        tokens = list(tokens)
        if tuple(tokens[:3]) != SPECIAL_TOKENS:
            raise ValueError(
                f"a vocabulary must start with {list(SPECIAL_TOKENS)}, got {tokens[:3]}"
            )
        stoi: Dict[str, int] = {}
        for i, tok in enumerate(tokens):
            if not isinstance(tok, str):
                raise ValueError(f"vocabulary entry {i} is not a string: {tok!r}")
            if tok in stoi:
                raise ValueError(f"vocabulary token {tok!r} appears twice (ids {stoi[tok]} and {i})")
            stoi[tok] = i
        self.itos: List[str] = tokens  # id -> token
        self.stoi: Dict[str, int] = stoi  # token -> id

    # -- construction -------------------------------------------------------------

    @classmethod
    def build(
        cls,
        sentences: Iterable[Sequence[str]],
        min_count: int = 1,
        max_size: Optional[int] = None,
    ) -> "Vocab":
        """Build a vocabulary from tokenised sentences: :meth:`from_counts` of their word counts."""
        counts: Counter = Counter()
        for sentence in sentences:
            counts.update(sentence)
        return cls.from_counts(counts, min_count, max_size)

    @classmethod
    def from_counts(
        cls,
        counts: Mapping[str, int],
        min_count: int = 1,
        max_size: Optional[int] = None,
    ) -> "Vocab":
        """Build a vocabulary from word counts (word -> times seen in the training text).

        Words are ordered by descending count, ties broken alphabetically. Words
        seen fewer than ``min_count`` times are dropped (they will encode as UNK).
        ``max_size`` caps the TOTAL size, the 3 specials included, so at most
        ``max_size - 3`` words are kept. Literal special strings in the text (e.g.
        ``<unk>`` in PTB) are not added twice: they map to their special id.
        """
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        if max_size is not None and max_size < len(SPECIAL_TOKENS):
            raise ValueError(
                f"max_size must be >= {len(SPECIAL_TOKENS)} (the special tokens), got {max_size}"
            )
        words = [w for w, c in counts.items() if c >= min_count and w not in SPECIAL_TOKENS]
        words.sort(key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max_size - len(SPECIAL_TOKENS)]
        return cls(list(SPECIAL_TOKENS) + words)

    # -- mapping --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)})"

    def encode(self, tokens: Iterable[str]) -> List[int]:
        """Map tokens to ids; words not in the vocabulary become UNK_ID. No EOS is added."""
        get = self.stoi.get
        return [get(tok, UNK_ID) for tok in tokens]

    def decode_tokens(self, ids: Iterable[int]) -> List[str]:
        """Map ids back to tokens, stopping at the first EOS and dropping PAD.

        Accepts a list, a 1-D numpy array or a 1-D tensor. An id outside the
        vocabulary raises ``ValueError`` (it means the model and vocabulary disagree).
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        elif isinstance(ids, np.ndarray):
            ids = ids.tolist()
        out: List[str] = []
        size = len(self.itos)
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i == PAD_ID:
                continue
            if not 0 <= i < size:
                raise ValueError(f"token id {i} is outside the vocabulary of size {size}")
            out.append(self.itos[i])
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> a space-joined sentence (stops at the first EOS, drops PAD)."""
        return " ".join(self.decode_tokens(ids))

    # -- persistence ------------------------------------------------------------------

    def to_json(self) -> str:
        """The vocabulary as a JSON list of tokens in id order (specials first)."""
        return json.dumps(self.itos, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "Vocab":
        """Inverse of :meth:`to_json`."""
        tokens = json.loads(text)
        if not isinstance(tokens, list):
            raise ValueError("a vocabulary JSON document must be a list of tokens")
        return cls(tokens)

    def save(self, path: str) -> None:
        """Write :meth:`to_json` to ``path`` atomically."""
        with atomic_file(path) as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path: str) -> "Vocab":
        """Read a vocabulary written by :meth:`save`."""
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise DataError(f"vocabulary file '{path}' does not exist: check the path") from None
        try:
            return cls.from_json(text)
        except ValueError as e:  # includes json.JSONDecodeError
            raise DataError(
                f"vocabulary file '{path}' is not a valid vocabulary ({e}): "
                "give a file written by Vocab.save"
            ) from None


# --------------------------------------------------------------------------- encoding


def encode_corpus(
    sentences: Sequence[Sequence[str]], vocab: Vocab, max_len: int
) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Encode tokenised sentences as a padded ``int64`` array of shape ``(N, max_len)``.

    Each row is ``ids + [EOS_ID]`` followed by PAD_ID up to ``max_len``. A sentence
    whose ``ids + [EOS]`` does not fit is cut to its first ``max_len`` ids; its EOS
    is then dropped (the row has no EOS, so :func:`loss_mask` keeps all of it),
    and it is counted in ``stats["truncated"]``. (The rows of :func:`pad_rows`.)

    Returns ``(data, stats)`` with the stats of :func:`encoding_stats`.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    tokens, lengths, unk = encode_sentences(sentences, vocab)
    starts = np.cumsum(lengths) - lengths  # (N,) where each sentence begins in ``tokens``
    return pad_rows(tokens, starts, lengths, max_len), encoding_stats(lengths, unk, max_len)


def encode_sentences(sentences: Sequence[Sequence[str]], vocab: Vocab) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokenised sentences as a ragged array: ``(tokens, lengths, unk)``, every sentence's ids one
    after another (``(num_tokens,)`` int32, no EOS), its number of words and of UNK ids among them
    (``(N,)`` int64 each); what :class:`TokenRows` pads."""
    ids = [vocab.encode(sentence) for sentence in sentences]
    lengths = np.array([len(x) for x in ids], dtype=np.int64)  # (N,)
    unk = np.array([x.count(UNK_ID) for x in ids], dtype=np.int64)  # (N,)
    tokens = np.fromiter((i for x in ids for i in x), dtype=np.int32, count=int(lengths.sum()))
    return tokens, lengths, unk


def pad_rows(tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray, seq_len: int) -> np.ndarray:
    """Sentences of a flat token array as padded rows: -> ``int64`` ``(B, seq_len)``.

    ``tokens`` is ``(num_tokens,)`` word ids (any integer dtype, memory-mapped or not); sentence
    ``b`` is ``tokens[starts[b]:starts[b] + lengths[b]]`` (``starts``, ``lengths``: ``(B,)``).
    Its row is its ids, then EOS_ID, then PAD_ID up to ``seq_len``; one with ``lengths[b] + 1 >
    seq_len`` keeps its first ``seq_len`` ids and has no EOS. The one padding rule of the package.
    """
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    out = np.full((len(starts), seq_len), PAD_ID, dtype=np.int64)  # (B, T)
    pos = np.arange(seq_len)  # (T,)
    inside = pos[None, :] < np.minimum(lengths, seq_len)[:, None]  # (B, T) the positions of word ids
    out[inside] = tokens[(starts[:, None] + pos[None, :])[inside]]
    room = np.flatnonzero(lengths < seq_len)  # rows whose EOS fits
    out[room, lengths[room]] = EOS_ID
    return out


def encoding_stats(lengths: np.ndarray, unk: np.ndarray, max_len: int) -> Dict[str, Any]:
    """Stats of sentences of ``lengths`` words (``(N,)``), ``unk`` of them UNK (``(N,)``), encoded
    to ``max_len``: ``num_sentences``, ``num_tokens`` (word tokens, EOS excluded), ``truncated``
    (sentences cut, see :func:`pad_rows`) and ``unk_rate`` (fraction of word tokens that map to
    UNK_ID; 0.0 without any token)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    num_tokens = int(lengths.sum())
    num_unk = int(np.asarray(unk, dtype=np.int64).sum())
    return {
        "num_sentences": len(lengths),
        "num_tokens": num_tokens,
        "truncated": int(np.count_nonzero(lengths + 1 > max_len)),
        "unk_rate": num_unk / num_tokens if num_tokens else 0.0,
    }


class TokenRows:
    """Sentences of a flat token array, indexed as padded rows (what a batch sampler and an
    evaluator take), so that no ``(N, T)`` array of a whole corpus is ever held.

    Indexing works as on an ``int64`` tensor of shape ``(N, seq_len)`` holding the rows of
    :func:`pad_rows`: ``rows[i]`` -> ``(seq_len,)``; ``rows[a:b]``, ``rows[index tensor or
    array]`` -> ``(len(idx), seq_len)``; ``len(rows)`` and ``rows.shape`` too. ``tokens`` may be
    memory-mapped: a batch reads only its own sentences. Pickled (e.g. by ``ray.put``) it
    carries its arrays as plain numpy arrays.
    """

    def __init__(self, tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray, seq_len: int):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if len(starts) != len(lengths):
            raise ValueError(f"{len(starts)} sentence starts but {len(lengths)} lengths")
        self.tokens = tokens  # (num_tokens,) word ids
        self.starts = np.asarray(starts, dtype=np.int64)  # (N,)
        self.lengths = np.asarray(lengths, dtype=np.int64)  # (N,) words, EOS excluded
        self.seq_len = seq_len

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def shape(self) -> Tuple[int, int]:
        return (len(self), self.seq_len)

    @property
    def dtype(self) -> torch.dtype:
        return torch.int64  # of the rows it gives

    def __repr__(self) -> str:
        return f"TokenRows({len(self)} sentences, {self.seq_len} tokens per row)"

    def __getitem__(self, idx: Union[int, slice, np.ndarray, torch.Tensor, Sequence[int]]) -> torch.Tensor:
        if isinstance(idx, (int, np.integer)):
            i = np.arange(len(self))[idx]  # negative ints count from the end; IndexError past it
            return self[np.array([i])][0]
        if isinstance(idx, slice):
            idx = np.arange(len(self))[idx]
        elif isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        idx = np.asarray(idx, dtype=np.int64)  # (B,)
        return torch.from_numpy(pad_rows(self.tokens, self.starts[idx], self.lengths[idx], self.seq_len))

    def take(self, idx: Union[np.ndarray, Sequence[int]]) -> "TokenRows":
        """The rows ``idx`` (``(K,)``, in that order) as another TokenRows over the same tokens."""
        idx = np.asarray(idx, dtype=np.int64)
        return TokenRows(self.tokens, self.starts[idx], self.lengths[idx], self.seq_len)

    def ragged(self) -> Tuple[np.ndarray, np.ndarray]:
        """Its sentences compact: ``(tokens, lengths)``, their ids one after another (``(sum of
        lengths,)`` int32, uncut) and their lengths (``(N,)`` int64)."""
        ends = np.cumsum(self.lengths)  # (N,)
        total = int(ends[-1]) if len(ends) else 0
        where = np.repeat(self.starts - (ends - self.lengths), self.lengths) + np.arange(total)  # (total,)
        return np.asarray(self.tokens[where], dtype=np.int32), self.lengths.copy()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "tokens": np.asarray(self.tokens)}  # a memory map pickles as its data


def trim_padding(batches: list, eos_id: Optional[int]) -> list:
    """The (B_k, T) token batches cut to the longest counted prefix among them: -> (B_k, T').

    A model's outputs up to a position depend only on the tokens before it, and every position
    after a sentence's EOS is masked out of the losses, so positions past the last counted one
    of every row cost time and change nothing: on COCO (36 positions) a real batch of 64
    counts at most about 20. All batches get the same T' so that they can be stacked. With
    ``eos_id`` None (fixed-length data) the batches are returned as they are.
    """
    if eos_id is None:
        return batches
    lengths = [loss_mask(x, eos_id).sum(dim=-1) for x in batches]  # (B_k,) counted positions per row
    longest = max((int(n.max()) for n in lengths if n.numel()), default=0)
    return [x[..., :max(longest, 1)] for x in batches]


def loss_mask(tokens: torch.Tensor, eos_id: Optional[int]) -> Optional[torch.Tensor]:
    """Float mask of the positions that count in losses and metrics; None when all of them do.

    ``tokens`` is ``(B, T)`` (any leading shape works; time is the last dim). ``eos_id``
    None means fixed-length sequences (the oracle): every position counts and the mask is
    None. Otherwise the mask has the shape of ``tokens`` and is 1.0 up to and including the
    first ``eos_id`` and 0.0 after it (padding); a row without EOS (a sentence cut to
    ``max_len``) is all ones.
    """
    if eos_id is None:
        return None
    is_eos = (tokens == eos_id).long()  # (B, T)
    eos_before = torch.cumsum(is_eos, dim=-1) - is_eos  # (B, T) EOS count strictly before t
    return (eos_before == 0).float()


# --------------------------------------------------------------------------- files


@contextmanager
def open_text_file(path: str, role: str = "corpus") -> Iterator[IO[bytes]]:
    """``path`` opened for reading bytes; :class:`DataError` (naming the ``role`` file and the
    fix) for a directory, a missing file or one that cannot be read."""
    label = f"{role} file '{path}'"
    if os.path.isdir(path):
        raise DataError(f"{label} is a directory: give a text file with one sentence per line")
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{label} does not exist: check the path") from None
    except PermissionError:
        raise DataError(f"{label} cannot be read (permission denied): fix its permissions") from None
    with f:
        yield f


def read_lines(path: str, role: str = "corpus") -> Iterator[Tuple[int, List[str]]]:
    """The non-blank lines of a UTF-8 text file with one sentence per line, read as a stream:
    yields ``(line number, tokens)``, numbered from 1 with the blank lines counted.

    ``role`` (e.g. ``"training"``, ``"test"``) names the file in error messages. Raises
    :class:`DataError` for a missing path, a directory, a binary or non-UTF-8 file, or a file
    without any non-blank line (once the lines before the problem were yielded). Lines end at
    ``"\\n"`` only (``str.splitlines`` would also break on ``\\x0b``, ``\\u2028``, ...); a UTF-8
    BOM is ignored; a NUL byte anywhere makes the file binary, even after an invalid UTF-8 byte.
    """
    label = f"{role} file '{path}'"
    binary = (f"{label} looks binary (it contains NUL bytes): give a UTF-8 text file "
              "with one sentence per line")
    seen = False
    with open_text_file(path, role) as f:
        offset = 0  # of the line's first byte after the BOM (as UTF-8 errors count offsets)
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            if b"\x00" in raw:
                raise DataError(binary)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                if any(b"\x00" in chunk for chunk in iter(lambda: f.read(1 << 20), b"")):
                    raise DataError(binary) from None
                raise DataError(
                    f"{label} is not valid UTF-8 (bad byte at offset {offset + e.start}): "
                    "re-encode it as UTF-8 text with one sentence per line"
                ) from None
            offset += len(raw)
            tokens = tokenize(line)
            if tokens:
                seen = True
                yield number, tokens
    if not seen:
        raise DataError(f"{label} is empty: give a file with one sentence per line")


def read_corpus(path: str, role: str = "corpus") -> List[List[str]]:
    """The tokenised non-blank lines of a UTF-8 text file with one sentence per line, as a
    list (see :func:`read_lines` for the rules and the errors)."""
    return [tokens for _, tokens in read_lines(path, role)]
