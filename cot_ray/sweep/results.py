"""The results of a sweep: one row per trial from Tune's saved experiment state, the table
``cot-ray tune`` prints, the best trial and its training config."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from ray import tune

from ..config import Config, selection_metric
from .spec import Sweep, plain


@dataclass
class TrialRow:
    """One line of the final table."""

    trial_id: str
    values: dict  # the varying search keys -> this trial's (final) values
    metric: Optional[float]  # tune.metric as the trial is judged by it (see trial_metric)
    iteration: int  # training iterations done
    restores: int  # restarts from a Tune checkpoint (PBT, resume, failures)
    status: str  # done (full budget) | stopped (by the scheduler, or by its own early stopping) | error | unfinished
    config: dict  # the trial's whole Tune config


def trial_rows(exp: str, sweep: Sweep) -> list[TrialRow]:
    """The trials of the experiment in ``exp``, from Tune's saved experiment state."""
    return [trial_row(t, sweep) for t in sorted(tune.ExperimentAnalysis(exp).trials, key=lambda t: t.trial_id)]


def trial_row(trial, sweep: Sweep, live: bool = False) -> TrialRow:
    """The row of one Tune trial. A trial that has not ended is "unfinished", or with ``live``
    (a sweep in progress) its Tune status in lower case (running, pending, paused)."""
    r = trial.last_result or {}
    if trial.status == "ERROR":
        status = "error"
    elif trial.status == "TERMINATED":
        status = "done" if r.get("budget_done") else "stopped"
    else:
        status = trial.status.lower() if live else "unfinished"
    metric = trial_metric(trial, sweep)
    return TrialRow(trial.trial_id, {k: plain(trial.config.get(k)) for k in sweep.varying},
                    metric, int(r.get("iteration", 0)),
                    int(r.get("restores", 0)), status, dict(trial.config))


def trial_metric(trial, sweep: Sweep) -> Optional[float]:
    """The value of ``tune.metric`` a trial is judged by: its last report; or, when the trials
    stop early on that very metric (``run.patience`` > 0 and ``tune.metric`` is ``eval/`` of the
    selection metric), its best report, the evaluation its best.pt holds."""
    name = sweep.tune.metric
    selected = selection_metric(sweep.base)
    if sweep.base.run.patience > 0 and selected is not None and name == f"eval/{selected}":
        best = (getattr(trial, "metric_analysis", None) or {}).get(name, {}).get(sweep.tune.mode)
        if best is not None:
            return float(best)
    last = (trial.last_result or {}).get(name)
    return None if last is None else float(last)


def best_row(rows: list[TrialRow], mode: str) -> Optional[TrialRow]:
    """The trial with the best final metric among those that did not fail."""
    ok = [r for r in rows if r.status != "error" and r.metric is not None and math.isfinite(r.metric)]
    if not ok:
        return None
    return (min if mode == "min" else max)(ok, key=lambda r: r.metric)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def format_table(rows: list[TrialRow], sweep: Sweep) -> str:
    """The trials as an aligned text table, best metric first."""
    sign = 1 if sweep.tune.mode == "min" else -1
    ordered = sorted(rows, key=lambda r: (r.metric is None, sign * (r.metric or 0.0)))
    head = ["trial"] + sweep.varying + [sweep.tune.metric, "iters", "restores", "status"]
    body = [[r.trial_id] + [_cell(r.values.get(k)) for k in sweep.varying]
            + [_cell(r.metric), str(r.iteration), str(r.restores), r.status] for r in ordered]
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head] + body)


def best_config(sweep: Sweep, row: TrialRow) -> Config:
    """The best trial's full training config, as ``cot-ray train --config`` takes it: the base
    config (its own run.logdir / run.name, the per-trial budget) with the trial's values."""
    return sweep.trial_config(row.config)
