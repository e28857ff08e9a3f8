"""Vocabulary, encoding, masks and corpus-file errors of cot_ray.text."""

import json
import os

import numpy as np
import pytest
import torch

from cot_ray.config import DataConfig
from cot_ray.data import text_dataset
from cot_ray.text import (
    EOS_ID,
    PAD_ID,
    UNK_ID,
    DataError,
    Vocab,
    encode_corpus,
    loss_mask,
    read_corpus,
    tokenize,
    trim_padding,
)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_special_ids():
    assert (PAD_ID, EOS_ID, UNK_ID) == (0, 1, 2)
    v = Vocab.build([])
    assert v.itos == ["<pad>", "<eos>", "<unk>"]
    assert len(v) == 3


def test_tokenize_whitespace_keeps_punctuation():
    assert tokenize("  Hello, world!\tok \n") == ["Hello,", "world!", "ok"]


def test_vocab_order_min_count_max_size():
    sents = [["b", "a", "c"], ["a", "b", "d"], ["a", "e"]]  # a:3 b:2 c:1 d:1 e:1
    v = Vocab.build(sents)
    assert v.itos[3:] == ["a", "b", "c", "d", "e"]  # count desc, then alphabetical
    assert v.stoi["a"] == 3
    v2 = Vocab.build(sents, min_count=2)
    assert v2.itos[3:] == ["a", "b"]
    v3 = Vocab.build(sents, max_size=5)  # 3 specials + 2 words
    assert len(v3) == 5
    assert v3.itos[3:] == ["a", "b"]
    with pytest.raises(ValueError):
        Vocab.build(sents, max_size=2)
    with pytest.raises(ValueError):
        Vocab.build(sents, min_count=0)


def test_literal_specials_in_text_are_not_duplicated():
    v = Vocab.build([["x", "<unk>", "<unk>", "<unk>"]])
    assert v.itos == ["<pad>", "<eos>", "<unk>", "x"]
    assert v.encode(["<unk>", "x"]) == [UNK_ID, 3]


def test_encode_decode_round_trip():
    sents = [["the", "cat", "sat"], ["a", "dog", "ran", "."]]
    v = Vocab.build(sents)
    for s in sents:
        ids = v.encode(s)
        assert v.decode(ids) == " ".join(s)
        assert v.decode(ids + [EOS_ID, 5, 6]) == " ".join(s)  # stops at EOS
        assert v.decode([PAD_ID] + ids + [PAD_ID]) == " ".join(s)  # drops PAD
    assert v.encode(["the", "unseen"]) == [v.stoi["the"], UNK_ID]
    assert v.decode(v.encode(["the", "unseen"])) == "the <unk>"
    # numpy and torch inputs
    row = np.array(v.encode(sents[0]) + [EOS_ID, PAD_ID])
    assert v.decode(row) == "the cat sat"
    assert v.decode(torch.as_tensor(row)) == "the cat sat"
    assert v.decode_tokens(row) == sents[0]
    with pytest.raises(ValueError):
        v.decode([len(v)])


def test_encode_corpus_padding_truncation_and_stats():
    v = Vocab.build([["a", "b", "c"]])  # a=3 b=4 c=5
    sents = [["a"], ["a", "b", "c"], ["a", "b", "c", "a"], ["zz", "a"]]
    data, stats = encode_corpus(sents, v, max_len=4)
    assert data.dtype == np.int64 and data.shape == (4, 4)
    assert data.tolist() == [
        [3, 1, 0, 0],
        [3, 4, 5, 1],  # exactly fits with EOS
        [3, 4, 5, 3],  # truncated: EOS dropped
        [2, 3, 1, 0],
    ]
    assert stats["truncated"] == 1
    assert stats["num_sentences"] == 4
    assert stats["unk_rate"] == pytest.approx(1 / 10)
    # ids fill the row but EOS would not fit: truncated too
    _, stats = encode_corpus([["a", "b"]], v, max_len=2)
    assert stats["truncated"] == 1
    empty, stats = encode_corpus([], v, max_len=3)
    assert empty.shape == (0, 3) and stats["unk_rate"] == 0.0


def test_loss_mask():
    tokens = torch.tensor(
        [
            [3, 4, 1, 0, 0],
            [1, 3, 1, 3, 0],
            [3, 3, 3, 3, 3],  # no EOS: all ones
        ]
    )
    mask = loss_mask(tokens, EOS_ID)
    assert mask.dtype == torch.float32 and mask.shape == (3, 5)
    assert mask.tolist() == [
        [1, 1, 1, 0, 0],
        [1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1],
    ]
    assert loss_mask(tokens, None) is None  # fixed-length sequences: every position counts


def test_read_corpus_skips_blank_lines(tmp_path):
    p = write(tmp_path / "c.txt", "\ufeffhello world\n\n   \r\nsecond line .\r\n")
    assert read_corpus(p) == [["hello", "world"], ["second", "line", "."]]


def test_missing_file(tmp_path):
    p = str(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="nope.txt") as e:
        read_corpus(p, role="training")
    msg = str(e.value)
    assert "training file" in msg and "does not exist" in msg and "\n" not in msg


def test_empty_file(tmp_path):
    p = write(tmp_path / "empty.txt", "\n  \n\t\n")
    with pytest.raises(DataError, match=r"training file '.*empty\.txt' is empty: give a file"):
        read_corpus(p, role="training")


def test_binary_file(tmp_path):
    p = tmp_path / "data.bin"
    p.write_bytes(b"\x00\x01\x02hello\x00")
    with pytest.raises(DataError, match=r"data\.bin.*binary"):
        read_corpus(str(p))


def test_non_utf8_file(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt.*UTF-8"):
        read_corpus(str(p))


def test_directory_is_rejected(tmp_path):
    with pytest.raises(DataError, match="directory"):
        read_corpus(str(tmp_path))


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)


@pytest.fixture(autouse=True)
def _corpus_cache(tmp_path, monkeypatch):
    """Encoded training files (cot_ray.corpus) go under tmp_path, not into ~/.cache."""
    monkeypatch.setattr("cot_ray.data.default_cache_dir", lambda: str(tmp_path / "corpus-cache"))


def _text(train, test, **kw):
    return text_dataset(DataConfig(source="text", train_path=train, test_path=test, **kw), train, test)


def test_text_dataset(tmp_path):
    train = write(tmp_path / "train.txt", "a b c\na b\nb c d e\n")
    test = write(tmp_path / "test.txt", "a b\na q\na b c d e f g\n")
    data = _text(train, test)
    assert data.seq_len == 5  # longest training sentence (4) + EOS
    assert data.train.shape == (3, 5) and data.test.shape == (3, 5)
    assert data.train.dtype == torch.int64 and data.test.dtype == torch.int64
    assert data.stats["train"]["truncated"] == 0 and data.stats["train"]["unk_rate"] == 0.0
    assert data.stats["test"]["truncated"] == 1
    assert data.stats["test"]["unk_rate"] == pytest.approx(3 / 11)  # q, f, g
    assert data.decode(data.train[2]) == "b c d e"
    assert data.decode(data.test[1]) == "a <unk>"
    # the vocabulary comes from training only
    assert "q" not in data.vocab
    fixed = _text(train, test, max_len=3, max_vocab=6)  # b a c
    assert fixed.train.shape == (3, 3) and fixed.vocab.itos[3:] == ["b", "a", "c"]
    assert fixed.stats["train"]["truncated"] == 2  # "a b c" and "b c d e" need 4 and 5


def test_mismatched_test_vocab(tmp_path):
    train = write(tmp_path / "train.txt", "a b c\n")
    test = write(tmp_path / "other.txt", "x y a\nz w\n")  # 4 of 5 unknown
    with pytest.raises(DataError, match=r"test file '.*other\.txt' does not match the vocabulary of '.*train\.txt'"):
        _text(train, test)
    # exactly half unknown is still accepted
    ok = write(tmp_path / "half.txt", "a x\n")
    assert _text(train, ok).stats["test"]["unk_rate"] == 0.5


def test_text_dataset_names_each_file(tmp_path):
    good = write(tmp_path / "good.txt", "a b\n")
    empty = write(tmp_path / "blank.txt", "")
    with pytest.raises(DataError, match=r"^training file '.*blank\.txt' is empty"):
        _text(empty, good)
    with pytest.raises(DataError, match=r"^test file '.*blank\.txt' is empty"):
        _text(good, empty)


def test_vocab_save_load_round_trip(tmp_path):
    v = Vocab.build([["héllo", "wörld", "héllo"], ["x"]])
    path = tmp_path / "vocab.json"
    v.save(str(path))
    assert json.loads(path.read_text(encoding="utf-8")) == v.itos
    assert Vocab.load(str(path)) == v
    assert Vocab.from_json(v.to_json()) == v
    # overwrite in place leaves no temp files behind
    Vocab.build([["y"]]).save(str(path))
    assert Vocab.load(str(path)).itos[3:] == ["y"]
    assert sorted(os.listdir(tmp_path)) == ["vocab.json"]


def test_vocab_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "vocab.json"
    Vocab.build([["old"]]).save(str(path))

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        Vocab.build([["new"]]).save(str(path))
    monkeypatch.undo()
    # the old file is intact and the temp file was cleaned up
    assert Vocab.load(str(path)).itos[3:] == ["old"]
    assert sorted(os.listdir(tmp_path)) == ["vocab.json"]


def test_vocab_load_errors(tmp_path):
    with pytest.raises(DataError, match="missing.json"):
        Vocab.load(str(tmp_path / "missing.json"))
    bad = write(tmp_path / "bad.json", '["a", "b"]')
    with pytest.raises(DataError, match="bad.json"):
        Vocab.load(bad)


def test_trim_padding_cuts_every_batch_to_the_longest_counted_prefix_and_changes_no_loss():
    from cot_ray.model_config import LSTMConfig
    from cot_ray.models import LSTMLM
    from cot_ray.models.fused import fused_mixture_loss

    E, P = EOS_ID, PAD_ID
    a = torch.tensor([[5, E, P, P, P, P, P], [6, 7, E, P, P, P, P]])
    b = torch.tensor([[5, 6, 7, E, P, P, P]])  # 4 counted positions: the longest
    ta, tb = trim_padding([a, b], EOS_ID)
    assert ta.shape == (2, 4) and tb.shape == (1, 4) and torch.equal(tb, b[:, :4])
    no_eos = torch.tensor([[5, 6, 7, 8, 5, 6, 7]])  # a sentence cut at max_len counts everywhere
    assert trim_padding([a, no_eos], EOS_ID)[0].shape == (2, 7)
    assert trim_padding([a], None)[0] is a  # fixed-length data: untouched
    # The mediator's loss and gradients on the trimmed batches equal those on the full ones.
    model = LSTMLM(9, LSTMConfig(emb_dim=4, hidden_dim=5, init_std=0.5))
    model.init_weights(torch.Generator().manual_seed(0))
    model.double()

    def loss_and_grads(batches):
        model.zero_grad()
        loss, _ = fused_mixture_loss(model.hidden(torch.cat(batches)), batches, [0.5, 0.5], model.out.weight,
                                     model.out.bias, [loss_mask(x, EOS_ID) for x in batches])
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    full, trimmed = loss_and_grads([a, b]), loss_and_grads([ta, tb])
    assert torch.allclose(full[0], trimmed[0], rtol=1e-12)
    assert all(torch.allclose(g, h, rtol=1e-10, atol=1e-14) for g, h in zip(full[1], trimmed[1]))
