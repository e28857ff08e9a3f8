"""Two long-horizon arms at equal iterations and at equal wall-clock.

A method whose iteration costs more (nested CoT: about twice a plain CoT iteration) has to be
judged at both: at equal iterations it shows what each update buys, at equal wall-clock what a
user gets for the same time. BASE and OTHER are run directories (``benchmarks/long_horizon.py``
arms); ``--cost-ratio R`` is OTHER's cost per iteration over BASE's, measured side by side on
one machine (docs/nested_long/iteration_cost.json: nested depth 1 over plain, 1.99).

    python benchmarks/equal_budget.py BASE_DIR OTHER_DIR --cost-ratio R [--plot FILE.png]

For each evaluation of OTHER at N iterations: OTHER's NLL_oracle / NLL_test and its mediator's
held-out NLL (m_nll_test) and train/test gap (m_nll_test - m_nll_train); BASE's at N (equal
iterations) and at its evaluation nearest R x N (equal wall-clock; blank where BASE has none
within half its evaluation spacing). Prints the Markdown table, then one JSON line with the
same rows. ``--plot``: NLL_oracle, NLL_test, m_nll_test and the gap against plain-iteration
equivalents (OTHER drawn twice: at its own iterations and at R x its iterations).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Optional

from _curves import plot_curves

from cot_ray.rundir import read_metrics

PLOT_KEYS = ("nll_oracle", "nll_test", "m_nll_test", "m_gap")


def with_gap(rows: list) -> list:
    """Evaluation rows with ``m_gap`` = m_nll_test - m_nll_train (the mediator's memorisation)."""
    return [{**r, "m_gap": r["m_nll_test"] - r["m_nll_train"]} if r.get("m_nll_test") is not None
            and r.get("m_nll_train") is not None else dict(r) for r in rows]


def nearest(rows: list, target: float) -> Optional[dict]:
    """The row whose iteration is nearest ``target``, if within half the spacing of the
    evaluations around it (a row far from the target compares unequal budgets)."""
    if not rows:
        return None
    row = min(rows, key=lambda r: abs(r["iteration"] - target))
    i = rows.index(row)
    neighbours = [rows[j]["iteration"] for j in (i - 1, i + 1) if 0 <= j < len(rows)]
    spacing = max((abs(row["iteration"] - n) for n in neighbours), default=0)
    return row if abs(row["iteration"] - target) <= spacing / 2 else None


def pair_rows(base: list, other: list, ratio: float) -> list:
    """Per evaluation of OTHER: itself, BASE at the same iteration and BASE at ~ratio x it."""
    by_iter = {r["iteration"]: r for r in base}
    out = []
    for r in other:
        n = r["iteration"]
        out.append({"iteration": n, "other": r, "base_equal_iterations": by_iter.get(n),
                    "base_equal_wallclock": nearest(base, ratio * n)})
    return out


def _cells(r: Optional[dict], where: str = "") -> list:
    """[NLL_oracle / NLL_test (where), M's NLL_test / gap] of an evaluation row; dashes without one."""
    if r is None:
        return ["-", "-"]
    mt = f"{r['m_nll_test']:.3f}" if r.get("m_nll_test") is not None else "-"
    gap = f"{r['m_gap']:.2f}" if "m_gap" in r else "-"
    return [f"{r['nll_oracle']:.3f} / {r['nll_test']:.3f}{where}", f"{mt} / {gap}"]


def markdown(rows: list, base_name: str, other_name: str, ratio: float) -> str:
    lines = [f"| iterations of {other_name} | {other_name}: NLL_oracle / NLL_test | its M: NLL_test / gap | "
             f"{base_name} at equal iterations | its M | {base_name} at equal wall-clock (its iteration) | its M |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        wall = row["base_equal_wallclock"]
        cells = ([f"{row['iteration']:,}"] + _cells(row["other"]) + _cells(row["base_equal_iterations"])
                 + _cells(wall, f" ({wall['iteration']:,})" if wall else ""))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\n(equal wall-clock: {base_name} at its evaluation nearest {ratio:g} x the iterations; "
                 "M's gap = its NLL of the test set minus that of its training sequences)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", help="the cheaper arm's run directory (e.g. plain CoT)")
    ap.add_argument("other", help="the costlier arm's run directory (e.g. nested CoT)")
    ap.add_argument("--cost-ratio", type=float, required=True,
                    help="OTHER's cost per iteration over BASE's, measured side by side")
    ap.add_argument("--plot", default="", help="draw the curves against plain-iteration equivalents to this PNG")
    args = ap.parse_args()
    if args.cost_ratio <= 0:
        ap.error(f"--cost-ratio {args.cost_ratio:g}: give OTHER's cost per iteration over BASE's, a positive number")
    names = [os.path.basename(os.path.normpath(d)) for d in (args.base, args.other)]
    base, other = (with_gap(read_metrics(d)) for d in (args.base, args.other))
    if not other:
        ap.error(f"{args.other} has no evaluations yet (metrics.jsonl): train it first")
    rows = pair_rows(base, other, args.cost_ratio)
    print(markdown(rows, names[0], names[1], args.cost_ratio))
    if args.plot:
        scaled = [{**r, "iteration": r["iteration"] * args.cost_ratio} for r in other]
        plot_curves({names[0]: base, f"{names[1]} (its iterations)": other,
                     f"{names[1]} (x {args.cost_ratio:g}: {names[0]}'s wall-clock)": scaled},
                    PLOT_KEYS, args.plot, x="iteration")
    print(json.dumps({"base": args.base, "other": args.other, "cost_ratio": args.cost_ratio, "rows": rows}))


if __name__ == "__main__":
    main()
