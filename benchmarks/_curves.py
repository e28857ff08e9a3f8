"""Training curves of benchmark runs as one PNG (needs matplotlib; only ``--plot`` imports it)."""

from __future__ import annotations

import math


def plot_curves(curves: dict, keys: tuple, path: str, ln2_on: tuple = (), x: str = "minutes") -> None:
    """One panel per metric in ``keys``, one line per run against training minutes (or, with
    ``x="iteration"``, against iterations).

    curves: label -> the run's evaluation rows (``rundir.read_metrics``: ``iteration``,
    ``elapsed_s`` and the metrics); ``ln2_on``: the panels that get a dashed line at ln 2, the
    JSD's ceiling.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.4 * len(keys), 3.6), squeeze=False)
    axes = axes[0]
    # past matplotlib's 10 default colours two runs would share one: the line style tells them apart
    styles = ["-", "--", ":", "-."]
    for i, (label, rows) in enumerate(curves.items()):
        xs = [r["iteration"] if x == "iteration" else r["elapsed_s"] / 60 for r in rows]
        for ax, key in zip(axes, keys):
            ax.plot(xs, [r.get(key, math.nan) for r in rows], marker=".", label=label,
                    color=f"C{i % 10}", linestyle=styles[i // 10 % len(styles)])
            ax.set_title(key)
            ax.set_xlabel("iterations" if x == "iteration" else "training minutes (CPU)")
    for ax, key in zip(axes, keys):
        if key in ln2_on:
            ax.axhline(math.log(2), color="grey", lw=0.8, ls="--")
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))  # outside the panels: it hides no line
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
