"""Big corpora: the training file encoded once (cached, memory-mapped), batches padded on demand,
eval and sample without the training file, and a warning when a few long lines set the length."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import tracemalloc

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cot_ray.corpus as corpus_mod
from cot_ray.cli import main
from cot_ray.config_loading import load_config
from cot_ray.data import BatchSampler, load_dataset
from cot_ray.text import EOS_ID, PAD_ID, TokenRows, Vocab, read_corpus, trim_padding

WORDS = [f"w{i}" for i in range(300)]
TINY_TEXT = [
    "generator.emb_dim=8", "generator.hidden_dim=8", "mediator.emb_dim=8", "mediator.hidden_dim=8",
    "cot.batch_size=8", "eval.bleu_samples=8", "run.log_every=2", "run.threads=1",
]


def _zipf_lines(n: int, seed: int, longest: int = 12) -> list:
    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(len(WORDS))]
    return [" ".join(rng.choices(WORDS, weights, k=rng.randint(1, longest))) for _ in range(n)]


@pytest.fixture
def files(tmp_path):
    """(train path, test path, cache dir)."""
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    train.write_text("\n".join(_zipf_lines(400, 0)) + "\n", encoding="utf-8")
    test.write_text("\n".join(_zipf_lines(40, 1)) + "\n", encoding="utf-8")
    return str(train), str(test), str(tmp_path / "cache")


def _cfg(files, *overrides):
    return load_config(None, TINY_TEXT + ["data.source=text", f"data.train_path={files[0]}",
                                          f"data.test_path={files[1]}", f"data.cache_dir={files[2]}", *overrides])


def _old_padding(sentences: list, vocab: Vocab, max_len: int) -> torch.Tensor:
    """The padded (N, T) int64 array of the loader before the token cache, written out plainly:
    each row is the ids, then EOS if it fits, then PAD."""
    out = torch.full((len(sentences), max_len), PAD_ID, dtype=torch.int64)
    for r, words in enumerate(sentences):
        ids = vocab.encode(words)
        ids = ids[:max_len] if len(ids) + 1 > max_len else ids + [EOS_ID]
        out[r, :len(ids)] = torch.tensor(ids, dtype=torch.int64)
    return out


def test_token_rows_give_the_old_padded_batches_bitwise(files):
    """Catches: a batch of TokenRows differing from the same rows of the old (N, T) array in a
    value or dtype (an EOS on a cut sentence, int32 leaking out), or a sampler drawing other rows."""
    data = load_dataset(_cfg(files, "data.max_len=7", "data.num_valid=0").data)
    dense = _old_padding(read_corpus(files[0]), data.vocab, 7)  # (N, 7)
    assert isinstance(data.train, TokenRows) and data.train.shape == tuple(dense.shape)
    assert torch.equal(data.train[:], dense) and data.train[:].dtype == torch.int64
    assert torch.equal(data.train[5], dense[5]) and torch.equal(data.train[-1], dense[-1])
    a, b = BatchSampler(data.train, 16, seed=3), BatchSampler(dense, 16, seed=3)
    for _ in range(60):  # past an epoch: the reshuffle too
        x, y = a.next(), b.next()
        assert x.dtype == y.dtype and torch.equal(x, y)
        assert all(torch.equal(p, q) for p, q in zip(trim_padding([x], EOS_ID), trim_padding([y], EOS_ID)))
    moved = pickle.loads(pickle.dumps(data.train))  # as ray.put sends it to the learners: plain arrays
    assert type(moved.tokens) is np.ndarray and torch.equal(moved[:], dense)


def test_second_load_reads_the_cache_and_a_changed_file_is_encoded_again(files, monkeypatch):
    """Catches: re-encoding the corpus on every load (no cache), or a cache that outlives a change
    of the file (a stale vocabulary or stale sentences)."""
    first = load_dataset(_cfg(files).data)
    (entry,) = [os.path.join(files[2], n) for n in os.listdir(files[2]) if n.startswith("text-")]
    stamp = os.stat(os.path.join(entry, "tokens.npy")).st_mtime_ns

    def no_encoding(*args, **kwargs):
        raise AssertionError("the corpus was encoded again")

    with monkeypatch.context() as m:
        m.setattr(corpus_mod, "count_words", no_encoding)
        m.setattr(corpus_mod, "encode_file", no_encoding)
        again = load_dataset(_cfg(files).data)
        assert isinstance(again.train.tokens, np.memmap)  # read memory-mapped, not into memory
        assert torch.equal(again.train[:], first.train[:]) and again.vocab == first.vocab
        assert os.stat(os.path.join(entry, "tokens.npy")).st_mtime_ns == stamp

    with open(files[0], "a", encoding="utf-8") as f:
        f.write("zebra okapi zebra\n" * 30)
    changed = load_dataset(_cfg(files).data)
    assert "zebra" in changed.vocab and len(changed.train) + len(changed.valid) == 430
    assert not os.path.exists(entry)  # the entry of the old content is gone: one entry per file and settings
    assert len([n for n in os.listdir(files[2]) if n.startswith("text-")]) == 1
    other = load_dataset(_cfg(files, "data.min_count=2").data)  # other vocabulary settings: another entry
    assert len(other.vocab) < len(changed.vocab)
    assert len([n for n in os.listdir(files[2]) if n.startswith("text-")]) == 2


def test_damaged_or_unwritable_cache_still_loads(files):
    """Catches: a torn cache entry read as data, or a read-only cache directory stopping a run."""
    ref = load_dataset(_cfg(files).data).train[:]  # (N, T) in memory: the entry's map is not read again
    (entry,) = [os.path.join(files[2], n) for n in os.listdir(files[2]) if n.startswith("text-")]
    with open(os.path.join(entry, "tokens.npy"), "r+b") as f:
        f.truncate(200)  # a torn entry
    assert torch.equal(load_dataset(_cfg(files).data).train[:], ref)
    blocked = os.path.join(os.path.dirname(files[0]), "cache-is-a-file")
    open(blocked, "w").close()
    cfg = _cfg(files)
    cfg.data.cache_dir = os.path.join(blocked, "sub")
    data = load_dataset(cfg.data)
    assert torch.equal(data.train[:], ref)
    assert [n for n in data.notes if "cannot write the corpus cache" in n and "data.cache_dir" in n]


def test_eval_and_sample_of_a_text_run_never_read_its_training_file(files, tmp_path):
    """Catches: eval/sample re-reading (and re-encoding) the training corpus although the run saved
    its vocabulary: they then fail once the corpus is moved, and cost the corpus's time and memory."""
    runner = CliRunner()
    sets = [a for kv in TINY_TEXT for a in ("--set", kv)]
    res = runner.invoke(main, ["train", "--local", "--json", "--logdir", str(tmp_path / "runs"), *sets,
                               "--data", files[0], "--test-data", files[1], "--iters", "4", "--algo", "cot",
                               "--set", "run.name=r", "--set", f"data.cache_dir={files[2]}",
                               "--set", "data.num_valid=30", "--set", "eval.num_train=50"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    run_dir = json.loads(res.output.strip().splitlines()[-1])["run_dir"]
    before = runner.invoke(main, ["eval", run_dir, "--json"], catch_exceptions=False)
    samples = runner.invoke(main, ["sample", run_dir, "-n", "5", "--seed", "2"], catch_exceptions=False)
    assert before.exit_code == 0 and samples.exit_code == 0, before.output + samples.output
    full = load_dataset(load_config(os.path.join(run_dir, "config.yaml")).data)  # read from the corpus

    shutil.move(files[0], files[0] + ".moved")
    shutil.rmtree(files[2])  # and no cache of it either
    after = runner.invoke(main, ["eval", run_dir, "--json"], catch_exceptions=False)
    assert after.exit_code == 0, after.output
    got, want = json.loads(after.stdout.strip().splitlines()[-1]), json.loads(before.stdout.strip().splitlines()[-1])
    assert got == want and got["nll_valid"] is not None and got["nll_train"] is not None
    logged = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))][-1]  # on the whole corpus
    assert logged["iteration"] == got["iteration"] == 4
    for k in ("nll_test", "nll_train", "nll_valid", "m_nll_test", "m_nll_train"):
        assert got[k] == pytest.approx(logged[k], rel=1e-6), k
    again = runner.invoke(main, ["sample", run_dir, "-n", "5", "--seed", "2"], catch_exceptions=False)
    assert again.exit_code == 0 and again.stdout == samples.stdout, again.output

    saved = load_dataset(load_config(os.path.join(run_dir, "config.yaml")).data, run_dir, "eval", 50)
    assert torch.equal(saved.valid[:], full.valid[:]) and torch.equal(saved.train[:], full.train[:50])
    assert torch.equal(saved.test[:], full.test[:]) and saved.references == full.references
    with pytest.raises(Exception, match="does not exist"):  # more training sentences than the run saved
        load_dataset(load_config(os.path.join(run_dir, "config.yaml")).data, run_dir, "eval", 51)


def test_a_few_long_lines_setting_the_length_are_warned_once(tmp_path):
    """Catches: one 1,000-word line silently padding every sequence to 1,001 tokens."""
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    lines = _zipf_lines(2000, 0)
    lines[77] = " ".join(["w1"] * 1000)
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    test.write_text("\n".join(_zipf_lines(20, 1)) + "\n", encoding="utf-8")
    files = (str(train), str(test), str(tmp_path / "cache"))
    data = load_dataset(_cfg(files).data)
    assert data.seq_len == 1001
    (warning,) = [n for n in data.notes if "data.max_len=13" in n]
    assert "1 of 2,000 training sentences" in warning and "1,001 tokens" in warning and "\n" not in warning
    assert not load_dataset(_cfg(files, "data.max_len=13").data).notes[1:]  # given a length: only the cut
    lines[77] = " ".join(["w1"] * 20)  # a long tail, not a few outliers: no warning
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert not load_dataset(_cfg(files).data).notes

    train.write_text("\n".join(_zipf_lines(2000, 0)[:-1] + [" ".join(["w1"] * 1000)]) + "\n", encoding="utf-8")
    res = CliRunner().invoke(main, ["train", "--local", "--json", "--logdir", str(tmp_path / "runs"),
                                    *[a for kv in TINY_TEXT for a in ("--set", kv)], "--data", str(train),
                                    "--test-data", str(test), "--iters", "1", "--set", "eval.num_train=0",
                                    "--set", "data.num_valid=0", "--set", f"data.cache_dir={files[2]}"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert res.stderr.count("data.max_len=13") == 1  # one line, once


def test_encoding_holds_far_less_than_the_corpus_in_memory(tmp_path):
    """Catches: a list of every sentence's tokens (tens of bytes a word) or an (N, T) int64 array
    held while loading: memory then grows with the corpus, several times its size."""
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    with open(train, "w", encoding="utf-8") as f:
        for block in range(40):
            f.write("\n".join(_zipf_lines(2500, block, longest=30)) + "\n")
    test.write_text("\n".join(_zipf_lines(20, 1)) + "\n", encoding="utf-8")
    size = os.path.getsize(train)  # about 4 MB
    files = (str(train), str(test), str(tmp_path / "cache"))
    tracemalloc.start()
    try:
        data = load_dataset(_cfg(files, "data.num_valid=0").data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(data.train) == 100_000 and size > 3_000_000
    # before the cache: 129 MB traced for this 5.8 MB file (22 times it); now 7.7 MB, mostly (N,) arrays
    assert peak < 2 * size, f"peak {peak:,} bytes traced loading a corpus of {size:,} bytes"
