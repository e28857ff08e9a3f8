"""The learners of a run, called with typed methods, in this process or as Ray actors.

A :class:`LearnerGroup` holds the generator learner and the mediator learner (None for MLE) and
is what the schedules (:mod:`cot_ray.schedule`) and the Trainer (:mod:`cot_ray.loop`) talk to:
``learners.sample(n)``, ``learners.m_step(fake, start, size)``, ``learners.g_step_cot(...)``... Each method names
the learner method it runs (``GeneratorLearner.sample``), and every call goes through one
dispatch point, :meth:`LearnerGroup.call`: here a plain method call whose result is the value;
in :class:`cot_ray.runtime.ActorGroup` a remote call on an actor whose result is an object ref
that :meth:`get` resolves. The schedules never know which, so "actors with the sync schedule ==
the in-process loop" holds bitwise (RLlib's LearnerGroup has the same shape).

The group also carries what a runtime adds to the loop: telling a lost worker from an ordinary
error (:meth:`is_failure`), making the learners callable again after one (:meth:`recover`), and
evaluating (:meth:`evaluate`: here, or where the generator lives).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from .checkpoint import G, M, learner_part
from .config import Config, learned_mediator
from .data import Dataset
from .learners import GeneratorLearner, MediatorLearner
from .metrics import Evaluator
from .rundir import build_models


class LearnerGroup:
    """G and M (None for MLE) of a run of ``cfg`` over ``vocab_size`` tokens, called in this process."""

    def __init__(self, cfg: Config, vocab_size: int, g: Any, m: Any = None, where: str = "in process"):
        self.cfg, self.vocab_size = cfg, vocab_size
        self.g, self.m = g, m
        self.where = where  # where the learners are, for the run's first lines

    # -- dispatch: the one place a learner method is called
    def call(self, learner: Any, method: Callable, *args) -> Any:
        """Run ``method`` (a learner class's method, e.g. ``GeneratorLearner.sample``) on
        ``learner``; -> its result (a future of it in an actor group)."""
        return method(learner, *args)

    def get(self, x: Any) -> Any:
        """The values of results (a result or a list of them); in process they are values."""
        return x

    def discard(self, futures: list) -> None:
        """Results that a worker failure made void (in process there are none)."""

    # -- the generator
    def sample(self, n: int) -> Any:
        return self.call(self.g, GeneratorLearner.sample, n)

    def g_step_cot(self, fake: Any, start: int = 0, size: Optional[int] = None) -> Any:
        return self.call(self.g, GeneratorLearner.step_cot, fake, start, size)

    def g_step_mle(self) -> Any:
        return self.call(self.g, GeneratorLearner.step_mle)

    def g_set_mediator(self, weights: Any) -> Any:
        return self.call(self.g, GeneratorLearner.set_mediator_weights, weights)

    # -- the mediator
    def m_step(self, fake: Any, start: int = 0, size: Optional[int] = None) -> Any:
        return self.call(self.m, MediatorLearner.step, fake, start, size)

    def m_weights(self) -> Any:
        return self.call(self.m, MediatorLearner.get_weights)

    # -- both
    def sync_mediator(self) -> None:
        """G's copy of M becomes M (a run starts so); waits for it."""
        if self.m is not None:
            self.get(self.g_set_mediator(self.m_weights()))

    def weights(self) -> tuple[dict, Optional[dict]]:
        """CPU copies of G's and M's parameters (M's None for MLE)."""
        refs = [self.call(self.g, GeneratorLearner.get_weights),
                self.call(self.m, MediatorLearner.get_weights) if self.m is not None else None]
        g, m = self.get(refs)
        return g, m

    def state(self) -> dict:
        """Both learners' states (models, optimizers, RNG streams, batch samplers)."""
        refs = [self.call(self.g, GeneratorLearner.state),
                self.call(self.m, MediatorLearner.state) if self.m is not None else None]
        g, m = self.get(refs)
        return {G: g, M: m}

    def load_state(self, state: dict) -> None:
        refs = [self.call(self.g, GeneratorLearner.load_state, learner_part(state, G))]
        if self.m is not None:
            refs.append(self.call(self.m, MediatorLearner.load_state, learner_part(state, M)))
        self.get(refs)

    # -- what a runtime adds
    def is_failure(self, exc: BaseException) -> bool:
        """Whether ``exc`` means a worker was lost (in process: never)."""
        return False

    def recover(self) -> None:
        """Make the learners callable again after a failure (in process: nothing to do)."""

    def evaluate(self, evaluator: Evaluator, seed: int) -> dict:
        """The evaluation of the current G (and M): here, copies of both on ``run.device``."""
        g_w, m_w = self.weights()
        g, m = build_models(self.cfg, self.vocab_size, g_w, m_w, self.cfg.run.device)
        return evaluator.evaluate(g, m, seed)


def local_group(cfg: Config, data: Dataset, device: Optional[str] = None) -> LearnerGroup:
    """Both learners (and a nested mediator's inner levels) built in this process on ``device``
    (default ``run.device``)."""
    device = device or cfg.run.device
    args = (cfg, data.vocab_size, data.seq_len, data.eos_id)
    g = GeneratorLearner(*args)
    g.build(device, data.train)
    m = None
    if learned_mediator(cfg):
        m = MediatorLearner(*args)
        m.build_here(device, data.train)
    return LearnerGroup(cfg, data.vocab_size, g, m, where=f"learners in this process on {device}")
