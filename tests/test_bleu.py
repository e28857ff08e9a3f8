"""BleuScorer / self_bleu must agree with nltk's sentence_bleu as Texygen calls it."""

import random

import pytest

from cot_ray.bleu import BleuScorer, closest_length, self_bleu

bleu_score = pytest.importorskip("nltk.translate.bleu_score")

SMOOTH = bleu_score.SmoothingFunction().method1
TOL = 1e-9


def nltk_bleu(references, hypothesis, n):
    """Exactly Texygen's call."""
    weight = tuple(1.0 / n for _ in range(n))
    return bleu_score.sentence_bleu(references, hypothesis, weight, smoothing_function=SMOOTH)


def random_corpus(rng, num, vocab_size=30, min_len=1, max_len=12):
    words = [f"w{i}" for i in range(vocab_size)]
    return [[rng.choice(words) for _ in range(rng.randint(min_len, max_len))] for _ in range(num)]


EDGE_HYPOTHESES = [
    [],  # empty: BP = 0 and no unigram match -> 0
    ["w1"],  # shorter than every n >= 2
    ["w1", "w2"],
    ["zzz", "yyy", "xxx"],  # zero matches at every order
    ["w0"] * 12,  # repeated unigram: clipping
    ["w1", "w2"] * 6,  # repeated bigrams: clipping
    ["w3", "zzz", "w4", "w5", "w6"],  # partial matches
    [f"w{i}" for i in range(20)],  # long hypothesis, BP = 1
]


@pytest.fixture(scope="module")
def corpus():
    rng = random.Random(1234)
    refs = random_corpus(rng, 200)
    hyps = random_corpus(rng, 50) + [list(r) for r in refs[:5]] + EDGE_HYPOTHESES
    return refs, hyps


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_sentence_bleu_matches_nltk(corpus, n):
    refs, hyps = corpus
    scorer = BleuScorer(refs, max_n=5)
    for hyp in hyps:
        assert scorer.sentence_bleu(hyp, n) == pytest.approx(nltk_bleu(refs, hyp, n), abs=TOL, rel=0)


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_mean_score_matches_nltk(corpus, n):
    refs, hyps = corpus
    scorer = BleuScorer(refs, max_n=5)
    expected = sum(nltk_bleu(refs, h, n) for h in hyps) / len(hyps)
    assert scorer.score(hyps, n) == pytest.approx(expected, abs=TOL, rel=0)


def test_small_hand_picked_references():
    # Few references with distinct lengths exercise the brevity penalty and its tie rule.
    refs = [
        ["the", "cat", "sat", "on", "the", "mat"],
        ["a", "cat", "is", "on", "the", "mat", "today", "ok"],
        ["the", "the"],
    ]
    hyps = [
        ["the", "the", "the", "the", "the", "the", "the"],  # clipped to 2 "the"
        ["the", "cat", "sat"],  # closest lengths 2 and (none at 4): picks 2
        ["the", "cat", "sat", "on"],  # equidistant 2 and 6 -> shorter (2)
        ["the", "cat", "sat", "on", "the", "mat", "today"],  # between 6 and 8 -> 6 (tie -> shorter)
        ["cat"],
        ["mat", "on", "the", "cat"],
    ]
    scorer = BleuScorer(refs, max_n=5)
    for n in range(1, 6):
        for hyp in hyps:
            assert scorer.sentence_bleu(hyp, n) == pytest.approx(
                nltk_bleu(refs, hyp, n), abs=TOL, rel=0
            ), (n, hyp)


def test_references_shorter_than_n():
    refs = [["a"], ["b", "c"]]
    scorer = BleuScorer(refs, max_n=5)
    for hyp in (["a", "b", "c"], ["b", "c"], ["a"], ["q"]):
        for n in range(1, 6):
            assert scorer.sentence_bleu(hyp, n) == pytest.approx(
                nltk_bleu(refs, hyp, n), abs=TOL, rel=0
            )


def test_integer_tokens_work():
    refs = [[1, 2, 3, 4], [2, 3, 4, 5, 6]]
    hyp = [2, 3, 4, 5]
    assert BleuScorer(refs).sentence_bleu(hyp, 3) == pytest.approx(
        nltk_bleu(refs, hyp, 3), abs=TOL, rel=0
    )


def test_closest_length_ties_go_to_shorter():
    assert closest_length([2, 6], 4) == 2
    assert closest_length([2, 6], 5) == 6
    assert closest_length([2, 6], 6) == 6
    assert closest_length([2, 6], 100) == 6
    assert closest_length([2, 6], 0) == 2


def test_bad_arguments():
    with pytest.raises(ValueError):
        BleuScorer([])
    scorer = BleuScorer([["a"]], max_n=3)
    with pytest.raises(ValueError):
        scorer.score([["a"]], 4)
    with pytest.raises(ValueError):
        scorer.score([], 2)
    with pytest.raises(ValueError):
        self_bleu([["a"]], 2)


def nltk_self_bleu(sentences, n):
    scores = []
    for i, hyp in enumerate(sentences):
        others = sentences[:i] + sentences[i + 1 :]
        scores.append(nltk_bleu(others, hyp, n))
    return sum(scores) / len(scores)


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_self_bleu_matches_nltk(n):
    rng = random.Random(99)
    # A small vocabulary and duplicated sentences make the leave-one-out maxima matter.
    sents = random_corpus(rng, 60, vocab_size=8, max_len=10)
    sents += [list(sents[0]), list(sents[3]), ["w1"] * 9, ["w1"] * 4, ["w2"], []]
    assert self_bleu(sents, n) == pytest.approx(nltk_self_bleu(sents, n), abs=TOL, rel=0)
    assert BleuScorer.self_bleu(sents, n) == pytest.approx(nltk_self_bleu(sents, n), abs=TOL, rel=0)


def test_self_bleu_unique_lengths_and_max_held_out():
    # Every length unique, and each sentence alone holds the max count of its n-grams.
    sents = [["a"] * k for k in range(1, 7)] + [["b", "a"] * 3]
    for n in range(1, 6):
        assert self_bleu(sents, n) == pytest.approx(nltk_self_bleu(sents, n), abs=TOL, rel=0)


def test_self_bleu_max_sentences_is_deterministic_subset():
    rng = random.Random(5)
    sents = random_corpus(rng, 80, vocab_size=10)
    a = self_bleu(sents, 3, max_sentences=25, seed=7)
    b = self_bleu(sents, 3, max_sentences=25, seed=7)
    assert a == b
    # It is the self-BLEU of some 25-sentence subset, computed exactly.
    from cot_ray.bleu import select_sentences

    subset = select_sentences(sents, 25, seed=7)
    assert len(subset) == 25
    assert all(s in sents for s in subset)
    assert a == pytest.approx(nltk_self_bleu(subset, 3), abs=TOL, rel=0)
    # A cap at or above the size is a no-op.
    assert self_bleu(sents, 3, max_sentences=1000) == self_bleu(sents, 3)
