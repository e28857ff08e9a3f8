"""A training file encoded once: a flat token array, cached on disk and read memory-mapped.

A corpus of one sentence per line is read as a stream, twice: the first pass counts its words
(the vocabulary is built from the counts), the second encodes each sentence and appends its ids
to ``tokens.npy`` (``int32``), so no list of all sentences and no ``(N, T)`` array is ever
held. The entry is a directory of ``data.cache_dir`` (``~/.cache/cot-ray`` by default)::

    text-<key>/tokens.npy   (num_tokens,) int32   every sentence's word ids, one after another
    text-<key>/lengths.npy  (N,) int64            words per sentence (uncut, <eos> not counted)
    text-<key>/unk.npy      (N,) int64            how many of them are <unk>
    text-<key>/vocab.json                          the vocabulary the ids are of
    text-<key>/meta.json                           what the entry was made from

``key`` hashes the file's content (SHA-256 of its bytes), the vocabulary settings
(``min_count``, ``max_vocab``) and, when a saved vocabulary that the file itself would not give
is used, that vocabulary. ``max_len`` is not in it: the sentences are kept whole and cut only
when a batch is padded (:class:`cot_ray.text.TokenRows`), so any ``max_len`` reuses the entry.
A changed file is another key, so it is encoded anew (and the entries of its older contents
are removed); a damaged entry is encoded again. An entry is written under a temporary name
and renamed into place whole, so two processes encoding the same file at once both end with
one good entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from itertools import repeat
from typing import Callable, List, Optional

import numpy as np

from .text import UNK_ID, DataError, TokenRows, Vocab, open_text_file, read_lines

CACHE_VERSION = 1  # of the entry layout: an entry of another version is never read
CHUNK_TOKENS = 1 << 18  # ids encoded between two writes to tokens.npy (a list of them: 2 MiB)
TOKEN_DTYPE = np.dtype("<i4")  # word ids: 2**31 words is more than any vocabulary


@dataclass
class EncodedCorpus:
    """The sentences of a file as a ragged token array (see the module docstring)."""

    tokens: np.ndarray  # (num_tokens,) int32, memory-mapped
    lengths: np.ndarray  # (N,) int64 words per sentence, EOS excluded
    unk: np.ndarray  # (N,) int64 UNK ids per sentence
    vocab: Vocab  # the vocabulary of the ids
    entry: str = ""  # the cache directory it was read from
    reused: bool = False  # read from an earlier encoding (False: the file was encoded now)

    @property
    def starts(self) -> np.ndarray:
        """(N,) int64: where each sentence begins in ``tokens``."""
        return np.cumsum(self.lengths) - self.lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def rows(self, index: np.ndarray, seq_len: int) -> TokenRows:
        """Sentences ``index`` (``(K,)``, in that order) as padded rows of ``seq_len`` tokens."""
        return TokenRows(self.tokens, self.starts[index], self.lengths[index], seq_len)


def file_digest(path: str, role: str = "corpus") -> str:
    """SHA-256 of the bytes of ``path`` (read in 1 MiB blocks); :class:`DataError` as in
    :func:`cot_ray.text.open_text_file` for a file that cannot be read."""
    h = hashlib.sha256()
    with open_text_file(path, role) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def count_words(path: str, role: str = "corpus") -> tuple[Counter, int, int]:
    """First pass: (word counts, sentences, word tokens) of a file, read as a stream."""
    counts: Counter = Counter()
    sentences = tokens = 0
    for _, words in read_lines(path, role):
        counts.update(words)
        sentences += 1
        tokens += len(words)
    return counts, sentences, tokens


def _write_npy_header(f, dtype: np.dtype, n: int) -> None:
    np.lib.format.write_array_header_1_0(
        f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (n,)})


def encode_file(path: str, vocab: Vocab, num_sentences: int, num_tokens: int, out_dir: str,
                role: str = "corpus") -> None:
    """Second pass: write the ids of every sentence of ``path`` under ``vocab`` to
    ``out_dir/tokens.npy``, streamed in chunks, and its ``lengths.npy`` and ``unk.npy``.
    ``num_sentences`` and ``num_tokens`` (from the first pass) size the arrays."""
    lengths = np.empty(num_sentences, dtype=np.int64)
    unk = np.empty(num_sentences, dtype=np.int64)
    get = vocab.stoi.get
    written = row = 0
    buf: List[int] = []
    first = 0  # the row of buf's first sentence

    def flush() -> None:
        nonlocal written, first
        if row == first:
            return
        ids = np.array(buf, dtype=TOKEN_DTYPE)
        n = lengths[first:row]
        unk[first:row] = np.add.reduceat(ids == UNK_ID, np.cumsum(n) - n) if len(ids) else 0
        f.write(ids.tobytes())
        written += len(ids)
        buf.clear()
        first = row

    with open(os.path.join(out_dir, "tokens.npy"), "wb") as f:
        _write_npy_header(f, TOKEN_DTYPE, num_tokens)
        for _, words in read_lines(path, role):
            if row == num_sentences:
                raise DataError(f"{role} file '{path}' changed while it was read: try again")
            buf.extend(map(get, words, repeat(UNK_ID)))
            lengths[row] = len(words)
            row += 1
            if len(buf) >= CHUNK_TOKENS:
                flush()
        flush()
    if row != num_sentences or written != num_tokens:
        raise DataError(f"{role} file '{path}' changed while it was read: try again")
    np.save(os.path.join(out_dir, "lengths.npy"), lengths)
    np.save(os.path.join(out_dir, "unk.npy"), unk)


def _key(digest: str, min_count: int, max_vocab: int, vocab_digest: Optional[str]) -> str:
    spec = {"version": CACHE_VERSION, "digest": digest, "min_count": min_count, "max_vocab": max_vocab,
            "vocab": vocab_digest}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


def _read_entry(entry: str, key: str) -> Optional[EncodedCorpus]:
    """The corpus of a cache entry, its arrays memory-mapped; None if there is none or it is damaged."""
    try:
        with open(os.path.join(entry, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("key") != key or meta.get("version") != CACHE_VERSION:
            return None
        tokens = np.load(os.path.join(entry, "tokens.npy"), mmap_mode="r", allow_pickle=False)
        lengths = np.load(os.path.join(entry, "lengths.npy"), allow_pickle=False)
        unk = np.load(os.path.join(entry, "unk.npy"), allow_pickle=False)
        vocab = Vocab.from_json(open(os.path.join(entry, "vocab.json"), encoding="utf-8").read())
    except (OSError, ValueError, KeyError, TypeError):  # a missing, torn or foreign entry: encode again
        return None
    if (tokens.dtype != TOKEN_DTYPE or tokens.ndim != 1 or lengths.shape != unk.shape or lengths.ndim != 1
            or len(tokens) != int(lengths.sum()) or len(tokens) != meta.get("num_tokens")):
        return None
    return EncodedCorpus(tokens, lengths, unk, vocab, entry, reused=True)


def _remove_older(cache_dir: str, source: str, settings: dict, keep: str) -> None:
    """Remove the entries of earlier contents of ``source`` under the same settings (a memory
    map of one stays valid: the file goes when its last user closes it)."""
    try:
        names = [n for n in os.listdir(cache_dir) if n.startswith("text-") and n != os.path.basename(keep)]
    except OSError:
        return
    for name in names:
        try:
            with open(os.path.join(cache_dir, name, "meta.json"), encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError):
            continue
        if meta.get("source") == source and all(meta.get(k) == v for k, v in settings.items()):
            shutil.rmtree(os.path.join(cache_dir, name), ignore_errors=True)


def encoded_corpus(path: str, cache_dir: str, min_count: int = 1, max_vocab: int = 0,
                   vocab: Optional[Vocab] = None, role: str = "corpus",
                   note: Callable[[str], None] = lambda s: None) -> tuple[EncodedCorpus, Vocab]:
    """The sentences of ``path`` encoded (read from the cache, or encoded now and cached), and
    the vocabulary the file's own counts give with ``min_count`` and ``max_vocab`` (0: no cap).

    The ids are of ``vocab`` when one is given (a run's saved vocabulary), else of that built
    vocabulary. A cache directory that cannot be written costs only the cache: the corpus is
    then encoded into a temporary directory (removed at once; its memory map stays), and
    ``note`` says so in one line.
    """
    digest = file_digest(path, role)
    settings = {"min_count": min_count, "max_vocab": max_vocab}
    source = os.path.abspath(path)
    built_key = _key(digest, min_count, max_vocab, None)
    corpus = _read_entry(os.path.join(cache_dir, f"text-{built_key}"), built_key)
    counts = None
    if corpus is None:
        counts, n, num_tokens = count_words(path, role)
        built = Vocab.from_counts(counts, min_count, max_vocab or None)
    else:
        built, n, num_tokens = corpus.vocab, len(corpus), len(corpus.tokens)
    if vocab is None or vocab == built:
        key, use = built_key, built
    else:  # a saved vocabulary that this file's counts do not give: ids of that one, cached apart
        key, use = _key(digest, min_count, max_vocab, hashlib.sha256(vocab.to_json().encode()).hexdigest()), vocab
        corpus = _read_entry(os.path.join(cache_dir, f"text-{key}"), key)
    if corpus is not None and corpus.vocab == use:
        return corpus, built
    entry = os.path.join(cache_dir, f"text-{key}")
    meta = {"version": CACHE_VERSION, "key": key, "source": source, "digest": digest, **settings,
            "num_sentences": n, "num_tokens": num_tokens, "saved_vocab": use is not built}
    try:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".text-{key}.", dir=cache_dir)
        os.chmod(tmp, 0o755)  # readable as the files in it are (mkdtemp makes it 0700)
        cached = True
    except OSError as e:
        note(f"cannot write the corpus cache in '{cache_dir}' ({e.strerror or e}): encoding '{path}' for this "
             "process only; give a writable data.cache_dir to encode it once")
        tmp, cached = tempfile.mkdtemp(prefix="cot-ray-text-"), False
    try:
        encode_file(path, use, n, num_tokens, tmp, role)
        with open(os.path.join(tmp, "vocab.json"), "w", encoding="utf-8") as f:
            f.write(use.to_json())
        with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:  # last: marks the entry whole
            json.dump(meta, f)
        if not cached:
            got = _read_entry(tmp, key)
            got.entry, got.reused = "", False
            return got, built
        try:
            os.rename(tmp, entry)
        except OSError:  # another process put (or a damaged one left) an entry there first
            if _read_entry(entry, key) is None:
                shutil.rmtree(entry, ignore_errors=True)
                os.rename(tmp, entry)
        _remove_older(cache_dir, source, {**settings, "saved_vocab": meta["saved_vocab"]}, entry)
        got = _read_entry(entry, key)
        if got is None:
            raise DataError(f"the corpus cache entry '{entry}' was removed while it was written: try again")
        got.reused = False
        return got, built
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
