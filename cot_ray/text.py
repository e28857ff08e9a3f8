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

Only numpy, torch and the standard library are used here (no ray).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

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
        """Build a vocabulary from tokenised sentences.

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
        counts: Counter = Counter()
        for sentence in sentences:
            counts.update(sentence)
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
    and it is counted in ``stats["truncated"]``.

    Returns ``(data, stats)`` with stats keys ``num_sentences``, ``num_tokens``
    (word tokens, EOS excluded), ``truncated`` and ``unk_rate`` (fraction of word
    tokens that map to UNK_ID; 0.0 for an empty corpus).
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    n = len(sentences)
    data = np.full((n, max_len), PAD_ID, dtype=np.int64)  # (N, T)
    truncated = 0
    num_tokens = 0
    num_unk = 0
    for row, sentence in enumerate(sentences):
        ids = vocab.encode(sentence)
        num_tokens += len(ids)
        num_unk += ids.count(UNK_ID)
        if len(ids) + 1 > max_len:
            truncated += 1
            ids = ids[:max_len]
        else:
            ids.append(EOS_ID)
        data[row, : len(ids)] = ids
    stats = {
        "num_sentences": n,
        "num_tokens": num_tokens,
        "truncated": truncated,
        "unk_rate": num_unk / num_tokens if num_tokens else 0.0,
    }
    return data, stats


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


def read_corpus(path: str, role: str = "corpus") -> List[List[str]]:
    """Read a UTF-8 text file with one sentence per line; blank lines are skipped.

    ``role`` (e.g. ``"training"``, ``"test"``) names the file in error messages.
    Raises :class:`DataError` for a missing path, a directory, a binary or
    non-UTF-8 file, or a file without any non-blank line. A UTF-8 BOM is ignored.
    """
    label = f"{role} file '{path}'"
    if os.path.isdir(path):
        raise DataError(f"{label} is a directory: give a text file with one sentence per line")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{label} does not exist: check the path") from None
    except PermissionError:
        raise DataError(f"{label} cannot be read (permission denied): fix its permissions") from None
    if b"\x00" in raw:
        raise DataError(
            f"{label} looks binary (it contains NUL bytes): give a UTF-8 text file "
            "with one sentence per line"
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{label} is not valid UTF-8 (bad byte at offset {e.start}): "
            "re-encode it as UTF-8 text with one sentence per line"
        ) from None
    # Split on "\n" only: str.splitlines would also break on \x0b, \u2028, ...
    sentences = [tokenize(line) for line in text.split("\n")]
    sentences = [s for s in sentences if s]
    if not sentences:
        raise DataError(f"{label} is empty: give a file with one sentence per line")
    return sentences
