"""Every seed of a run derived from its one ``run.seed``, by one function (:func:`derive_seed`),
so that no two random streams share a seed and each is found by name (docs/runtime.md,
"Determinism"). Plain Python and NumPy: no torch, no Ray.

    >>> derive_seed(88, INIT_G)
    88001
"""

from __future__ import annotations

import numpy as np

# The training streams of a run, one id each. Mediators of nested CoT have three streams per
# level: level L > 0 uses 10 * L + (INIT_M, DROPOUT_M, SAMPLE_M) (:func:`level_stream`).
INIT_G, INIT_M, SAMPLE_G, BATCH_G, BATCH_M, DROPOUT_M, SAMPLE_M = range(1, 8)
STREAMS_PER_RUN = 1000  # training stream ids are below this

# Streams outside training, keyed by more than a stream id.
EVALUATION = 0xE7A1  # the evaluation after an iteration: derive_seed(seed, iteration, EVALUATION)
VALIDATION_SET = 0x7A11D  # the oracle's validation sequences: derive_seed(seed, VALIDATION_SET)


def level_stream(level: int, stream: int) -> int:
    """The id of the stream ``stream`` of the mediator at nesting ``level`` (0: M itself)."""
    return stream if level == 0 else 10 * level + stream


def derive_seed(seed: int, *path: int) -> int:
    """The seed of the stream that ``path`` names under the run seed ``seed``.

    A training stream (one id below :data:`STREAMS_PER_RUN`) gets ``seed * 1000 + id``: distinct
    for every run seed and stream, and the seeds every recorded result of this project was
    trained with. Any other path (the evaluation of an iteration, the validation set) is hashed
    with NumPy's ``SeedSequence`` into a 32-bit seed that no training stream of a small run
    seed shares.
    """
    if len(path) == 1 and 0 <= path[0] < STREAMS_PER_RUN:
        return seed * STREAMS_PER_RUN + path[0]
    return int(np.random.SeedSequence([seed, *path]).generate_state(1)[0])
