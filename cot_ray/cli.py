"""The ``cot-ray`` command line: train, eval, sample, data."""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Optional

import click

from .checkpoint import CHECKPOINT, CheckpointError
from .config import ALGOS
from .config_loading import load_config
from .errors import ConfigError
from .files import DiskFullError
from .loop import DivergenceError
from .stopping import signal_name

INTERRUPTED = 130  # the shell's exit code for a command stopped by Ctrl-C (SIGINT)


def interrupted_code(signum: Optional[int]) -> int:
    """The exit code of a command stopped by signal ``signum``: 128 + it, as a shell reports a
    process killed by it (143 for SIGTERM; 130, Ctrl-C, when unknown)."""
    return 128 + signum if signum else INTERRUPTED


class _Errors(click.Group):
    """Turn the project's own input errors (and a diverged run) into one-line messages instead
    of tracebacks, and a stop signal into exit code 128 + it (click's "Aborted!" would exit
    with 1)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (ConfigError, CheckpointError, DiskFullError, DivergenceError, ValueError, FileNotFoundError) as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt as e:
            raise click.exceptions.Exit(interrupted_code(getattr(e, "signum", None))) from None


@click.group(cls=_Errors)
@click.version_option(package_name="cot-ray")
def main():
    """Cooperative Training (CoT) for discrete sequence models."""


_RUNTIME_FLAGS = {  # click parameter -> (flag, config key); the schedule flags change the math
    "local": ("--local/--actors", "runtime.mode"), "address": ("--address", "runtime.address"),
    "spread": ("--spread/--pack", "runtime.spread"), "gpus_per_worker": ("--gpus-per-worker", "runtime.gpus_per_worker"),
    "cpus_per_worker": ("--cpus-per-worker", "runtime.cpus_per_worker"),
    "schedule": ("--schedule", "runtime.schedule"), "staleness": ("--staleness", "runtime.staleness"),
    "inner_actor": ("--inner-actor/--inner-local", "runtime.inner_actor"),
}
_MATH_FLAGS = ("schedule", "staleness")


_SMOKE_OPTION = click.option(
    "--smoke", is_flag=True,
    help="Check this command end to end in seconds: the same models, data and runtime with a tiny budget "
         "(a few iterations, small evaluations; sweeps: two short trials).")


def _runtime_options(f):
    """The runtime flags of ``train``, handed to it as one ``runtime`` dict of the given ones."""
    options = [
        click.option("--local/--actors", "local", default=None,
                     help="--local: both learners in this process, without Ray; --actors (the default): "
                          "generator and mediator as Ray actors (config runtime.mode)."),
        click.option("--address", metavar="auto|ray://HOST:PORT",
                     help="Join this Ray cluster instead of starting a local Ray (config runtime.address)."),
        click.option("--schedule", type=click.Choice(["sync", "async"]),
                     help="sync: exactly the in-process loop; async: G and M compute at once on a pipeline "
                          "(config runtime.schedule)."),
        click.option("--staleness", type=int, metavar="K",
                     help="async: M trains on G samples, and G uses M weights, K iterations old "
                          "(config runtime.staleness)."),
        click.option("--spread/--pack", "spread", default=None,
                     help="Put G and M on different nodes (STRICT_SPREAD) or pack them (config runtime.spread)."),
        click.option("--gpus-per-worker", type=float, metavar="N",
                     help="GPUs for each of G and M; -1: one each if there are two (config runtime.gpus_per_worker)."),
        click.option("--cpus-per-worker", type=float, metavar="N",
                     help="CPUs for each worker (its torch threads: the whole ones, at least one); 0: one each, or "
                          "a share when the machine has fewer CPUs than workers (config runtime.cpus_per_worker)."),
        click.option("--inner-actor/--inner-local", "inner_actor", default=None,
                     help="--nested: run the inner mediators in their own actor (own device) instead of "
                          "inside the mediator's worker (config runtime.inner_actor)."),
    ]

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        runtime = {name: kwargs.pop(name) for name in _RUNTIME_FLAGS}
        return f(*args, runtime={k: v for k, v in runtime.items() if v is not None}, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def _runtime_values(runtime: dict, resumed: bool) -> dict:
    """The given runtime flags as config values (dotted key -> value); a resumed run may move,
    not change its math."""
    if resumed:
        fixed = [_RUNTIME_FLAGS[k][0] for k in _MATH_FLAGS if k in runtime]
        if fixed:
            raise click.UsageError(f"{', '.join(fixed)} cannot change a resumed run (its checkpoint holds "
                                   "that schedule's state): only where it runs may change")
    return {_RUNTIME_FLAGS[name][1]: ("local" if value else "actors") if name == "local" else value
            for name, value in runtime.items()}


def _run_training(cfg, resume_dir: Optional[str]) -> dict:
    """The in-process loop for ``--local``; else the Ray runtime (imports Ray). This command owns
    its process, so it sets it up for training: glibc's malloc keeps freed memory (memory.py),
    and Ctrl-C, SIGTERM and SIGHUP ask the run to stop after the iteration with a checkpoint (a
    second one stops at once); the library itself touches neither."""
    from .memory import retain_freed_memory
    from .stopping import StopRequest, stop_on_signals

    if cfg.runtime.mode == "local":
        from .loop import run_trainer as run_train
    else:
        from .runtime import train as run_train
    retain_freed_memory()
    with stop_on_signals(StopRequest(), lambda s: print(s, file=sys.stderr, flush=True)) as stop:
        return run_train(cfg, resume_dir=resume_dir, stop=stop)


@main.command()
@click.option("--algo", type=click.Choice(list(ALGOS)), help="Training algorithm (config cot.algo): CoT, MLE, "
              "or MLE's reweighted rivals MixCE and TaiLr.")
@click.option("--iters", type=int, help="Total training iterations (config run.iters).")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True),
              help="Stop after this many minutes of training (config run.minutes).")
@click.option("--patience", type=click.IntRange(min=0), metavar="N",
              help="Stop once N evaluations in a row have not improved the validation metric; 0: never "
                   "(config run.patience).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set cot.m_steps=2 (repeatable).")
@click.option("--logdir", help="Parent directory of runs (config run.logdir).")
@click.option("--name", metavar="NAME", help="The run's directory name under --logdir (config run.name); default "
              "ALGO-DATA-ARCH-DATE-TIME, e.g. cot-oracle-lstm-20250101-120000.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), help="Continue the run in this directory.")
@click.option("--seed", type=int, help="Seed of the run (config run.seed).")
@click.option("--data", "data_arg", metavar="coco|oracle|PATH",
              help="Training data: 'coco' (bundled COCO captions), 'oracle' (synthetic, the default) or a "
                   "text file with one sentence per line (config data.source/data.train_path).")
@click.option("--test-data", "test_data", type=click.Path(dir_okay=False), metavar="PATH",
              help="Held-out sentences for NLL_test and BLEU, with --data PATH (config data.test_path).")
@click.option("--nested", is_flag=True, default=None,
              help="Nested CoT: train the mediator with its own inner CoT game instead of MLE (config nested.enabled).")
@click.option("--nest-depth", "nest_depth", type=int, metavar="D",
              help="With --nested: levels of inner mediators, 1 or more (config nested.depth).")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line (run_dir, iteration, metrics) "
              "instead of the summary and next steps.")
@_SMOKE_OPTION
@_runtime_options
def train(algo, iters, minutes, patience, config_path, overrides, logdir, name, resume_dir, seed, data_arg, test_data,
          nested, nest_depth, as_json, smoke, runtime):
    """Train a generator with CoT (default) or MLE on the oracle, COCO captions or your sentences."""
    from .config_loading import from_dict, nest_keys
    from .run_policy import smoke_budget
    from .rundir import resume_config

    if resume_dir:
        changed = [n for n, v in (("--algo", algo), ("--config", config_path), ("--set", overrides),
                                  ("--logdir", logdir), ("--name", name), ("--seed", seed), ("--data", data_arg),
                                  ("--test-data", test_data), ("--nested", nested),
                                  ("--nest-depth", nest_depth is not None), ("--smoke", smoke)) if v]
        if changed:
            raise click.UsageError(f"{', '.join(changed)} cannot change a resumed run: only the stopping "
                                   "rule (--iters, --minutes, --patience) may be given with --resume")
        cfg = resume_config(resume_dir, iters, minutes, patience)
        cfg = from_dict(nest_keys(_runtime_values(runtime, resumed=True), "flag"), cfg).validate()
        if _finished(cfg, resume_dir, as_json):
            return
    else:
        if nest_depth is not None and not nested:
            raise ConfigError("--nest-depth sets the depth of nested CoT: add --nested")
        flags = {"cot.algo": algo, "run.iters": iters, "run.minutes": minutes, "run.patience": patience,
                 "run.logdir": logdir or None, "run.name": name or None,
                 "run.seed": seed, "nested.enabled": True if nested else None, "nested.depth": nest_depth,
                 **_data_values(data_arg, test_data), **_runtime_values(runtime, resumed=False)}
        if minutes is not None and iters is None:
            flags["run.iters"] = 0  # --minutes alone: the clock decides
        cfg = load_config(config_path, list(overrides), values={k: v for k, v in flags.items() if v is not None})
        if smoke:
            cfg = smoke_budget(cfg).validate()
    summary = _run_training(cfg, resume_dir)
    if as_json:
        click.echo(json.dumps({k: summary[k] for k in ("run_dir", "iteration", "metrics")}))
    else:
        _ending(cfg, summary)
    if summary["interrupted"]:
        sys.exit(interrupted_code(summary.get("signal")))


_SHOWN = ("kl_forward", "kl_reverse", "nll_oracle", "nll_test", "bleu4", "self_bleu4")


def _ending(cfg, summary: dict) -> None:
    """What the run did and what to do next, for a person (``--json`` is for scripts)."""
    run_dir, it = summary["run_dir"], summary["iteration"]
    m = summary["metrics"] or {}
    stopped_by = summary.get("stopped_by") or ""
    head = (f"stopped by {signal_name(summary['signal'] or 2)}" if summary["interrupted"] else
            f"done, stopped early ({stopped_by})" if stopped_by.startswith("run.patience") else "done")
    click.echo(f"[cot-ray] {head}: {it} iterations, {summary['elapsed_s'] / 60:.1f} min of training"
               + ("; " + "  ".join(f"{k} {m[k]:.3f}" for k in _SHOWN if m.get(k) is not None) if m else
                  " (not evaluated yet)"))
    logdir = os.path.dirname(os.path.abspath(run_dir))
    click.echo(f"  run directory  {run_dir}\n"
               f"  evaluate       cot-ray eval {run_dir}\n"
               f"  samples        cot-ray sample {run_dir} -n 10\n"
               f"  curves         {tensorboard_command(logdir)}\n"
               + (f"  continue       cot-ray train --resume {run_dir}" if summary["interrupted"] else
                  _train_on(run_dir, it, stopped_by, cfg.run.patience)))


def tensorboard_command(logdir: str) -> str:
    """The command that shows a logdir's curves: TensorBoard, with its install first where this
    Python lacks it (tensorboardX, which writes the curves, does not bring it)."""
    import importlib.util

    show = f"tensorboard --logdir {logdir}"
    return show if importlib.util.find_spec("tensorboard") is not None else f"pip install tensorboard && {show}"


def _train_on(run_dir: str, iteration: int, stopped_by: str, stale_evals: int) -> str:
    """The next-step lines for a run that stopped by its rule: an early-stopped one is not trained
    longer by more iterations (its patience would stop it again at once) but by a patience above
    the ``stale_evals`` evaluations it has already gone without a better validation metric."""
    if stopped_by.startswith("run.patience"):
        return (f"  best model     cot-ray eval {run_dir} --checkpoint best\n"
                f"  train past it  cot-ray train --resume {run_dir} --patience {stale_evals * 2}")
    return f"  train longer   cot-ray train --resume {run_dir} --iters {max(iteration * 2, iteration + 1000)}"


def _finished(cfg, run_dir: str, as_json: bool) -> bool:
    """A resumed run that has nothing left to do: say so (without starting Ray); -> True. Its
    checkpoint is checked against its config.yaml here, before Ray starts."""
    from .run_policy import stop_reason
    from .rundir import run_checkpoint

    path = os.path.join(run_dir, CHECKPOINT)
    if not os.path.exists(path):  # stopped before its first checkpoint: it starts over
        return False
    state = run_checkpoint(cfg, path)
    it, stale = int(state["iteration"]), int(state.get("stale_evals", 0))
    reason = stop_reason(cfg.run, it, float(state["elapsed"]), stale)
    if reason is None:
        return False
    if as_json:
        click.echo(json.dumps({"run_dir": run_dir, "iteration": it, "metrics": state.get("last_eval") or {}}))
    else:
        click.echo(f"[cot-ray] {run_dir} is already finished: {it} iterations ({reason}); to go on:\n"
                   + _train_on(run_dir, it, reason, stale), err=True)
    return True


def _data_values(data_arg: Optional[str], test_data: Optional[str]) -> dict:
    """``--data``/``--test-data`` as config values (paths made absolute)."""
    if data_arg is None:
        if test_data is not None:
            raise click.UsageError("--test-data needs --data PATH/train.txt (the matching training file)")
        return {}
    if data_arg in ("coco", "oracle"):
        if test_data is not None:
            raise click.UsageError(f"--test-data goes with --data PATH, not with --data {data_arg} "
                                   "(which brings its own test set)")
        return {"data.source": data_arg}
    if os.path.isdir(data_arg):
        hint = (f" (as `cot-ray data` writes them): --data {os.path.join(data_arg, 'train.txt')} --test-data "
                f"{os.path.join(data_arg, 'test.txt')}" if os.path.exists(os.path.join(data_arg, "train.txt")) else
                ", e.g. --data DIR/train.txt --test-data DIR/test.txt")
        raise click.UsageError(f"--data {data_arg} is a folder: give its training file, one sentence per line{hint}")
    if test_data is None:
        raise click.UsageError(f"--data {data_arg} needs --test-data PATH/test.txt (held-out sentences "
                               "for NLL_test and BLEU)")
    return {"data.source": "text", "data.train_path": os.path.abspath(data_arg),
            "data.test_path": os.path.abspath(test_data)}


def _load_data(cfg, run_dir, need):
    """The data set of the run in ``run_dir`` for ``need`` ("eval", "sample": on text, without
    its training file; see load_dataset); its remarks (truncation, a changed corpus) go to stderr."""
    from .data import load_dataset

    data = load_dataset(cfg.data, run_dir, need, cfg.eval.num_train)
    for note in data.notes:
        click.echo(f"[cot-ray] {note}", err=True)
    return data


_CHECKPOINT_OPTION = click.option(
    "--checkpoint", "which", type=click.Choice(["last", "best"]), default="last", show_default=True,
    help="The run's last checkpoint, or the best one by its validation metric (eval.select; never the test set).")
_LM_SCORE_OPTION = click.option(
    "--lm-score", "lm_run", type=click.Path(file_okay=False), metavar="MODEL_RUN",
    help="Text: also the LM score (lm_score), the per-token NLL of the samples under the generator of "
    "MODEL_RUN, an MLE run on the same training split (Caccia et al., ICLR 2020).")
_TEMPERATURE_OPTION = click.option(
    "--temperature", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
    help="Sample from softmax(logits / T), and score G at T (its NLL of the test set is the tempered model's).")


@main.command("tune")
@click.argument("sweep_path", metavar="CONFIG.yaml", type=click.Path(dir_okay=False))
@click.option("--address", metavar="auto|ray://HOST:PORT", default="",
              help="Join this Ray cluster instead of starting a local Ray.")
@click.option("--num-samples", type=click.IntRange(min=1), help="Samples of the search space (tune.num_samples).")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), metavar="EXPERIMENT_DIR",
              help="Continue an interrupted sweep (the directory printed when it started).")
@click.option("--storage", metavar="DIR|URI", help="Where experiments go (tune.storage_path).")
@click.option("--name", help="Experiment name (tune.name; default: the file name and the time).")
@click.option("--max-concurrent", type=click.IntRange(min=0), help="Trials at once; 0: no limit (tune.max_concurrent).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a key of the base training config, e.g. --set data.cache_dir=/data (repeatable).")
@click.option("--show-tune", is_flag=True, help="Show Ray Tune's own status tables here (the trials' table "
              "goes to the experiment's tune.log otherwise).")
@_SMOKE_OPTION
def tune_cmd(sweep_path, address, num_samples, resume_dir, storage, name, max_concurrent, overrides, show_tune,
             smoke):
    """Sweep training hyperparameters with Ray Tune (ASHA, PBT); the sweep file format is in docs/sweeps.md."""
    from .sweep.spec import is_uri, load_sweep

    if resume_dir:
        changed = [n for n, v in (("--num-samples", num_samples), ("--storage", storage), ("--name", name),
                                  ("--max-concurrent", max_concurrent)) if v is not None]
        if changed:
            raise click.UsageError(f"{', '.join(changed)} cannot change a resumed sweep: give CONFIG.yaml "
                                   "(and --set) as when it started, and --address if needed")
    sweep = load_sweep(sweep_path, overrides, num_samples, max_concurrent, storage, name, smoke)  # before Ray
    from .stopping import stop_signals_as_ctrl_c
    from .sweep.tune import run_sweep  # imports Ray Tune: only this command needs it

    with stop_signals_as_ctrl_c([]) as came:  # this command owns its process: SIGTERM, SIGHUP stop as Ctrl-C
        summary = run_sweep(sweep, address=address, resume_dir=resume_dir, show_tune=show_tune)
    if summary["interrupted"] and came:
        summary["signal"] = came[0]
    click.echo(summary["table"])
    best = summary["best"]
    if summary["interrupted"]:
        click.echo(f"[cot-ray] sweep interrupted ({signal_name(summary['signal'])}): continue it with: "
                   f"cot-ray tune {sweep_path} --resume {summary['experiment']}", err=True)
    elif best is None:
        raise click.ClickException(f"no trial of {summary['experiment']} reported {sweep.tune.metric}: see the "
                                   "error.txt files in its trial directories")
    else:
        click.echo(f"[cot-ray] best trial {best.trial_id}: {sweep.tune.metric} {best.metric:.4f}; its config: "
                   f"{summary['best_config']} (cot-ray train --config {summary['best_config']})", err=True)
    if not is_uri(summary["experiment"]):
        click.echo(f"[cot-ray] curves: tensorboard --logdir {summary['experiment']}", err=True)
    click.echo(json.dumps({"experiment": summary["experiment"], "trials": len(summary["rows"]),
                           "interrupted": summary["interrupted"],
                           "best_trial": best.trial_id if best else None,
                           "metric": sweep.tune.metric, "best_metric": best.metric if best else None,
                           "best_values": best.values if best else None,
                           "best_config": summary["best_config"]}))
    if summary["interrupted"]:
        sys.exit(interrupted_code(summary["signal"]))


@main.command("eval")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--samples", type=int, help="Generator samples for NLL_oracle and JSD (default: config "
              "eval.num_samples), or on text for BLEU and self-BLEU (default: config eval.bleu_samples).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the evaluation samples.")
@_CHECKPOINT_OPTION
@_TEMPERATURE_OPTION
@_LM_SCORE_OPTION
@click.option("--reverse-lm", is_flag=True, help="With --lm-score: also the reverse-LM score, the NLL of the real "
              "test split under a model trained by MODEL_RUN's recipe on the generator's samples (trains it).")
@click.option("--reverse-lm-samples", type=click.IntRange(min=40), default=None, metavar="N",
              help="Generated sentences the reverse-LM model trains on (default 10,000).")
def eval_cmd(run_dir, as_json, samples, seed, which, temperature, lm_run, reverse_lm, reverse_lm_samples):
    """Evaluate a checkpoint of RUN_DIR (oracle metrics, or on text NLL_test, BLEU and self-BLEU)."""
    import time

    from .lm_score import REVERSE_LM_SAMPLES, load_lm_scorer, reverse_lm_score
    from .machine import configure_process, resolve_threads
    from .metric_names import LM_SCORE_KEYS, METRIC_KEYS, REVERSE_LM_KEYS, metric_keys
    from .metrics import make_evaluator, sample_with_log_probs
    from .rundir import checkpoint_models, load_run

    if (reverse_lm or reverse_lm_samples) and not lm_run:
        raise click.UsageError("--reverse-lm trains MODEL_RUN's recipe on the samples: give --lm-score MODEL_RUN")
    cfg, state = load_run(run_dir, which)
    data = _load_data(cfg, run_dir, "eval")
    if samples is not None and samples < (2 if data.is_text else 1):
        raise click.UsageError(f"--samples must be >= {2 if data.is_text else 1}")
    cfg.run.threads = 0  # this machine's free CPUs now, not the ones the run had
    cfg, note = resolve_threads(cfg)
    configure_process(cfg.run.threads)
    lm = load_lm_scorer(lm_run, data)[0] if lm_run else None
    g, m = checkpoint_models(cfg, state, data.vocab_size)
    ev = make_evaluator(data, cfg.eval, samples, lm)
    n = ev.num_samples
    click.echo(f"[cot-ray] evaluating {run_dir} ({which} checkpoint, iteration {state['iteration']}"
               + (f", temperature {temperature:g}" if temperature != 1.0 else "")
               + f"): {len(ev.test):,} test sequences, {n:,} samples; {note}...", err=True)
    t0 = time.perf_counter()
    res = ev.evaluate(g, m, seed, temperature=temperature)
    click.echo(f"[cot-ray] evaluated in {time.perf_counter() - t0:.0f} s", err=True)
    if reverse_lm or reverse_lm_samples:
        import tempfile

        n_rev = reverse_lm_samples or REVERSE_LM_SAMPLES
        fake, _ = sample_with_log_probs(g, n_rev, data.seq_len, seed, temperature=temperature, stop_id=data.eos_id)
        click.echo(f"[cot-ray] reverse-LM score: training {lm_run}'s recipe on {n_rev:,} samples...", err=True)
        with tempfile.TemporaryDirectory() as work:
            res.update(reverse_lm_score(lm_run, fake, data, work, echo=lambda s: click.echo(s, err=True)))
    # --json: every key, null where it does not apply (oracle keys on text, BLEU keys on the oracle).
    out = {"iteration": state["iteration"], "checkpoint": which, "temperature": temperature,
           **{k: res.get(k) for k in METRIC_KEYS}}
    if as_json:
        click.echo(json.dumps(out))
    else:
        shown = ("iteration",) + metric_keys(data.is_text, m is not None, cfg.eval.num_train > 0,
                                             data.valid is not None) + (LM_SCORE_KEYS if lm else ()) \
            + (REVERSE_LM_KEYS if "reverse_lm_score" in res else ())
        for k in shown:
            v = out[k]
            click.echo(f"{k:>14}  {'-' if v is None else (f'{v:.4f}' if isinstance(v, float) else v)}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("-n", "num", type=click.IntRange(min=1), default=10, show_default=True, help="Number of samples.")
@click.option("--ids", is_flag=True, help="Print token ids instead of decoded text.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@_CHECKPOINT_OPTION
@_TEMPERATURE_OPTION
def sample(run_dir, num, ids, seed, which, temperature):
    """Print samples of RUN_DIR's generator, one per line (text: words up to <eos>, no padding)."""
    import torch

    from .checkpoint import G, learner_weights
    from .rundir import build_models, load_run

    cfg, state = load_run(run_dir, which)
    data = _load_data(cfg, run_dir, "sample")
    g = build_models(cfg, data.vocab_size, learner_weights(state, G))[0]
    seqs = g.sample(num, data.seq_len, torch.Generator().manual_seed(seed), temperature=temperature,
                    stop_id=data.eos_id)
    for row in seqs.tolist():
        click.echo(" ".join(map(str, row)) if ids else data.decode(row))


@main.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--temperatures", default="0.7:1.3:0.1", show_default=True, metavar="START:STOP:STEP|T,T,...",
              help="Sampling temperatures to evaluate each checkpoint at.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Where compare.md, compare.json and quality_diversity.png go.")
@click.option("--checkpoints", default="best,last", show_default=True, help="Which checkpoints of each run.")
@click.option("--samples", type=click.IntRange(min=2), help="Generator samples per evaluation (default: each "
              "run's eval.num_samples, or eval.bleu_samples on text).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the evaluation samples.")
@click.option("--reference", "references", multiple=True, metavar="LABEL=QUALITY/COVERAGE",
              help="A published point to mark in the plot and list in the table, e.g. 'CoT (paper)=8.19/8.03' "
              "(NLL_oracle / NLL_test; on text BLEU-4 / self-BLEU-4). Repeatable.")
@click.option("--no-plot", is_flag=True, help="Skip the plot (it needs matplotlib).")
@_LM_SCORE_OPTION
def compare_cmd(run_dirs, temperatures, out_dir, checkpoints, samples, seed, references, no_plot, lm_run):
    """Compare runs over a temperature grid: best and last checkpoints, seeds grouped (mean ± std),
    a table and a quality-diversity plot."""
    from .compare import (
        PLOT_SKIPPED,
        SWEEP,
        can_plot,
        compare_runs,
        markdown_table,
        parse_reference,
        parse_temperatures,
        write_outputs,
    )
    from .machine import configure_process, resolve_threads

    temps = parse_temperatures(temperatures)
    refs = tuple(parse_reference(r) for r in references)
    which = tuple(c.strip() for c in checkpoints.split(",") if c.strip())
    if not which or any(c not in ("best", "last") for c in which):
        raise click.UsageError(f"--checkpoints {checkpoints!r}: give best, last or best,last")
    for r in run_dirs:
        kept = (CHECKPOINT, SWEEP.format("best"), SWEEP.format("last"))
        if not any(os.path.exists(os.path.join(r, f)) for f in kept):
            raise click.UsageError(f"{r} is not a run with a checkpoint or a saved sweep ({SWEEP.format('best')}): "
                                   "give directories that `cot-ray train` made")
    cfg, note = resolve_threads(load_config(None, []))
    configure_process(cfg.run.threads)
    click.echo(f"[compare] {len(run_dirs)} run(s) x {len(which)} checkpoint(s) x {len(temps)} temperature(s) "
               f"({', '.join(f'{t:g}' for t in temps)}); {note}", err=True)
    result = compare_runs(list(run_dirs), temps, which, samples, seed,
                          echo=lambda s: click.echo(s, err=True), references=refs, lm_run=lm_run)
    plot = not no_plot and can_plot()
    paths = write_outputs(result, out_dir, plot=plot)
    click.echo(markdown_table(result))
    if not no_plot and not plot:
        click.echo(f"[compare] {PLOT_SKIPPED}", err=True)
    click.echo(f"[compare] {result['seconds']:.0f} s; written: " + ", ".join(paths.values()), err=True)


@main.group()
def data():
    """Write data sets to files."""


@data.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--seed", type=int, default=88, show_default=True, help="Seed of the oracle samples.")
@click.option("--num-train", type=click.IntRange(min=1), default=9984, show_default=True)
@click.option("--num-test", type=click.IntRange(min=1), default=9984, show_default=True)
def synthetic(out_dir, seed, num_train, num_test):
    """Oracle samples as OUT/train.txt and OUT/test.txt (space-separated token ids)."""
    from .data import synthetic_sets, write_token_file

    train_set, test_set, _ = synthetic_sets(num_train, num_test, seed)
    os.makedirs(out_dir, exist_ok=True)
    write_token_file(os.path.join(out_dir, "train.txt"), train_set)
    write_token_file(os.path.join(out_dir, "test.txt"), test_set)
    click.echo(f"wrote {num_train} training and {num_test} test sequences to {out_dir}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
