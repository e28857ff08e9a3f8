"""The ``cot-ray`` command line: train, eval, sample, data."""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

import click

from .checkpoint import CHECKPOINT, CheckpointError, load_checkpoint
from .config import ConfigError, load_config


class _Errors(click.Group):
    """Turn the project's own input errors into one-line messages instead of tracebacks."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (ConfigError, CheckpointError, ValueError, FileNotFoundError) as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=_Errors)
@click.version_option(package_name="cot-ray")
def main():
    """Cooperative Training (CoT) for discrete sequence models."""


@main.command()
@click.option("--algo", type=click.Choice(["cot", "mle"]), help="Training algorithm (config cot.algo).")
@click.option("--iters", type=int, help="Total training iterations (config run.iters).")
@click.option("--minutes", type=float, help="Stop after this many minutes of training (config run.minutes).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set cot.m_steps=2 (repeatable).")
@click.option("--logdir", help="Parent directory of runs (config run.logdir).")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), help="Continue the run in this directory.")
@click.option("--seed", type=int, help="Seed of the run (config run.seed).")
def train(algo, iters, minutes, config_path, overrides, logdir, resume_dir, seed):
    """Train a generator with CoT (default) or MLE on the bundled oracle."""
    from .loop import resume_config, train as run_train

    if resume_dir:
        changed = [n for n, v in (("--algo", algo), ("--config", config_path), ("--set", overrides),
                                  ("--logdir", logdir), ("--seed", seed)) if v]
        if changed:
            raise click.UsageError(f"{', '.join(changed)} cannot change a resumed run: only --iters and "
                                   "--minutes may be given with --resume")
        cfg = resume_config(resume_dir, iters, minutes)
    else:
        items = list(overrides)
        if algo:
            items.append(f"cot.algo={algo}")
        if iters is not None:
            items.append(f"run.iters={iters}")
        if minutes is not None:
            items.append(f"run.minutes={minutes}")
            if iters is None:
                items.append("run.iters=0")  # --minutes alone: the clock decides
        if logdir:
            items.append(f"run.logdir={logdir}")
        if seed is not None:
            items.append(f"run.seed={seed}")
        cfg = load_config(config_path, items)
    summary = run_train(cfg, resume_dir=resume_dir)
    click.echo(json.dumps({k: summary[k] for k in ("run_dir", "iteration", "metrics")}))


def _load_run(run_dir: str):
    from .loop import resume_config

    cfg = resume_config(run_dir)
    state = load_checkpoint(os.path.join(run_dir, CHECKPOINT))
    return cfg, state


@main.command("eval")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--samples", type=int, help="Generator samples for NLL_oracle and JSD (default: config eval.num_samples).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the evaluation samples.")
def eval_cmd(run_dir, as_json, samples, seed):
    """Evaluate the latest checkpoint of RUN_DIR."""
    from .data import load_dataset
    from .learners import sequence_mask
    from .loop import model_from_weights
    from .metrics import Evaluator

    cfg, state = _load_run(run_dir)
    data = load_dataset(cfg.data)
    n = samples if samples is not None else cfg.eval.num_samples
    if n < 1:
        raise click.UsageError("--samples must be >= 1")
    g = model_from_weights(data.vocab_size, cfg.generator, state["g"]["model"])
    m = model_from_weights(data.vocab_size, cfg.mediator, state["m"]["model"]) if state.get("m") else None
    ev = Evaluator(data.test, data.seq_len, data.oracle, lambda x: sequence_mask(x, data.eos_id),
                   n, cfg.eval.num_test)
    res = ev.evaluate(g, m, seed)
    keys = ("nll_oracle", "nll_test", "balanced_nll", "jsd", "jsd_mediator")
    out = {"iteration": state["iteration"], **{k: res.get(k) for k in keys}}
    if as_json:
        click.echo(json.dumps(out))
    else:
        for k, v in out.items():
            click.echo(f"{k:>14}  {'-' if v is None else (f'{v:.4f}' if isinstance(v, float) else v)}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("-n", "num", type=click.IntRange(min=1), default=10, show_default=True, help="Number of samples.")
@click.option("--ids", is_flag=True, help="Print token ids instead of decoded text.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
def sample(run_dir, num, ids, seed):
    """Print samples of RUN_DIR's generator, one per line."""
    import torch

    from .data import load_dataset
    from .loop import model_from_weights

    cfg, state = _load_run(run_dir)
    data = load_dataset(cfg.data)
    g = model_from_weights(data.vocab_size, cfg.generator, state["g"]["model"])
    seqs = g.sample(num, data.seq_len, torch.Generator().manual_seed(seed))
    for row in seqs.tolist():
        click.echo(" ".join(map(str, row)) if ids else data.decode(row))


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

    train_set, test_set = synthetic_sets(num_train, num_test, seed)
    os.makedirs(out_dir, exist_ok=True)
    write_token_file(os.path.join(out_dir, "train.txt"), train_set)
    write_token_file(os.path.join(out_dir, "test.txt"), test_set)
    click.echo(f"wrote {num_train} training and {num_test} test sequences to {out_dir}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
