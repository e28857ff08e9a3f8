"""Fast corpus-reference BLEU and self-BLEU, as reported by the Texygen benchmark.

Texygen scores each generated sentence with::

    nltk.translate.bleu_score.sentence_bleu(
        references=ALL_test_sentences, hypothesis=sentence,
        weights=(1/n,) * n, smoothing_function=SmoothingFunction().method1)

and reports the mean over generated sentences. Calling nltk that way recounts
every reference's n-grams for every hypothesis (O(#hyp x #ref)). The clipping
counts only depend on the references, so :class:`BleuScorer` precomputes, once
per order k, the maximum count of every k-gram over all references, plus the
sorted distinct reference lengths for the brevity penalty. Scoring a hypothesis
is then O(len(hypothesis) * n) dictionary look-ups.

The arithmetic mirrors nltk 3.x (``modified_precision``, ``closest_ref_length``,
``brevity_penalty``, ``SmoothingFunction.method1``) so results agree with nltk to
floating-point round-off (in practice bit-for-bit):

* p_k = clipped matches / max(1, #hypothesis k-grams); a hypothesis shorter than
  k has 0 k-grams, hence p_k = 0/1.
* if the unigram numerator is 0 the score is 0 (nltk returns early, before smoothing).
* method1: a zero numerator becomes (0 + 0.1) / denominator.
* score = BP * exp(fsum(w * log(p_k))), w = 1/n, BP = 1 if hyp_len > r else
  exp(1 - r / hyp_len), r = the reference length closest to hyp_len (ties -> shorter).

Only the standard library and numpy are used (no ray, no nltk at run time).
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from typing import Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np

Sentence = Sequence[Hashable]  # a tokenised sentence (strings or ints)
NGram = Tuple[Hashable, ...]

EPSILON = 0.1  # nltk SmoothingFunction().epsilon used by method1


def ngram_counts(tokens: Sentence, k: int) -> Counter:
    """Counter of the k-grams (tuples) of ``tokens``; empty if ``len(tokens) < k``."""
    if len(tokens) < k:
        return Counter()
    return Counter(zip(*(tokens[i:] for i in range(k))))


def closest_length(sorted_lengths: Sequence[int], hyp_len: int) -> int:
    """nltk's ``closest_ref_length`` on pre-sorted reference lengths (ties -> shorter)."""
    i = bisect.bisect_left(sorted_lengths, hyp_len)  # sorted_lengths[i] >= hyp_len
    if i < len(sorted_lengths) and sorted_lengths[i] == hyp_len:
        return hyp_len
    candidates = []
    if i > 0:
        candidates.append(sorted_lengths[i - 1])
    if i < len(sorted_lengths):
        candidates.append(sorted_lengths[i])
    return min(candidates, key=lambda r: (abs(r - hyp_len), r))


def brevity_penalty(closest_ref_len: int, hyp_len: int) -> float:
    """nltk's brevity penalty."""
    if hyp_len > closest_ref_len:
        return 1.0
    if hyp_len == 0:
        return 0.0
    return math.exp(1 - closest_ref_len / hyp_len)


def bleu_from_counts(numerators: Sequence[int], denominators: Sequence[int], bp: float) -> float:
    """Sentence BLEU-n from per-order clipped match counts and n-gram totals.

    ``numerators[k-1]`` / ``denominators[k-1]`` are nltk's modified precision for
    order k (denominator already ``max(1, ...)``). Uniform weights 1/n, method1.
    """
    if numerators[0] == 0:
        return 0.0
    n = len(numerators)
    w = 1.0 / n  # Texygen: tuple(1. / ngram for _ in range(ngram))
    log_terms = []
    for num, den in zip(numerators, denominators):
        # float(Fraction(num, den)) == num / den (int true division is correctly rounded).
        p = num / den if num != 0 else (num + EPSILON) / den
        log_terms.append(w * math.log(p))
    return bp * math.exp(math.fsum(log_terms))


class BleuScorer:
    """BLEU of hypotheses against one fixed reference set (e.g. the test corpus).

    ``references``: tokenised sentences (lists of strings or ints). ``max_n``: the
    highest order :meth:`score` will be asked for. The tables are built once in
    O(total reference tokens * max_n) and are reused by every :meth:`score` call.
    """

    def __init__(self, references: Sequence[Sentence], max_n: int = 5):
        if max_n < 1:
            raise ValueError(f"max_n must be >= 1, got {max_n}")
        if len(references) == 0:
            raise ValueError("BleuScorer needs at least one reference sentence")
        self.max_n = max_n
        self.num_references = len(references)
        # max_counts[k-1][gram] = max over references of count(gram in reference)
        self.max_counts: List[Dict[NGram, int]] = []
        for k in range(1, max_n + 1):
            table: Dict[NGram, int] = {}
            for ref in references:
                for gram, c in ngram_counts(ref, k).items():
                    if c > table.get(gram, 0):
                        table[gram] = c
            self.max_counts.append(table)
        # distinct reference lengths, ascending, for the brevity penalty
        self.ref_lengths: List[int] = sorted({len(ref) for ref in references})

    def sentence_bleu(self, hypothesis: Sentence, n: int) -> float:
        """Sentence BLEU-n of one hypothesis against all references (== nltk)."""
        self._check_n(n)
        hyp_len = len(hypothesis)
        numerators, denominators = [], []
        for k in range(1, n + 1):
            table = self.max_counts[k - 1]
            counts = ngram_counts(hypothesis, k)
            numerators.append(sum(min(c, table.get(g, 0)) for g, c in counts.items()))
            denominators.append(max(1, hyp_len - k + 1))
        bp = brevity_penalty(closest_length(self.ref_lengths, hyp_len), hyp_len)
        return bleu_from_counts(numerators, denominators, bp)

    def sentence_scores(self, hypotheses: Sequence[Sentence], n: int) -> List[float]:
        """Per-hypothesis BLEU-n, in input order."""
        return [self.sentence_bleu(h, n) for h in hypotheses]

    def score(self, hypotheses: Sequence[Sentence], n: int) -> float:
        """Mean sentence BLEU-n over ``hypotheses`` (Texygen's BLEU-n)."""
        if len(hypotheses) == 0:
            raise ValueError("score needs at least one hypothesis")
        scores = self.sentence_scores(hypotheses, n)
        return sum(scores) / len(scores)

    @staticmethod
    def self_bleu(
        sentences: Sequence[Sentence], n: int, max_sentences: Optional[int] = None, seed: int = 0
    ) -> float:
        """Self-BLEU-n of ``sentences`` (independent of this scorer's references); see :func:`self_bleu`."""
        return self_bleu(sentences, n, max_sentences=max_sentences, seed=seed)

    def _check_n(self, n: int) -> None:
        if not 1 <= n <= self.max_n:
            raise ValueError(f"n must be in 1..{self.max_n} (the scorer's max_n), got {n}")


def select_sentences(
    sentences: Sequence[Sentence], max_sentences: Optional[int], seed: int = 0
) -> List[Sentence]:
    """A deterministic subset of at most ``max_sentences`` sentences, original order kept."""
    if max_sentences is None or len(sentences) <= max_sentences:
        return list(sentences)
    if max_sentences < 2:
        raise ValueError(f"max_sentences must be >= 2 for self-BLEU, got {max_sentences}")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(sentences), size=max_sentences, replace=False))
    return [sentences[i] for i in idx]


def self_bleu(
    sentences: Sequence[Sentence],
    n: int,
    max_sentences: Optional[int] = None,
    seed: int = 0,
) -> float:
    """Mean BLEU-n of each sentence against all the OTHER sentences (diversity; lower = more diverse).

    Equals ``mean(sentence_bleu(sentences[:i] + sentences[i+1:], sentences[i]))``.
    With ``max_sentences`` a deterministic random subset (``seed``) of that size is
    drawn first and plays both roles, as in Texygen's fast mode (which uses a
    prefix of the list).

    Cost: O(total tokens * n) instead of the naive O(N^2). For every k-gram we keep
    the largest count over all sentences, how many sentences reach it, and the
    second-largest count; leaving sentence i out changes the clipping count of one
    of its k-grams only if i alone attains the maximum, in which case the second
    largest is used. Reference lengths are handled the same way with a length
    histogram.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    sents = select_sentences(sentences, max_sentences, seed)
    if len(sents) < 2:
        raise ValueError("self-BLEU needs at least two sentences")

    # counts[i][k-1]: Counter of sentence i's k-grams
    counts = [[ngram_counts(s, k) for k in range(1, n + 1)] for s in sents]
    # best[k-1][gram] = [max count, #sentences with max count, second-largest count]
    best: List[Dict[NGram, List[int]]] = [{} for _ in range(n)]
    for per_order in counts:
        for k_idx, cnt in enumerate(per_order):
            table = best[k_idx]
            for gram, c in cnt.items():
                entry = table.get(gram)
                if entry is None:
                    table[gram] = [c, 1, 0]
                elif c > entry[0]:
                    entry[2] = entry[0]
                    entry[0] = c
                    entry[1] = 1
                elif c == entry[0]:
                    entry[1] += 1
                elif c > entry[2]:
                    entry[2] = c

    length_hist = Counter(len(s) for s in sents)
    distinct_lengths = sorted(length_hist)

    total = 0.0
    for s, per_order in zip(sents, counts):
        hyp_len = len(s)
        numerators, denominators = [], []
        for k_idx, cnt in enumerate(per_order):
            table = best[k_idx]
            num = 0
            for gram, c in cnt.items():
                top, mult, second = table[gram]
                # max count over the other sentences
                other_max = top if (c < top or mult > 1) else second
                num += min(c, other_max)
            numerators.append(num)
            denominators.append(max(1, hyp_len - k_idx))
        # closest length among the other sentences
        if length_hist[hyp_len] > 1:
            ref_len = hyp_len
        else:
            others = _neighbours(distinct_lengths, hyp_len)
            ref_len = min(others, key=lambda r: (abs(r - hyp_len), r))
        bp = brevity_penalty(ref_len, hyp_len)
        total += bleu_from_counts(numerators, denominators, bp)
    return total / len(sents)


def _neighbours(sorted_distinct: List[int], value: int) -> List[int]:
    """The entries just below and just above ``value`` (which is itself in the list)."""
    i = bisect.bisect_left(sorted_distinct, value)
    out = []
    if i > 0:
        out.append(sorted_distinct[i - 1])
    if i + 1 < len(sorted_distinct):
        out.append(sorted_distinct[i + 1])
    return out
