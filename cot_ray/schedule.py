"""The training schedules: what one iteration asks of the learners, in which order.

A schedule talks to the learners only through ``Learners.call`` / ``Learners.get`` (see
:mod:`cot_ray.loop`), so the same schedule runs in process (method calls) and on Ray actors
(``.remote`` calls and ``ray.get``), with the same numbers.

- :func:`schedule_iteration`, the sync schedule: the paper's iteration, G and M in turn.
- :class:`PipelineSchedule`, the async schedule: G and M work on different iterations at once,
  with staleness exactly K; deterministic, and K = 0 is the sync schedule.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Optional

from .config import Config, ConfigError

if TYPE_CHECKING:  # only for annotations: loop imports this module
    from .loop import Learners


def schedule_iteration(w: Learners, cfg: Config, m_updates: int) -> tuple[list, int]:
    """Submit one training iteration; return the stats (or futures of them) and the new M update count.

    Every call's result is among the returned stats (None for calls without stats), so that the
    Trainer waits for each of them and an error in any of them is raised, never dropped.

    CoT: one batch of ``(m_steps + 1) * B`` fresh G samples feeds the ``m_steps`` mediator
    updates and the first generator update (G does not change in between, so the chunks are
    independent draws from the current G); M's weights reach G every ``sync_every`` updates
    (one snapshot per iteration at most: G uses the newest due one); each further generator
    update samples anew from the updated G.
    """
    B = cfg.cot.batch_size
    if cfg.cot.algo == "mle":
        return [w.call(w.g, "step_mle") for _ in range(cfg.cot.g_steps)], m_updates
    stats = []
    fake = w.call(w.g, "sample", B * (cfg.cot.m_steps + 1))
    # G reads its copy of M only at its own step, after all of this iteration's M steps: of the
    # syncs due during them, only the last one is shipped (the weights right after that update).
    due = [i for i in range(cfg.cot.m_steps) if (m_updates + i + 1) % cfg.cot.sync_every == 0]
    for i in range(cfg.cot.m_steps):
        stats.append(w.call(w.m, "step", fake, i * B, B))
        if due and i == due[-1]:
            stats.append(w.call(w.g, "set_mediator_weights", w.call(w.m, "get_weights")))  # None: waited for
    m_updates += cfg.cot.m_steps
    stats.append(w.call(w.g, "step_cot", fake, cfg.cot.m_steps * B, B))
    for _ in range(cfg.cot.g_steps - 1):
        stats.append(w.call(w.g, "step_cot", w.call(w.g, "sample", B)))
    return stats, m_updates


class PipelineSchedule:
    """The async schedule: a fixed pipeline in which G and M work on different iterations at once.

    At iteration t (0-based), with staleness K, batch B and S = ``cot.m_steps``:

    * G draws ``(S + 1) * B`` samples from its current version G_t; the last B feed G's own
      first CoT step now (CoT's generator loss needs on-policy samples), the first S * B are
      queued for M;
    * M takes its S steps on the batch queued K iterations earlier (from G_{t-K}); the first K
      iterations use K batches of S * B drawn from G_0 before iteration 0 ("priming");
    * every ``cot.sync_every`` M updates, M publishes its weights; G loads, before its step of
      iteration t, the newest snapshot taken at the end of an M iteration <= t - K.

    G's work at iteration t needs only M's iteration t - K and M's work needs only G's sampling
    at t - K, so for K >= 1 the two actors compute at the same time, and nothing depends on
    which finishes first: results are deterministic given the seed. ``train/staleness_samples``
    (t minus the G version of M's batch) and ``train/staleness_weights`` (t + 1 minus the M
    version G uses, in iterations; 0 in the sync schedule) are K once the pipeline is full.
    K = 0 is exactly the sync schedule. MLE has no mediator and runs the sync schedule.

    In-flight work at a checkpoint (the K queued sample batches and the snapshots G has not
    loaded yet) is stored in the checkpoint, not regenerated, so resuming is exact.
    """

    def __init__(self, staleness: int):
        self.k = staleness
        self.samples: deque = deque()  # (G version, samples or their ref), oldest first
        self.weights: deque = deque()  # (M version, weights or their ref), oldest first
        self.g_weights_version = 0  # the M version of G's copy of M (0: the initial sync)

    def iteration(self, w: Learners, cfg: Config, t: int, m_updates: int) -> tuple[list, int]:
        """Submit iteration ``t``; -> (stats or their refs, the new mediator update count)."""
        c = cfg.cot
        if c.algo == "mle" or w.m is None:
            return schedule_iteration(w, cfg, m_updates)
        B, S = c.batch_size, c.m_steps
        while len(self.samples) < self.k:  # priming, at a fresh start only
            self.samples.append((t, w.call(w.g, "sample", S * B)))
        fake = w.call(w.g, "sample", (S + 1) * B)
        self.samples.append((t, fake))
        sample_version, m_fake = self.samples.popleft()
        stats = []
        due = [i for i in range(S) if (m_updates + i + 1) % c.sync_every == 0]  # one snapshot: the last due
        for i in range(S):
            stats.append(w.call(w.m, "step", m_fake, i * B, B))
            if due and i == due[-1]:
                self.weights.append((t + 1, w.call(w.m, "get_weights")))
        m_updates += S
        newest = None
        while self.weights and self.weights[0][0] <= t + 1 - self.k:
            newest = self.weights.popleft()
        if newest is not None:
            self.g_weights_version = newest[0]
            stats.append(w.call(w.g, "set_mediator_weights", newest[1]))
        stats.append(w.call(w.g, "step_cot", fake, S * B, B))
        for _ in range(c.g_steps - 1):
            stats.append(w.call(w.g, "step_cot", w.call(w.g, "sample", B)))
        stats.append({"staleness_samples": float(t - sample_version),
                      "staleness_weights": float(t + 1 - self.g_weights_version)})
        return stats, m_updates

    def state(self, w: Learners) -> dict:
        """The pipeline's in-flight batches and snapshots, fetched (call between iterations)."""
        samples = w.get([x for _, x in self.samples])
        weights = w.get([x for _, x in self.weights])
        return {"staleness": self.k, "g_weights_version": self.g_weights_version,
                "samples": [[v, x] for (v, _), x in zip(self.samples, samples)],
                "weights": [[v, x] for (v, _), x in zip(self.weights, weights)]}

    def load_state(self, w: Learners, state: Optional[dict]) -> None:
        """Restore the pipeline of a checkpoint (None or empty: an empty pipeline, fresh start)."""
        w.discard([x for _, x in self.samples] + [x for _, x in self.weights])  # in-flight work made void
        if not state:
            self.samples.clear()
            self.weights.clear()
            self.g_weights_version = 0
            return
        if int(state["staleness"]) != self.k:
            raise ConfigError(f"config key 'runtime.staleness' is {self.k} but the checkpoint's pipeline was "
                              f"built with {state['staleness']}: resume with the run's own staleness")
        self.samples = deque((int(v), x) for v, x in state["samples"])
        self.weights = deque((int(v), x) for v, x in state["weights"])
        self.g_weights_version = int(state["g_weights_version"])


def make_schedule(cfg: Config) -> Optional[PipelineSchedule]:
    """The schedule ``cfg`` asks for: None (the sync :func:`schedule_iteration`) or the async pipeline."""
    return PipelineSchedule(cfg.runtime.staleness) if cfg.runtime.schedule == "async" else None
