"""Inside a Tune trial of ``cot-ray tune``: one training run with its own actors, reported to Tune.

A trial's resource request is a placement group: bundle 0 (:data:`DRIVER_BUNDLE`, 1 CPU) for
the trial driver, which runs the schedule and the evaluations, then one bundle per learner
actor (:func:`cot_ray.runtime.learner_names`); the actors go into bundles 1..n of the
trial's group, so Tune packs whole trials onto the cluster. After every evaluation the trial
reports ``iteration``, ``elapsed_s`` (training seconds) and the eval metrics as
``eval/<name>``, with the run's checkpoint as a Tune checkpoint. A trial restored from a
checkpoint (PBT, resume, a failure) starts a new run directory (``run``, ``run-2``, ...).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Callable, Optional

import ray
from ray import tune

from .. import runtime
from ..checkpoint import (
    CHECKPOINT,
    CONFIG,
    G,
    M,
    learner_part,
    load_checkpoint,
    save_checkpoint,
)
from ..config import Config
from ..config_loading import save_config
from ..data import VOCAB_FILE
from ..files import read_jsonl
from ..memory import retain_freed_memory
from ..run_policy import stop_reason
from ..rundir import METRICS_FILE
from .spec import Sweep, is_uri

TRIAL_LOG = "train.log"  # in every trial directory: the progress lines of its runs
TRIAL_INFO = "trial.json"  # in every Tune checkpoint: whose it is
TRIAL_SESSIONS = "sessions.jsonl"  # in every trial directory: one line per session (fresh or restored)
DRIVER_BUNDLE = {"CPU": 1.0}  # bundle 0 of a trial: the trial driver (schedule and evaluation)


def set_optimizer_hyperparameters(state: dict, cfg: Config) -> None:
    """Give the optimizers of a checkpoint ``cfg``'s learning rates and betas (PBT's new values;
    a checkpoint's optimizer state would otherwise bring back the old ones)."""
    for learner, ocfg in ((G, cfg.g_optim), (M, cfg.m_optim)):
        sub = learner_part(state, learner)
        if not sub or "optim" not in sub:
            continue
        for group in sub["optim"]["param_groups"]:
            group["lr"] = ocfg.lr
            group["betas"] = (ocfg.beta1, ocfg.beta2)


def _session_dir(trial_dir: str) -> str:
    """The first unused run directory of the trial: run, run-2, run-3, ..."""
    n = 1
    while os.path.exists(os.path.join(trial_dir, "run" if n == 1 else f"run-{n}")):
        n += 1
    return os.path.join(trial_dir, "run" if n == 1 else f"run-{n}")


def _restore_session(ckpt_dir: str, run_dir: str, cfg: Config) -> dict:
    """Make ``run_dir`` a copy of a Tune checkpoint, continued under ``cfg``; -> what it holds:
    ``trial_id`` (whose checkpoint it is), ``iteration``, ``elapsed``, ``last_eval``."""
    os.makedirs(run_dir)
    for name in (METRICS_FILE, VOCAB_FILE):
        if os.path.exists(os.path.join(ckpt_dir, name)):
            shutil.copy2(os.path.join(ckpt_dir, name), os.path.join(run_dir, name))
    if os.path.exists(os.path.join(run_dir, VOCAB_FILE)):
        cfg.data.vocab_path = os.path.abspath(os.path.join(run_dir, VOCAB_FILE))
    state = load_checkpoint(os.path.join(ckpt_dir, CHECKPOINT))
    set_optimizer_hyperparameters(state, cfg)
    state["config"] = cfg.to_dict()  # the session goes on under this trial's config (PBT's new values)
    save_checkpoint(os.path.join(run_dir, CHECKPOINT), state)
    save_config(cfg, os.path.join(run_dir, CONFIG))
    info = {}
    if os.path.exists(os.path.join(ckpt_dir, TRIAL_INFO)):
        with open(os.path.join(ckpt_dir, TRIAL_INFO), encoding="utf-8") as f:
            info = json.load(f)
    return {"trial_id": info.get("trial_id"), "iteration": int(state["iteration"]),
            "elapsed": float(state["elapsed"]), "last_eval": state.get("last_eval") or {}}


def read_sessions(trial_dir: str) -> list[dict]:
    """The sessions of a trial, oldest first: ``run`` (its run directory's name),
    ``restored_from`` (the trial whose checkpoint it continued; None: a fresh start) and
    ``iteration`` (where it started)."""
    return read_jsonl(os.path.join(trial_dir, TRIAL_SESSIONS))


def _bundle_nodes(pg) -> str:
    """The nodes (first 8 hex digits of their ids) of the trial's bundles, comma-separated in
    bundle order: the trial driver's, then each worker's."""
    nodes = ray.util.placement_group_table(pg).get("bundles_to_node_id") or {}
    return ",".join(str(nodes[i])[:8] for i in sorted(nodes))


class _Reporter:
    """The Trainer's ``on_eval`` hook in a trial: the metrics and the checkpoint to Tune."""

    def __init__(self, cfg: Config, trial_dir: str, trial_id: str, nodes: str):
        self.cfg, self.trial_dir, self.trial_id, self.nodes = cfg, trial_dir, trial_id, nodes
        sessions = read_sessions(trial_dir)
        self.restores = sum(s["restored_from"] is not None for s in sessions)
        self.exploits = sum(s["restored_from"] not in (None, trial_id) for s in sessions)

    def result(self, iteration: int, metrics: dict, elapsed: float) -> dict:
        done = stop_reason(self.cfg.run, iteration, elapsed) is not None  # the budget (early stops end on their own)
        out = {"iteration": iteration, "elapsed_s": elapsed, "restores": self.restores,
               "exploits": self.exploits, "budget_done": bool(done), "nodes": self.nodes}
        out.update({f"eval/{k}": v for k, v in metrics.items() if v is not None})
        return out

    def __call__(self, iteration: int, metrics: dict, run_dir: str, elapsed: float) -> None:
        with tempfile.TemporaryDirectory(prefix=".report-", dir=self.trial_dir) as tmp:
            for name in (CHECKPOINT, CONFIG, METRICS_FILE, VOCAB_FILE):
                src = os.path.join(run_dir, name)
                if os.path.exists(src):
                    try:
                        os.link(src, os.path.join(tmp, name))  # the Trainer replaces files, never edits them
                    except OSError:
                        shutil.copy2(src, os.path.join(tmp, name))
            with open(os.path.join(tmp, TRIAL_INFO), "w", encoding="utf-8") as f:
                json.dump({"trial_id": self.trial_id}, f)
            tune.report(self.result(iteration, metrics, elapsed), checkpoint=tune.Checkpoint.from_directory(tmp))


def run_trial(sweep: Sweep, values: dict, exp: str) -> None:
    """The body of one trial: build its config, start or restore its run, train, report.

    The trial's run directories go into its directory in the experiment (``exp``) when that is
    a file system path (local, or NFS on a cluster); with cloud storage they stay in the
    trial's working directory on its node, and only Tune's checkpoints are uploaded.
    """
    retain_freed_memory()  # this process is the trial's (a Ray worker): set it up as the CLI sets up its own
    cfg = sweep.trial_config(values)
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    trial_dir = ctx.get_trial_dir() if is_uri(exp) else os.path.join(exp, trial_dirname(trial_id))
    os.makedirs(trial_dir, exist_ok=True)
    if cfg.run.threads == 0:
        cfg.run.threads = int(DRIVER_BUNDLE["CPU"])  # the trial driver holds one CPU
    run_dir = _session_dir(trial_dir)
    cfg.run.logdir, cfg.run.name = trial_dir, os.path.basename(run_dir)
    checkpoint = tune.get_checkpoint()
    saved: Optional[dict] = None
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            saved = _restore_session(ckpt_dir, run_dir, cfg)
    with open(os.path.join(trial_dir, TRIAL_SESSIONS), "a", encoding="utf-8") as f:
        f.write(json.dumps({"run": os.path.basename(run_dir),
                            "restored_from": saved and (saved["trial_id"] or trial_id),
                            "iteration": saved["iteration"] if saved else 0}) + "\n")
    pg = ray.util.get_current_placement_group()
    reporter = _Reporter(cfg, trial_dir, trial_id, _bundle_nodes(pg) if pg is not None else "")
    if saved is not None and reporter.result(saved["iteration"], {}, saved["elapsed"])["budget_done"]:
        # Restored at the end of its budget (PBT exploited a final result): nothing to train,
        # but the trial's last result must describe the state it now holds.
        reporter(saved["iteration"], saved["last_eval"], run_dir, saved["elapsed"])
        return
    with open(os.path.join(trial_dir, TRIAL_LOG), "a", encoding="utf-8") as log:
        def echo(msg: str) -> None:
            log.write(msg + "\n")
            log.flush()

        runtime.train(cfg, resume_dir=run_dir if saved else None, echo=echo, on_eval=reporter, placement=pg,
                      bundle_offset=1 if pg is not None else 0)


def trial_dirname(trial_id: str) -> str:
    """Short trial directory names: trial_<id> (the sampled values are in params.json)."""
    return f"trial_{trial_id}"


def make_trainable(sweep: Sweep, exp: str) -> Callable[[dict], None]:
    """The Tune function trainable of ``sweep``, whose experiment directory is ``exp``."""

    def cot_trial(config: dict) -> None:
        run_trial(sweep, config, exp)

    return cot_trial


def trial_resources(cfg: Config, worker_bundle: dict) -> "tune.PlacementGroupFactory":
    """A trial's placement group: its driver, then one bundle per worker of ``cfg``. With
    ``runtime.spread`` the bundles go to different nodes (STRICT_SPREAD, as for a single run;
    the trial driver takes a node of its own too)."""
    n = len(runtime.learner_names(cfg))
    return tune.PlacementGroupFactory([dict(DRIVER_BUNDLE)] + [dict(worker_bundle)] * n,
                                      strategy="STRICT_SPREAD" if cfg.runtime.spread else "PACK")
