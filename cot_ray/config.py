"""The configuration's schema: one dataclass tree whose fields document themselves, and its
validation, whose errors are one line naming the key. Reading and writing it (YAML, ``--set``
overrides) is :mod:`cot_ray.config_loading`; the rules a run's budget follows (when to stop,
``--smoke``, evaluations sized to the budget) are :mod:`cot_ray.run_policy`::

    >>> cfg = Config().validate()
    >>> cfg.cot.m_steps
    1
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import check
from .model_config import LSTMConfig, ModelConfig

# Rows per chunk of the fused losses (models/fused.py), the default of ``run.chunk_rows``. The
# chunk size fixes the order of the sums over rows (the weight and bias gradients), so it is part
# of the arithmetic: it is a number, never derived from the thread count, and the same value gives
# the same bits. Measured with benchmarks/fused_losses.py on the 2-core dev CPU (V 5,000, float32:
# a 256-row slab is 5 MB): on one thread 65, 128 and 256 rows were within noise; on two, 262 rows
# beat 131 by 5-15% and tied with 524 (fewer, larger chunks mean fewer parallel regions, each of
# which can stall on a descheduled thread when the cores are shared).
DEFAULT_CHUNK_ROWS = 256


@dataclass
class OptimConfig:
    """Adam with global-norm gradient clipping."""

    lr: float = 1e-3  # Adam learning rate
    beta1: float = 0.9  # Adam beta1
    beta2: float = 0.95  # Adam beta2 (the authors use 0.95, not 0.999)
    grad_clip: float = 5.0  # clip gradients to this global L2 norm; 0 disables clipping
    weight_decay: float = 0.0  # decoupled (AdamW): each step multiplies the weights by 1 - lr * weight_decay


ALGOS = ("cot", "mle", "mixce", "tailr")
# The algorithms that fit G to the training data directly, one weighted NLL per token: no mediator.
LIKELIHOOD_ALGOS = ("mle", "mixce", "tailr")
MEDIATORS = ("learned", "exact")


@dataclass
class CoTConfig:
    """The schedule of one training iteration."""

    # "cot" (cooperative training), "mle" (maximum likelihood), or MLE's reweighted rivals "mixce"
    # and "tailr" (their keys: the sections mixce and tailr)
    algo: str = "cot"
    # cot: "learned", M trained on real and G's samples (the paper's CoT); "exact" (oracle data
    # only), no M is learned: G's step uses the exact mixture (P + G) / 2 computed from the oracle
    # and G, CoT with a perfect mediator, its ceiling
    mediator: str = "learned"
    batch_size: int = 64  # sequences per step; the mediator sees this many real plus as many generated
    g_steps: int = 1  # generator updates per iteration
    m_steps: int = 1  # mediator updates per iteration (cot only)
    sync_every: int = 1  # copy mediator weights to the generator every this many mediator updates


@dataclass
class MixCEConfig:
    """MixCE (Zhang et al., ACL 2023), ``--algo mixce``: a mix of the forward cross-entropy (MLE)
    and the reverse one, trained as each data token's NLL weighted by ``eta + (1 - eta) q``, q
    the model's own probability of the token, held constant."""

    eta: float = 0.5  # share of the forward cross-entropy, in [0, 1]: 1 is MLE; the paper tunes it per task


@dataclass
class TaiLrConfig:
    """TaiLr (Ji et al., ICLR 2023), ``--algo tailr``: total-variation-motivated MLE, each data
    token's NLL weighted by ``p / (gamma + (1 - gamma) p)``, p the model's own probability of the
    token, held constant and clamped to [min_weight, 1]. Defaults: the paper's synthetic setup."""

    gamma: float = 1e-7  # the proxy distribution's mixing coefficient, in [0, 1]; 0 is MLE (weight 1)
    min_weight: float = 0.2  # lower clamp of the weights, in [0, 1]: a token's weight never falls below it


@dataclass
class DataConfig:
    """Where training and test sequences come from.

    Text sources ("coco", "text") read one sentence per line, split on whitespace, build the
    vocabulary from the training file (ids 0 <pad>, 1 <eos>, 2 <unk>, then words by count) and
    encode every sentence as its words, <eos>, then <pad> up to ``max_len``. Losses and NLL_test
    count each sentence's words and its <eos>, never the padding. A sentence with more than
    ``max_len - 1`` words is cut to its first ``max_len`` words (it then has no <eos>); the
    number cut is printed when the run starts. Test words outside the vocabulary become <unk>;
    a test file with more than half of its tokens unknown is rejected as another corpus.
    A run saves its vocabulary as RUN_DIR/vocab.json and records it in ``vocab_path`` (and the
    resolved ``max_len``), so that eval, sample and resume keep the ids of training.
    """

    source: str = "oracle"  # "oracle": SeqGAN oracle; "coco": bundled COCO captions; "text": train_path/test_path
    num_train: int = 9984  # oracle sequences in the training set
    num_test: int = 9984  # oracle sequences in the held-out test set
    seed: int = 88  # seed of the oracle data sets (fixed, so every run sees the same data)
    shuffle: bool = True  # reshuffle every epoch; False: fixed batches in file order, cycled (the authors' loader)
    # validation sequences for model selection (oracle: a draw of their own; text: held out of the
    # training file by seed); -1: 2048 (text: 5% of the training sentences, at most 2048); 0: none
    num_valid: int = -1
    cache_dir: str = ""  # where generated data sets are cached; "" means ~/.cache/cot-ray
    train_path: str = ""  # text: training file, one sentence per line (UTF-8)
    test_path: str = ""  # text: held-out file, one sentence per line, for NLL_test and BLEU references
    max_len: int = 0  # text: tokens per sequence, <eos> included; 0: longest training sentence + 1
    min_count: int = 1  # text: words seen fewer times in the training file become <unk>
    max_vocab: int = 0  # text: vocabulary size cap, the 3 special tokens included; 0: no cap
    vocab_path: str = ""  # text: use this saved vocabulary (vocab.json) instead of building one; set by a run


DATA_SOURCES = ("oracle", "coco", "text")
SELECT_METRICS = ("auto", "nll_valid", "balanced_valid", "none")
TEXT_SOURCES = ("coco", "text")  # sources of real sentences: EOS and padding, BLEU metrics


@dataclass
class EvalConfig:
    """Periodic evaluation of the generator."""

    every: int = 500  # evaluate every this many iterations (and at the end); 0 only at the end
    num_samples: int = 9984  # generator samples for NLL_oracle and JSD (the paper uses 9,984)
    num_test: int = 9984  # held-out sequences for NLL_test (oracle: at most data.num_test; text: all if fewer)
    bleu_samples: int = 1000  # text: generated sentences scored for BLEU-2..5 and self-BLEU-2..5
    num_train: int = 2048  # training sequences scored for nll_train and m_nll_train (memorisation); 0: none
    # actors: "generator" evaluates in G's process, on its device; "driver" in the driver;
    # "auto": in G's process when G has a GPU
    where: str = "auto"
    # the metric that picks the best checkpoint (best.pt): "nll_valid", "balanced_valid" (oracle:
    # nll_oracle + nll_valid), "none"; "auto": MLE, MixCE, TaiLr nll_valid, CoT balanced_valid (text: nll_valid)
    select: str = "auto"


@dataclass
class RunConfig:
    """Bookkeeping of one run."""

    seed: int = 0  # seed of model initialisation, sampling and dropout
    iters: int = 2000  # total training iterations
    minutes: float = 0.0  # if > 0, stop after this many minutes of training (whichever comes first)
    # early stopping: stop once this many evaluations in a row have not improved the selection
    # metric (eval.select: MLE its validation NLL); the best checkpoint is best.pt; 0: never
    patience: int = 0
    logdir: str = "runs"  # runs are created as LOGDIR/NAME
    name: str = ""  # run directory name; "" means ALGO-YYYYmmdd-HHMMSS
    checkpoint_every: int = 500  # write a checkpoint every this many iterations (and at the end)
    log_every: int = 50  # write train/ and time/ scalars every this many iterations (and at the end)
    # print a progress line (elapsed, it/s, ETA, latest losses) every this many seconds of wall
    # clock (and at the end); 0: one every run.log_every iterations
    progress_s: float = 5.0
    device: str = "cpu"  # torch device of the in-process loop: "cpu", "cuda", "cuda:1", ...
    threads: int = 0  # torch intra-op threads of the run's own process; 0: the CPUs other work leaves free
    threads_host: str = ""  # set by a run that chose run.threads itself: the machine it chose on (resumed elsewhere: again)
    chunk_rows: int = DEFAULT_CHUNK_ROWS  # rows per slab of the fused losses; fixes the order of their sums (the bits)
    # "fp32", or "bf16": the models' forward (and backward) passes in training steps run in bfloat16
    # autocast; weights, optimizer states and the losses' reductions stay float32, and sampling and
    # evaluation run in float32
    precision: str = "fp32"


@dataclass
class RuntimeConfig:
    """Where the learners live and how their work interleaves (``cot-ray train`` flags)."""

    mode: str = "actors"  # "actors": G and M as Ray actors; "local": both in this process, no Ray
    address: str = ""  # Ray cluster to join ("auto", "ray://HOST:PORT"); "" starts a local Ray
    schedule: str = "sync"  # "sync": the in-process loop, exactly; "async": G and M compute at once
    staleness: int = 1  # async: M trains on samples, and G uses M weights, this many iterations old
    spread: bool = False  # place G and M on different nodes (STRICT_SPREAD) instead of packing them
    gpus_per_worker: float = -1.0  # GPUs for each of G and M; -1: one each if the cluster has two, else 0
    # CPUs for each worker (G, M, the inner actor), and its torch threads (at least one); 0: one each,
    # or an equal share when a cluster without an autoscaler has fewer CPUs than workers (a laptop)
    cpus_per_worker: float = 0.0
    max_restarts: int = 3  # times Ray restarts a dead worker; the run then resumes from its last checkpoint
    inner_actor: bool = False  # nested: run the inner mediators in their own actor (own GPU when there are enough)
    placement_timeout_s: float = 60.0  # give up (with an error) if the workers cannot be placed in this time
    # "always": an autoscaler can add nodes (ask it, and wait); "never"; "auto": when one runs on this
    # machine (the head of a `ray up` cluster, where `ray job submit` runs drivers)
    autoscaling: str = "auto"
    scale_timeout_s: float = 900.0  # with an autoscaler: how long to wait for new nodes (at start, after a lost node)


@dataclass
class NestedConfig:
    """Nested CoT (``--nested``): the mediator is trained with CoT instead of MLE.

    M's target is the balanced mixture of real data and G's samples. In nested mode M plays
    the generator of an inner CoT game on that mixture: an inner mediator (``inner_mediator``)
    learns the mixture of "mixture samples" and M's own samples by MLE, and M takes CoT
    generator steps against it. With ``depth`` > 1 the inner mediator is itself trained the
    same way, one level further down; every level uses ``inner_mediator``, ``inner_optim``
    and the ratios below.
    """

    enabled: bool = False  # train the mediator with an inner CoT game (``--nested``)
    depth: int = 1  # inner levels (``--nest-depth``); 1: one inner mediator
    m_steps: int = 1  # inner-mediator updates per mediator step
    g_steps: int = 1  # CoT updates of the mediator per mediator step


def _default_mediator() -> ModelConfig:
    # Dropout on the LSTM's inputs (0.25) as well as its outputs (0.5): with output dropout alone
    # M memorises the 9,984 training sequences and G turns with it after ~7,500 iterations
    # (docs/results.md, "Long horizon"; benchmarks/long_horizon.py).
    return LSTMConfig(emb_dim=64, hidden_dim=64, dropout=0.5, emb_dropout=0.25)


@dataclass
class Config:
    """Everything a training run needs. Defaults follow the CoT authors' synthetic setup
    (text data sources start from wider models: see :func:`default_config`)."""

    cot: CoTConfig = field(default_factory=CoTConfig)
    mixce: MixCEConfig = field(default_factory=MixCEConfig)  # --algo mixce only
    tailr: TaiLrConfig = field(default_factory=TaiLrConfig)  # --algo tailr only
    # G's model: the keys of the architecture its arch names, here the default's (an LSTM); every
    # architecture's keys are in the sections "Architecture ..." at the end
    generator: ModelConfig = field(default_factory=LSTMConfig)
    mediator: ModelConfig = field(default_factory=_default_mediator)  # M's model (keys: as the generator's)
    g_optim: OptimConfig = field(default_factory=OptimConfig)
    m_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3))
    nested: NestedConfig = field(default_factory=NestedConfig)
    inner_mediator: ModelConfig = field(default_factory=_default_mediator)  # nested: inner mediators' model
    inner_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3))  # nested: inner mediators
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "Config":
        """Raise ConfigError for impossible values; return self."""
        c = self
        check(c.cot.algo in ALGOS, "cot.algo", f"must be one of {', '.join(ALGOS)}, got {c.cot.algo!r}")
        self._validate_algo()
        check(c.data.source in DATA_SOURCES, "data.source",
               f"must be 'oracle', 'coco' or 'text', got {c.data.source!r}")
        for key in ("cot.batch_size", "cot.g_steps", "cot.sync_every", "data.num_train", "run.chunk_rows",
                    "data.num_test", "eval.num_samples", "eval.num_test", "run.log_every",
                    "run.checkpoint_every"):
            check(_get(c, key) >= 1, key, f"must be >= 1, got {_get(c, key)}")
        for key in ("cot.m_steps", "run.iters", "eval.every", "run.threads", "eval.num_train"):
            check(_get(c, key) >= 0, key, f"must be >= 0, got {_get(c, key)}")
        check(not learned_mediator(c) or c.cot.m_steps >= 1, "cot.m_steps", "must be >= 1 for cot")
        check(c.run.minutes >= 0, "run.minutes", f"must be >= 0, got {c.run.minutes}")
        check(c.run.progress_s >= 0, "run.progress_s", f"must be >= 0 (0: every run.log_every iterations), "
              f"got {c.run.progress_s}")
        check(c.run.iters > 0 or c.run.minutes > 0, "run.iters",
              "and run.minutes are both 0, so the run could never stop: give --iters N or --minutes M")
        check(c.run.precision in ("fp32", "bf16"), "run.precision",
              f"must be 'fp32' or 'bf16', got {c.run.precision!r}")
        check(c.run.patience >= 0, "run.patience", f"must be >= 0 (0: no early stopping), got {c.run.patience}")
        check(c.run.patience == 0 or (c.eval.every > 0 and selection_metric(c) is not None), "run.patience",
              "stops on the selection metric of the evaluations: needs eval.every > 0, a validation set "
              "(data.num_valid) and eval.select other than none")
        if c.data.source == "oracle":
            check(c.eval.num_test <= c.data.num_test, "eval.num_test",
                   f"must be <= data.num_test ({c.data.num_test}), got {c.eval.num_test}")
        check(c.eval.where in ("auto", "driver", "generator"), "eval.where",
              f"must be 'auto', 'driver' or 'generator', got {c.eval.where!r}")
        check(c.eval.select in SELECT_METRICS, "eval.select",
              f"must be one of {', '.join(SELECT_METRICS)}, got {c.eval.select!r}")
        check(c.data.num_valid >= -1, "data.num_valid", f"must be >= 0 (or -1: automatic), got {c.data.num_valid}")
        check(c.eval.select in ("auto", "none") or c.data.num_valid != 0, "eval.select",
              "needs a validation set: set data.num_valid > 0 (or -1), or eval.select=none")
        check(not (c.eval.select == "balanced_valid" and c.data.source in TEXT_SOURCES), "eval.select",
              "'balanced_valid' needs the oracle (NLL_oracle): on text use nll_valid")
        self._validate_text_data()
        self._validate_nested()
        for name in ("generator", "mediator", "inner_mediator"):
            getattr(c, name).validate(name)  # the architecture checks its own keys
        for name in ("g_optim", "m_optim", "inner_optim"):
            o: OptimConfig = getattr(c, name)
            check(o.lr > 0, f"{name}.lr", f"must be > 0, got {o.lr}")
            for f in ("beta1", "beta2"):
                check(0.0 <= getattr(o, f) < 1.0, f"{name}.{f}", f"must be in [0, 1), got {getattr(o, f)}")
            check(o.grad_clip >= 0, f"{name}.grad_clip", f"must be >= 0, got {o.grad_clip}")
            check(o.weight_decay >= 0, f"{name}.weight_decay", f"must be >= 0, got {o.weight_decay}")
        self._validate_runtime()
        return self

    def _validate_nested(self) -> None:
        nested = self.nested
        for key in ("nested.depth", "nested.m_steps", "nested.g_steps"):
            check(_get(self, key) >= 1, key, f"must be >= 1 when given, got {_get(self, key)}"
                   + (" (turn nesting off by leaving out --nested)" if key == "nested.depth" else ""))
        check(nested.depth <= 8, "nested.depth", f"must be <= 8 (each level trains a whole model), got {nested.depth}")
        if nested.enabled:
            check(self.cot.algo == "cot", "nested.enabled",
                   f"needs cot.algo 'cot' ({self.cot.algo} trains no mediator): drop --nested or use --algo cot")
            check(self.cot.mediator == "learned", "nested.enabled",
                   "trains a learned mediator, and cot.mediator is 'exact': drop --nested or the exact mediator")
        check(nested.enabled or not self.runtime.inner_actor, "runtime.inner_actor",
               "places the inner mediator of a nested run: add --nested, or drop --inner-actor")
        check(not self.runtime.inner_actor or self.runtime.mode == "actors", "runtime.inner_actor",
               "needs actors (runtime.mode 'actors'): drop --local or drop --inner-actor")

    def _validate_algo(self) -> None:
        c = self.cot
        check(c.mediator in MEDIATORS, "cot.mediator", f"must be 'learned' or 'exact', got {c.mediator!r}")
        if c.mediator == "exact":
            check(c.algo == "cot", "cot.mediator",
                  f"'exact' is CoT's mediator and cot.algo is {c.algo!r}: use --algo cot, or drop cot.mediator")
            check(self.data.source == "oracle", "cot.mediator",
                  f"'exact' needs the data's own probabilities, which only the oracle has (data.source is "
                  f"{self.data.source!r}): use --data oracle, or cot.mediator=learned")
        check(0.0 <= self.mixce.eta <= 1.0, "mixce.eta", f"must be in [0, 1] (1: MLE), got {self.mixce.eta}")
        check(0.0 <= self.tailr.gamma <= 1.0, "tailr.gamma", f"must be in [0, 1] (0: MLE), got {self.tailr.gamma}")
        check(0.0 <= self.tailr.min_weight <= 1.0, "tailr.min_weight",
              f"must be in [0, 1], got {self.tailr.min_weight}")

    def _validate_text_data(self) -> None:
        d = self.data
        if d.source == "text":
            check(d.train_path != "", "data.train_path",
                   "is required for data.source 'text': give --data PATH/train.txt (or --data coco)")
            check(d.test_path != "", "data.test_path",
                   "is required for data.source 'text': give --test-data PATH/test.txt")
        check(d.max_len >= 0, "data.max_len", f"must be >= 0 (0: longest training sentence + 1), got {d.max_len}")
        check(d.min_count >= 1, "data.min_count", f"must be >= 1, got {d.min_count}")
        check(d.max_vocab == 0 or d.max_vocab >= 4, "data.max_vocab",
               f"must be 0 (no cap) or >= 4 (3 special tokens and a word), got {d.max_vocab}")
        check(self.eval.bleu_samples >= 2, "eval.bleu_samples",
               f"must be >= 2 (self-BLEU compares each sentence with the others), got {self.eval.bleu_samples}")

    def _validate_runtime(self) -> None:
        r = self.runtime
        check(r.mode in ("actors", "local"), "runtime.mode", f"must be 'actors' or 'local', got {r.mode!r}")
        check(r.schedule in ("sync", "async"), "runtime.schedule", f"must be 'sync' or 'async', got {r.schedule!r}")
        check(r.staleness >= 0, "runtime.staleness", f"must be >= 0, got {r.staleness}")
        check(r.gpus_per_worker == -1 or r.gpus_per_worker >= 0, "runtime.gpus_per_worker",
               f"must be >= 0 (or -1 for automatic), got {r.gpus_per_worker}")
        check(r.cpus_per_worker >= 0, "runtime.cpus_per_worker",
              f"must be > 0 (or 0 for automatic), got {r.cpus_per_worker:g}")
        check(r.max_restarts >= 0, "runtime.max_restarts", f"must be >= 0, got {r.max_restarts}")
        check(r.placement_timeout_s > 0, "runtime.placement_timeout_s", f"must be > 0, got {r.placement_timeout_s}")
        check(r.scale_timeout_s > 0, "runtime.scale_timeout_s", f"must be > 0, got {r.scale_timeout_s}")
        check(r.autoscaling in ("auto", "always", "never"), "runtime.autoscaling",
              f"must be 'auto', 'always' or 'never', got {r.autoscaling!r}")
        check_address(r.address)
        check(r.mode == "actors" or r.address == "", "runtime.address",
               "joins a Ray cluster, which runtime.mode 'local' does not use: drop --address or --local")


def check_address(address: str) -> None:
    """``runtime.address`` (``--address``) is '', 'auto', 'ray://HOST:PORT' or 'HOST:PORT'."""
    check(address == "" or address == "auto" or address.startswith("ray://") or ":" in address,
          "runtime.address", f"must be '', 'auto', 'ray://HOST:PORT' or 'HOST:PORT', got {address!r}")


def learned_mediator(cfg: Config) -> bool:
    """Whether a run of ``cfg`` trains a mediator M (CoT with cot.mediator 'learned')."""
    return cfg.cot.algo == "cot" and cfg.cot.mediator == "learned"


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def selection_metric(cfg: Config) -> Optional[str]:
    """The evaluation metric that picks a run's best checkpoint (lower is better), or None.

    "auto": MLE (and MixCE, TaiLr) is early-stopped on its validation NLL, the usual practice. CoT on the oracle
    on ``balanced_valid`` = NLL_oracle + NLL_valid: CoT trades sample quality against coverage
    (it minimises a symmetric divergence), and selecting on coverage alone would favour its
    early, high-entropy checkpoints; both terms are free of the test set (NLL_oracle scores G's
    own samples). On text, where no oracle scores samples, both use NLL_valid.
    """
    if cfg.eval.select == "none" or cfg.data.num_valid == 0:
        return None
    if cfg.eval.select != "auto":
        return cfg.eval.select
    if cfg.cot.algo in LIKELIHOOD_ALGOS or cfg.data.source in TEXT_SOURCES:
        return "nll_valid"
    return "balanced_valid"


def default_config(source: str = "oracle") -> Config:
    """The defaults for a data source.

    ``Config()`` holds the synthetic-oracle defaults (the CoT authors' setup: G 32/32, M 64/64).
    Real text ("coco", "text") has a larger vocabulary and longer-range structure, so its
    defaults widen both models, keeping M twice as wide as G: G emb/hidden 64/64, M 128/128
    (regularised as on the oracle). Everything else is shared. Sized for a CPU: on COCO (6,097
    words, 36 positions) one thread makes about 1 CoT or 10 MLE iterations a second.
    """
    cfg = Config()
    cfg.data.source = source
    if source in TEXT_SOURCES:
        cfg.generator = LSTMConfig(emb_dim=64, hidden_dim=64)
        cfg.mediator = dataclasses.replace(_default_mediator(), emb_dim=128, hidden_dim=128)
    return cfg
