"""The training schedule: what one iteration asks of the learners, in which order.

:class:`Schedule` talks to the learners only through a :class:`cot_ray.group.LearnerGroup`, so
the same schedule runs in process and on Ray actors with the same numbers. It is one pipeline
with a staleness K: K = 0 is the paper's iteration, G and M in turn (``runtime.schedule``
"sync"), and K >= 1 lets G and M work on different iterations at once ("async").
"""

from __future__ import annotations

from collections import deque
from typing import Optional

from .config import LIKELIHOOD_ALGOS, Config
from .errors import ConfigError
from .group import LearnerGroup


class Schedule:
    """The CoT iteration as a fixed pipeline in which G and M may work on different iterations.

    At iteration t (0-based), with staleness K, batch B and S = ``cot.m_steps``:

    * G draws ``(S + 1) * B`` samples from its current version G_t; the last B feed G's own
      first CoT step now (CoT's generator loss needs on-policy samples), the first S * B are
      queued for M;
    * M takes its S steps on the batch queued K iterations earlier (from G_{t-K}); the first K
      iterations use K batches of S * B drawn from G_0 before iteration 0 ("priming");
    * M's weights reach G every ``cot.sync_every`` M updates: of the snapshots due during an
      iteration's M steps only the last is taken (the weights right after that update), and G
      loads, before its step of iteration t, the newest snapshot taken at the end of an M
      iteration <= t - K;
    * each of G's further ``cot.g_steps - 1`` updates samples anew from the updated G.

    With K = 0 this is the paper's iteration: one batch of fresh G samples feeds the M steps and
    G's first step (G does not change in between, so the chunks are independent draws from the
    current G), and G reads M right after this iteration's M steps. Every result is among the
    returned stats (None for calls without stats), so that the Trainer waits for each of them
    and an error in any of them is raised, never dropped.

    With K >= 1 G's work at iteration t needs only M's iteration t - K and M's work needs only
    G's sampling at t - K, so the two actors compute at the same time, and nothing depends on
    which finishes first: results are deterministic given the seed. ``train/staleness_samples``
    (t minus the G version of M's batch) and ``train/staleness_weights`` (t + 1 minus the M
    version G uses, in iterations) are K once the pipeline is full. In-flight work at a
    checkpoint (the K queued sample batches and the snapshots G has not loaded yet) is stored
    in the checkpoint, not regenerated, so resuming is exact. MLE (and MixCE, TaiLr) has no mediator: its
    iteration is ``cot.g_steps`` updates on real batches; CoT with the exact mediator has none
    to train: its iteration is ``cot.g_steps`` CoT updates, each on B fresh samples.
    """

    def __init__(self, staleness: int = 0):
        self.k = staleness
        self.samples: deque = deque()  # (G version, samples or their ref), oldest first
        self.weights: deque = deque()  # (M version, weights or their ref), oldest first
        self.g_weights_version = 0  # the M version of G's copy of M (0: the initial sync)

    def iteration(self, learners: LearnerGroup, cfg: Config, t: int, m_updates: int) -> tuple[list, int]:
        """Submit iteration ``t``; -> (stats or their refs, the new mediator update count)."""
        c = cfg.cot
        if c.algo in LIKELIHOOD_ALGOS:
            return [learners.g_step_mle() for _ in range(c.g_steps)], m_updates
        if learners.m is None:  # CoT against the exact mediator, which G computes itself
            return [learners.g_step_cot(learners.sample(c.batch_size)) for _ in range(c.g_steps)], m_updates
        B, S = c.batch_size, c.m_steps
        while len(self.samples) < self.k:  # priming, at a fresh start only
            self.samples.append((t, learners.sample(S * B)))
        fake = learners.sample((S + 1) * B)
        self.samples.append((t, fake))
        sample_version, m_fake = self.samples.popleft()
        stats = []
        due = [i for i in range(S) if (m_updates + i + 1) % c.sync_every == 0]  # one snapshot: the last due
        for i in range(S):
            stats.append(learners.m_step(m_fake, i * B, B))
            if due and i == due[-1]:
                self.weights.append((t + 1, learners.m_weights()))
        m_updates += S
        newest = None
        while self.weights and self.weights[0][0] <= t + 1 - self.k:
            newest = self.weights.popleft()
        if newest is not None:
            self.g_weights_version = newest[0]
            stats.append(learners.g_set_mediator(newest[1]))
        stats.append(learners.g_step_cot(fake, S * B, B))
        for _ in range(c.g_steps - 1):
            stats.append(learners.g_step_cot(learners.sample(B)))
        if self.k:
            stats.append({"staleness_samples": float(t - sample_version),
                          "staleness_weights": float(t + 1 - self.g_weights_version)})
        return stats, m_updates

    def state(self, learners: LearnerGroup) -> Optional[dict]:
        """The pipeline's in-flight batches and snapshots, fetched (call between iterations);
        None with K = 0, where nothing is ever in flight between iterations."""
        if not self.k:
            return None
        samples = learners.get([x for _, x in self.samples])
        weights = learners.get([x for _, x in self.weights])
        return {"staleness": self.k, "g_weights_version": self.g_weights_version,
                "samples": [[v, x] for (v, _), x in zip(self.samples, samples)],
                "weights": [[v, x] for (v, _), x in zip(self.weights, weights)]}

    def load_state(self, learners: LearnerGroup, state: Optional[dict]) -> None:
        """Restore the pipeline of a checkpoint (None or empty: an empty pipeline, fresh start)."""
        learners.discard([x for _, x in self.samples] + [x for _, x in self.weights])  # in-flight work made void
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


def make_schedule(cfg: Config) -> Schedule:
    """The schedule ``cfg`` asks for: staleness 0 ("sync") or ``runtime.staleness`` ("async")."""
    return Schedule(cfg.runtime.staleness if cfg.runtime.schedule == "async" else 0)
