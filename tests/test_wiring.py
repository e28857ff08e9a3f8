"""The CoT iteration's wiring, checked directly: which batch each learner steps on, when M's
weights reach G, what each nested level is fitted to, and that the steps move the objective.

Each test names the one-line mutation of the schedule or the learners that it catches.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from cot_ray.config_loading import load_config
from cot_ray.data import load_dataset
from cot_ray.group import LearnerGroup, local_group
from cot_ray.learners import GeneratorLearner, MediatorLearner, build_inner
from cot_ray.model_config import LSTMConfig
from cot_ray.models import LSTMLM
from cot_ray.schedule import make_schedule

pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder:
    """``LearnerGroup.call`` that calls in process and records (learner name, method name, args, result)."""

    def __init__(self, w: LearnerGroup):
        self.names = {id(w.g): "g", id(w.m): "m"}
        self.calls: list = []

    def __call__(self, learner, method, *args):
        out = method(learner, *args)
        self.calls.append((self.names[id(learner)], method.__name__, args, out))
        return out


def _recorded(cfg):
    """The learners of ``cfg`` in process, their calls recorded; -> (group, recorder, data,
    ``iteration(t, m_updates)`` of the run's schedule)."""
    data = load_dataset(cfg.data)
    w = local_group(cfg, data)
    w.sync_mediator()
    rec = Recorder(w)
    w.call = rec
    schedule = make_schedule(cfg)
    return w, rec, data, lambda t, m_updates: schedule.iteration(w, cfg, t, m_updates)


def _rows_in(rows: torch.Tensor, pool: torch.Tensor) -> bool:
    return all(bool((pool == r).all(dim=1).any()) for r in rows)


def test_m_steps_on_real_plus_g_samples_and_g_on_the_chunk_m_did_not_see(tiny):
    """Catches: M fitted to fake + fake (or real + real); G stepping on a chunk M used; M's
    chunks overlapping. With m_steps 2: G samples 3B; M takes chunks 0 and 1, each with a fresh
    real batch; G's own step takes chunk 2."""
    cfg = tiny("cot.m_steps=2", "cot.g_steps=1", "cot.sync_every=1")
    w, rec, data, iteration = _recorded(cfg)
    B = cfg.cot.batch_size
    fits: list = []
    real_fit = w.m.fit

    def spy(groups, names=None):
        fits.append([(x.clone(), wt) for x, wt in groups])
        return real_fit(groups, names)

    w.m.fit = spy
    iteration(0, 0)
    (fake,) = [out for who, method, _, out in rec.calls if method == "sample"]
    assert fake.shape == (3 * B, 20)
    assert len(fits) == 2
    for i, groups in enumerate(fits):
        (real, w_real), (fake_i, w_fake) = groups
        assert (w_real, w_fake) == (0.5, 0.5)
        assert _rows_in(real, data.train)  # the real half: training sequences
        assert torch.equal(fake_i, fake[i * B:(i + 1) * B])  # the fake half: G's i-th chunk
    assert not torch.equal(fits[0][0][0], fits[1][0][0])  # a fresh real batch per M step
    (g_step,) = [args for who, method, args, _ in rec.calls if method == "step_cot"]
    assert g_step[1:] == (2 * B, B)  # G steps on the last chunk, which M never saw


@pytest.mark.parametrize("sync_every", [1, 3])
def test_m_weights_reach_g_every_sync_every_m_updates(tiny, sync_every):
    """Catches: a dropped or mistimed M -> G weight sync. After each M update G's copy of M must
    equal M exactly when the update count is a multiple of sync_every, and must be stale otherwise."""
    cfg = tiny("cot.m_steps=1", f"cot.sync_every={sync_every}")
    w, rec, _, iteration = _recorded(cfg)
    m_updates = 0
    for t in range(6):
        _, m_updates = iteration(t, m_updates)
        same = all(torch.equal(a, b) for a, b in zip(w.g.mediator.state_dict().values(),
                                                      w.m.model.state_dict().values()))
        assert same == (m_updates % sync_every == 0), (t, m_updates)
    syncs = [c for c in rec.calls if c[1] == "set_mediator_weights"]
    assert len(syncs) == 6 // sync_every


# ----------------------------------------------------------------------------- the steps move the objective

V, T = 3, 3
ALL = torch.tensor(list(itertools.product(range(V), repeat=T)))


def _exact_kl(g: LSTMLM, m: LSTMLM) -> float:
    """Sequence-level KL(G || M) by enumerating all V^T sequences."""
    with torch.no_grad():
        lg, lm = g.sequence_log_prob(ALL).double(), m.sequence_log_prob(ALL).double()
    return float((lg.exp() * (lg - lm)).sum())


def test_g_cot_steps_drive_its_kl_to_a_fixed_mediator_down():
    """Catches: G stepping against anything but its copy of M (or up the KL): 150 CoT steps
    against a fixed M take the exact KL(G || M) from above 0.3 to below a third of it."""
    small = ["emb_dim=4", "hidden_dim=8", "init_std=1.0"]
    cfg = load_config(None, [f"generator.{kv}" for kv in small] + [f"mediator.{kv}" for kv in small]
                      + ["g_optim.lr=0.03", "cot.batch_size=64"])
    g = GeneratorLearner(cfg, V, T)
    g.build("cpu")
    m = LSTMLM(V, LSTMConfig(emb_dim=4, hidden_dim=8, init_std=1.0))
    m.init_weights(torch.Generator().manual_seed(7))
    g.set_mediator_weights({k: v.clone() for k, v in m.state_dict().items()})
    before = _exact_kl(g.model, m)
    for _ in range(150):
        g.step_cot(g.sample(64))
    after = _exact_kl(g.model, m)
    assert before > 0.3
    assert after < before / 3


def test_m_steps_fit_the_balanced_mixture():
    """Catches: M fitted to one half only (or with other weights): 300 steps on samples of P
    and G bring M's exact cross-entropy with (P + G) / 2 within 0.05 nats of the mixture's entropy."""
    small = ["emb_dim=8", "hidden_dim=16", "dropout=0.0", "init_std=1.0"]
    cfg = load_config(None, [f"mediator.{kv}" for kv in small] + ["m_optim.lr=0.01", "cot.batch_size=64"])
    P, G = (LSTMLM(V, LSTMConfig(emb_dim=4, hidden_dim=8, init_std=1.5)) for _ in range(2))
    P.init_weights(torch.Generator().manual_seed(1))
    G.init_weights(torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(3)
    m = MediatorLearner(cfg, V, T)
    m.build("cpu", P.sample(20000, T, gen))
    for _ in range(300):
        m.step(G.sample(64, T, gen))
    with torch.no_grad():
        mix = 0.5 * (P.sequence_log_prob(ALL).exp() + G.sequence_log_prob(ALL).exp()).double()
        lm = m.model.sequence_log_prob(ALL).double()
    entropy = float(-(mix * mix.log()).sum())
    cross = float(-(mix * lm).sum())
    assert cross - entropy < 0.05  # = KL((P + G) / 2 || M)


# ----------------------------------------------------------------------------- nested CoT

def test_the_inner_mediator_fits_quarter_real_quarter_fake_half_m(tiny):
    """Catches: wrong weights in nested CoT's inner mixture (the convergence tests cannot see
    them): M's inner learner gets M's real and fake halves at weight 1/4 each and M's own
    samples at 1/2; one level further down, every weight halves again and M2's samples take 1/2."""
    cfg = tiny("nested.enabled=true", "nested.depth=2", "nested.m_steps=1", "inner_mediator.emb_dim=8",
               "inner_mediator.hidden_dim=8")
    data = load_dataset(cfg.data)
    args = (cfg, data.vocab_size, data.seq_len, data.eos_id)
    inner = build_inner(*args, "cpu")
    seen: dict = {1: [], 2: []}
    for level, learner in ((1, inner), (2, inner.inner)):
        real_fit = learner.fit

        def spy(groups, names=None, level=level, real_fit=real_fit):
            seen[level].append([(x.clone(), wt) for x, wt in groups])
            return real_fit(groups, names)

        learner.fit = spy
    m = MediatorLearner(*args)
    m.build("cpu", data.train, inner)
    fake = torch.randint(0, data.vocab_size, (cfg.cot.batch_size, data.seq_len))
    m.step(fake)
    (level1,) = seen[1]
    assert [wt for _, wt in level1] == [0.25, 0.25, 0.5]
    real, fake_seen, own = (x for x, _ in level1)
    assert _rows_in(real, data.train) and torch.equal(fake_seen, fake)
    assert not _rows_in(own, data.train)  # M's own samples, not real data
    (level2,) = seen[2]
    assert [wt for _, wt in level2] == [0.125, 0.125, 0.25, 0.5]
    assert torch.equal(level2[0][0], real) and torch.equal(level2[1][0], fake) and torch.equal(level2[2][0], own)


@pytest.mark.parametrize("schedule", ["sync", "async"])
def test_an_iteration_ships_at_most_one_weight_snapshot_the_newest_due(tiny, schedule):
    """Catches: shipping every due snapshot (sync_every 1, m_steps 3: three copies of M's
    weights per iteration, of which G uses the last). Each iteration asks M for its weights
    once, right after its last M step, and G ends with exactly M's weights (sync)."""
    cfg = tiny("cot.m_steps=3", "cot.sync_every=1", f"runtime.schedule={schedule}", "runtime.staleness=0")
    w, rec, _, iteration = _recorded(cfg)
    m_updates = 0
    for t in range(3):
        start = len(rec.calls)
        _, m_updates = iteration(t, m_updates)
        calls = [(who, method) for who, method, _, _ in rec.calls[start:]]
        assert calls.count(("m", "get_weights")) == 1
        steps = [i for i, c in enumerate(calls) if c == ("m", "step")]
        assert calls.index(("m", "get_weights")) > steps[-1]
        assert all(torch.equal(a, b) for a, b in zip(w.g.mediator.state_dict().values(),
                                                      w.m.model.state_dict().values()))
    assert m_updates == 9


def test_the_exact_mediator_is_the_mixture_of_the_oracle_and_g_as_it_is_now(tiny, monkeypatch):
    """Catches: the exact mediator built from anything but the oracle and the current G (a stale
    copy of G, M's network, the per-step average of the two without prefix weights); an
    iteration that samples for a mediator or steps on stale samples. With g_steps 2 an
    iteration is two CoT steps, each on B fresh samples of the G that steps."""
    from cot_ray.models.losses import cot_generator_loss, exact_mixture_log_probs
    from cot_ray.models.oracle import build_oracle

    cfg = tiny("cot.mediator=exact", "cot.g_steps=2")
    w, rec, data, iteration = _recorded(cfg)
    assert w.m is None
    B, oracle = cfg.cot.batch_size, build_oracle()
    want = []
    real_step = GeneratorLearner.step_cot

    def step_cot(self, fake, start=0, size=None):  # the reference loss of the G about to step
        with torch.no_grad():
            g_logits = self.model.eval()(fake)
            want.append(cot_generator_loss(g_logits, exact_mixture_log_probs(oracle(fake), g_logits, fake))[0].item())
        return real_step(self, fake, start, size)

    monkeypatch.setattr(GeneratorLearner, "step_cot", step_cot)
    iteration(0, 0)
    assert [method for _, method, _, _ in rec.calls] == ["sample", "step_cot", "sample", "step_cot"]
    samples = [out for _, method, _, out in rec.calls if method == "sample"]
    assert [s.shape[0] for s in samples] == [B, B] and not torch.equal(samples[0], samples[1])
    kls = [out["g_kl"] for _, method, _, out in rec.calls if method == "step_cot"]
    assert kls == pytest.approx(want, rel=1e-5) and want[0] != pytest.approx(want[1], rel=1e-6)


@pytest.mark.parametrize("algo,keys", [("mixce", {"mixce.eta": 0.2}), ("tailr", {"tailr.gamma": 0.5,
                                                                                  "tailr.min_weight": 0.3})])
def test_the_rivals_step_on_real_batches_with_their_configured_weights(tiny, algo, keys):
    """Catches: a rival stepping on G's samples instead of real data, or ignoring its config keys
    (plain MLE weights, another algorithm's): its step's loss is the reference weighted NLL of
    the real batch under the configured weights."""
    from cot_ray.learners import token_weighting
    from cot_ray.models.losses import mixce_weights, tailr_weights, weighted_mle_loss

    cfg = tiny(f"cot.algo={algo}", *(f"{k}={v}" for k, v in keys.items()))
    w, rec, data, iteration = _recorded(cfg)
    fn = token_weighting(cfg)
    p = torch.tensor([0.05, 0.5])
    direct = mixce_weights(p, 0.2) if algo == "mixce" else tailr_weights(p, 0.5, 0.3)
    assert torch.equal(fn(p), direct)
    state = w.g.batches.state()
    real = w.g.batches.next()
    w.g.batches.load_state(state)
    with torch.no_grad():
        ref, ref_stats = weighted_mle_loss(w.g.model.eval()(real), real, fn)
    iteration(0, 0)
    assert [method for _, method, _, _ in rec.calls] == ["step_mle"]
    (stats,) = [out for _, _, _, out in rec.calls]
    assert stats["g_loss"] == pytest.approx(ref.item(), rel=1e-5)
    assert stats["g_weight"] == pytest.approx(ref_stats["weight"].item(), rel=1e-5)
