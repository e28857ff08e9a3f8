"""``cot-ray compare``: runs side by side over a grid of sampling temperatures.

A sequence model's single score at temperature 1 misleads: lowering the softmax temperature
trades diversity for quality (Caccia et al., "Language GANs Falling Short", ICLR 2020), so a
method wins only if it beats the other's whole quality-diversity curve. This module evaluates
each run's best (by its validation metric) and last checkpoints at every temperature of a grid,
groups the runs that differ only by their seed (mean and standard deviation over seeds), and
writes a table (Markdown and JSON) and the quality-diversity plot: on the oracle NLL_oracle
(quality, lower is better) against NLL_test (coverage), on text BLEU-4 against self-BLEU-4,
with published points (``--reference``) marked beside the measured curves.

Test-set scores at every temperature come from one forward pass per checkpoint; only the
samples are drawn anew per temperature. Each evaluated checkpoint's sweep is saved beside it in
the run directory (``sweep_best.json``, ``sweep_last.json``: the checkpoint's SHA-256, its
iteration, the evaluation's sample count and seed, the metrics per temperature). A later compare
with the same settings reuses it instead of evaluating again, and a run directory whose
checkpoints are gone (a curve committed without its weights) can still be compared from it.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
import time
from typing import Callable, Optional

from .checkpoint import BEST, CHECKPOINT
from .config import Config, learned_mediator
from .config_loading import flat_keys
from .data import load_dataset
from .errors import ConfigError
from .files import file_sha256
from .lm_score import load_lm_scorer
from .metrics import make_evaluator
from .rundir import checkpoint_models, resume_config, run_checkpoint

# Keys that say how or where a run was made, not what was trained: runs that differ only in
# these (and the seed) are repetitions of one configuration.
_BOOKKEEPING = ("run", "runtime", "eval")
_DATA_BOOKKEEPING = ("cache_dir", "vocab_path", "train_path", "test_path")
ORACLE_SHOWN = ("nll_oracle", "nll_test", "kl_forward", "kl_reverse", "entropy_g")
TEXT_SHOWN = ("bleu4", "self_bleu4", "nll_test")


def parse_temperatures(text: str) -> list[float]:
    """"0.7:1.3:0.1" (start:stop:step, both ends included) or "0.8,1,1.2" -> temperatures."""
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            n = int(math.floor((stop - start) / step + 1e-9)) + 1
            temps = [round(start + i * step, 10) for i in range(n)]
        else:
            temps = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--temperatures {text!r}: give START:STOP:STEP (e.g. 0.7:1.3:0.1) or a list "
                          "(e.g. 0.8,1,1.2)") from None
    if not temps or any(t <= 0 for t in temps):
        raise ConfigError(f"--temperatures {text!r}: temperatures must be > 0")
    return temps


def parse_reference(text: str) -> dict:
    """"LABEL=QUALITY/COVERAGE" -> {"label", "quality", "coverage"}: a published point to show
    beside the measured curves (on the oracle NLL_oracle / NLL_test, on text BLEU-4 /
    self-BLEU-4, in the order the tables give them), e.g. "CoT (paper)=8.19/8.03"."""
    label, sep, values = text.rpartition("=")
    parts = values.split("/")
    try:
        if not sep or not label.strip() or len(parts) != 2:
            raise ValueError
        quality, coverage = (float(p) for p in parts)
        if not (math.isfinite(quality) and math.isfinite(coverage)):
            raise ValueError
    except ValueError:
        raise ConfigError(f"--reference {text!r}: give LABEL=QUALITY/COVERAGE, e.g. 'CoT (paper)=8.19/8.03' "
                          "(NLL_oracle / NLL_test; on text BLEU-4 / self-BLEU-4)") from None
    return {"label": label.strip(), "quality": quality, "coverage": coverage}


def configuration(cfg: Config) -> dict:
    """What a run trained, without its seed, its bookkeeping and the settings its algorithm
    never reads (an MLE run's mediator, a MixCE run's TaiLr keys, a plain CoT run's inner
    mediator): runs with equal
    configurations are seeds of one configuration."""
    d = cfg.to_dict()
    for section in _BOOKKEEPING:
        d.pop(section, None)
    for key in _DATA_BOOKKEEPING:
        d["data"].pop(key, None)
    for section in ("mixce", "tailr"):
        if cfg.cot.algo != section:
            d.pop(section)
    if not learned_mediator(cfg):
        for section in ("mediator", "m_optim", "nested", "inner_mediator", "inner_optim"):
            d.pop(section)
        for key in ("m_steps", "sync_every") + (("mediator",) if cfg.cot.algo != "cot" else ()):
            d["cot"].pop(key)
    elif not cfg.nested.enabled:
        for section in ("inner_mediator", "inner_optim"):
            d.pop(section)
        d["nested"] = {"enabled": False}
    return d


def group_labels(configs: list[dict]) -> list[str]:
    """A short label per configuration: its algorithm, and the keys in which the compared
    configurations that have them differ (an MLE run has no mediator keys to name)."""
    flats = [flat_keys(c) for c in configs]
    differing = sorted(k for k in set().union(*flats)
                       if k != "cot.algo" and len({repr(f[k]) for f in flats if k in f}) > 1)
    labels = []
    for f in flats:
        extra = ", ".join(f"{k}={f[k]}" for k in differing if k in f)
        labels.append(f["cot.algo"] + (f" ({extra})" if extra else ""))
    return labels


def _mean_std(values: list[float]) -> tuple[float, Optional[float]]:
    """The mean and the sample standard deviation; None for the latter with one value (a spread
    needs two seeds)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return mean, std


def compare_runs(run_dirs: list[str], temperatures: list[float], checkpoints=("best", "last"),
                 samples: Optional[int] = None, seed: int = 0,
                 echo: Callable[[str], None] = lambda s: None, references: tuple = (),
                 lm_run: Optional[str] = None) -> dict:
    """Evaluate every run's checkpoints at every temperature; -> {"runs": [...], "groups": [...],
    "references": [...], "text": bool, "seconds": float}. Each run entry holds its directory,
    group, seed and, per checkpoint, the iteration and the metrics per temperature; each group
    entry the mean and standard deviation over its seeds; ``references`` (from
    :func:`parse_reference`) are kept under the metric names of the data set. ``lm_run`` (text):
    also the LM score under that MLE run's generator (:mod:`cot_ray.lm_score`); a saved sweep is
    reused only when it was scored by the same checkpoint of that model."""
    if not run_dirs:
        raise ConfigError("give at least one run directory to compare")
    t_all = time.perf_counter()
    cfgs = [resume_config(r) for r in run_dirs]
    texts = {c.data.source != "oracle" for c in cfgs}
    if len(texts) > 1:
        raise ConfigError("the runs mix oracle and text data: compare runs of one data set")
    configs = [configuration(c) for c in cfgs]
    keys, labels = [], {}
    for conf, label in zip(configs, group_labels(configs)):
        k = json.dumps(conf, sort_keys=True)
        keys.append(k)
        labels.setdefault(k, label)
    data = load_dataset(cfgs[0].data, run_dirs[0], "eval", max(c.eval.num_train for c in cfgs))
    lm, lm_digest = load_lm_scorer(lm_run, data) if lm_run else (None, None)
    runs = []
    for i, (run_dir, cfg) in enumerate(zip(run_dirs, cfgs)):
        ev = make_evaluator(data, cfg.eval, samples, lm)
        entry = {"run_dir": run_dir, "group": labels[keys[i]], "seed": cfg.run.seed, "checkpoints": {}}
        for which in checkpoints:
            path = os.path.join(run_dir, BEST if which == "best" else CHECKPOINT)
            settings = {"num_samples": ev.num_samples, "seed": seed, **({"lm_score": lm_digest} if lm else {})}
            saved = read_sweep(run_dir, which)
            digest = file_sha256(path) if os.path.exists(path) else None
            reused = sweep_covers(saved, settings, temperatures, digest)
            if reused is not None:
                entry["checkpoints"][which] = reused
                echo(f"[compare] run {i + 1}/{len(run_dirs)} {run_dir} {which} (iteration {reused['iteration']}): "
                     f"from its saved sweep ({SWEEP.format(which)})")
                continue
            if digest is None:
                why = "" if saved is None else f" and its {SWEEP.format(which)} holds other settings or temperatures"
                echo(f"[compare] {run_dir}: no {which} checkpoint{why}, skipped")
                continue
            state = run_checkpoint(cfg, path)
            g, m = checkpoint_models(cfg, state, data.vocab_size)
            t0 = time.perf_counter()
            echo(f"[compare] run {i + 1}/{len(run_dirs)} {run_dir} {which} (iteration {state['iteration']}): "
                 f"{len(temperatures)} temperatures...")
            results = ev.evaluate_temperatures(g, m, seed, temperatures)
            entry["checkpoints"][which] = {"iteration": int(state["iteration"]),
                                           "metrics": {f"{t:g}": r for t, r in zip(temperatures, results)}}
            echo(f"[compare]   done in {time.perf_counter() - t0:.0f} s")
            write_sweep(run_dir, which, saved, settings, digest, entry["checkpoints"][which], echo)
        runs.append(entry)
    groups = []
    for label in dict.fromkeys(labels[k] for k in keys):
        members = [r for r in runs if r["group"] == label]
        for which in checkpoints:
            have = [r for r in members if which in r["checkpoints"]]
            if not have:
                continue
            rows = []
            for t in temperatures:
                per_seed = [r["checkpoints"][which]["metrics"][f"{t:g}"] for r in have]
                stats = {}
                for k in per_seed[0]:
                    vals = [p[k] for p in per_seed if p.get(k) is not None]
                    if vals:
                        mean, std = _mean_std(vals)
                        stats[k] = {"mean": mean, "std": std}
                rows.append({"temperature": t, **stats})
            groups.append({"group": label, "checkpoint": which, "seeds": sorted(r["seed"] for r in have),
                           "iterations": [r["checkpoints"][which]["iteration"] for r in have], "rows": rows})
    text = texts.pop()
    y_key, x_key = _axes(text)
    refs = [{"label": r["label"], y_key: r["quality"], x_key: r["coverage"]} for r in references]
    return {"runs": runs, "groups": groups, "references": refs, "text": text, "temperatures": temperatures,
            "seconds": round(time.perf_counter() - t_all, 1)}


SWEEP = "sweep_{}.json"  # a checkpoint's saved temperature sweep, beside it in the run directory


def read_sweep(run_dir: str, which: str) -> Optional[dict]:
    """The saved sweep of a run's ``which`` ("best" or "last") checkpoint; None without one."""
    path = os.path.join(run_dir, SWEEP.format(which))
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sweep_covers(saved: Optional[dict], settings: dict, temperatures: list[float],
                 digest: Optional[str]) -> Optional[dict]:
    """A checkpoint entry ({"iteration", "metrics"} at ``temperatures``) from a saved sweep made
    with the same evaluation settings, holding every temperature asked for, and of the same
    checkpoint (``digest``; None: the checkpoint is gone, the sweep is all there is); else None."""
    if saved is None or saved["settings"] != settings or (digest is not None and saved["sha256"] != digest):
        return None
    keys = [f"{t:g}" for t in temperatures]
    if any(k not in saved["metrics"] for k in keys):
        return None
    return {"iteration": saved["iteration"], "metrics": {k: saved["metrics"][k] for k in keys}}


def write_sweep(run_dir: str, which: str, saved: Optional[dict], settings: dict, digest: str, entry: dict,
                echo: Callable[[str], None]) -> None:
    """Save (or extend, for the same checkpoint and settings) a checkpoint's sweep beside it; a run
    directory that cannot be written to (read-only) keeps none, with a note."""
    metrics = dict(entry["metrics"])
    if saved is not None and saved["settings"] == settings and saved["sha256"] == digest:
        metrics = {**saved["metrics"], **metrics}
    record = {"sha256": digest, "iteration": entry["iteration"], "settings": settings,
              "metrics": dict(sorted(metrics.items(), key=lambda kv: float(kv[0])))}
    path = os.path.join(run_dir, SWEEP.format(which))
    try:
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
        os.replace(path + ".tmp", path)
    except OSError as e:
        echo(f"[compare]   its sweep not saved ({path}: {e.strerror})")


def _axes(text: bool) -> tuple[str, str]:
    """The (quality, coverage) metric names of the quality-diversity plot."""
    return ("bleu4", "self_bleu4") if text else ("nll_oracle", "nll_test")


def markdown_table(result: dict) -> str:
    """The groups' mean ± std over seeds, one row per (group, checkpoint, temperature); a group
    of one seed shows its values alone."""
    shown = TEXT_SHOWN if result["text"] else ORACLE_SHOWN
    head = ["configuration", "checkpoint", "seeds", "T"] + list(shown)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in result["groups"]:
        for row in g["rows"]:
            cells = [g["group"], g["checkpoint"], str(len(g["seeds"])), f"{row['temperature']:g}"]
            cells += [_cell(row.get(k)) for k in shown]
            lines.append("| " + " | ".join(cells) + " |")
    if result.get("references"):
        y_key, x_key = _axes(result["text"])
        lines += ["", f"| published point | {y_key} | {x_key} |", "|---|---|---|"]
        lines += [f"| {r['label']} | {r[y_key]:.3f} | {r[x_key]:.3f} |" for r in result["references"]]
    return "\n".join(lines) + "\n"


def _cell(stat: Optional[dict]) -> str:
    if stat is None:
        return "-"
    return f"{stat['mean']:.3f}" if stat["std"] is None else f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def _group_label(g: dict) -> str:
    """A (group, checkpoint)'s name in the side-by-side table and the plot's legend."""
    n = len(g["seeds"])
    return f"{g['group']}, {g['checkpoint']} ({n} seed{'s' if n > 1 else ''})"


def curves_table(result: dict) -> str:
    """The quality-diversity curves side by side: one row per temperature, one column per
    (group, checkpoint) with its quality / coverage (oracle: NLL_oracle / NLL_test) there, mean
    ± std over seeds; "-" where a group has no row at that temperature."""
    y_key, x_key = _axes(result["text"])
    temps = sorted({r["temperature"] for g in result["groups"] for r in g["rows"]})
    head = ["T"] + [f"{_group_label(g)}: {y_key} / {x_key}" for g in result["groups"]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in temps:
        cells = [f"{t:g}"]
        for g in result["groups"]:
            row = next((r for r in g["rows"] if r["temperature"] == t), None)
            cells.append("-" if row is None else f"{_cell(row.get(y_key))} / {_cell(row.get(x_key))}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


PLOT_SKIPPED = ("plot skipped: quality_diversity.png needs matplotlib (pip install -e \".[bench]\"); "
                "compare.md and compare.json are written")


def can_plot() -> bool:
    """Whether matplotlib, which only the plot needs, can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_quality_diversity(result: dict, path: str) -> None:
    """Oracle: NLL_oracle against NLL_test; text: BLEU-4 against self-BLEU-4; one curve per
    (group, checkpoint) over the temperatures, with the seeds' standard deviation as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y_key, x_key = _axes(result["text"])
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for g in result["groups"]:
        rows = [r for r in g["rows"] if x_key in r and y_key in r]
        if not rows:
            continue
        xs = [r[x_key]["mean"] for r in rows]
        ys = [r[y_key]["mean"] for r in rows]
        ax.errorbar(xs, ys, xerr=[r[x_key]["std"] or 0.0 for r in rows], yerr=[r[y_key]["std"] or 0.0 for r in rows],
                    marker="o" if g["checkpoint"] == "best" else "s", ms=4, capsize=2, label=_group_label(g))
        for r, x, y in zip(rows, xs, ys):
            ax.annotate(f"{r['temperature']:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for r in result.get("references", []):
        ax.plot([r[x_key]], [r[y_key]], marker="*", ms=11, ls="none", color="black")
        ax.annotate(r["label"], (r[x_key], r[y_key]), fontsize=7, xytext=(5, -9), textcoords="offset points")
    if result["text"]:
        ax.set_xlabel("self-BLEU-4 (lower: more diverse)")
        ax.set_ylabel("BLEU-4 (higher: better quality)")
    else:
        ax.set_xlabel("NLL_test (lower: better coverage)")
        ax.set_ylabel("NLL_oracle (lower: better quality)")
    ax.set_title("quality against diversity over the softmax temperature")
    # Below the axes, labels wrapped: a configuration's label can be long, and beside the axes it
    # would squeeze them.
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, [textwrap.fill(label, 90) for label in labels], fontsize=7, loc="upper center",
              bbox_to_anchor=(0.5, -0.13), ncol=1, frameon=False)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def write_outputs(result: dict, out_dir: str, plot: bool = True) -> dict:
    """compare.json, compare.md and, with ``plot`` (it needs matplotlib: :func:`can_plot`),
    quality_diversity.png in ``out_dir``; -> their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "compare.json"), "markdown": os.path.join(out_dir, "compare.md")}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(markdown_table(result) + "\nThe curves side by side:\n\n" + curves_table(result))
    if plot:
        paths["plot"] = os.path.join(out_dir, "quality_diversity.png")
        plot_quality_diversity(result, paths["plot"])
    return paths
