"""The one seed-derivation function: every recorded run depends on its values, so they are
pinned here, and no two streams of a run may share a seed."""

from __future__ import annotations

from cot_ray import seeds
from cot_ray.seeds import EVALUATION, VALIDATION_SET, derive_seed, level_stream

TRAINING = (seeds.INIT_G, seeds.INIT_M, seeds.SAMPLE_G, seeds.BATCH_G, seeds.BATCH_M, seeds.DROPOUT_M, seeds.SAMPLE_M)


def test_the_seeds_recorded_runs_were_trained_and_evaluated_with():
    assert derive_seed(88, seeds.INIT_G) == 88001  # seed * 1000 + stream
    assert derive_seed(3, level_stream(2, seeds.SAMPLE_M)) == 3027
    assert derive_seed(0, 7, EVALUATION) == 1747166865  # SeedSequence([0, 7, 0xE7A1])
    assert derive_seed(88, VALIDATION_SET) == 1167207265  # the shipped oracle's validation draw


def test_no_two_streams_of_a_run_share_a_seed():
    for run_seed in range(4):
        training = {derive_seed(run_seed, level_stream(level, s)) for level in range(9) for s in TRAINING
                    if level == 0 or s in (seeds.INIT_M, seeds.DROPOUT_M, seeds.SAMPLE_M)}
        assert len(training) == 7 + 8 * 3
        evaluations = {derive_seed(run_seed, it, EVALUATION) for it in range(200)}
        assert len(evaluations) == 200
        assert not (training & evaluations) and derive_seed(run_seed, VALIDATION_SET) not in training | evaluations
    assert derive_seed(1, 7, EVALUATION) == derive_seed(1, 7, EVALUATION)
    assert derive_seed(1, 7, EVALUATION) != derive_seed(2, 7, EVALUATION)
