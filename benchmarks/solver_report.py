"""report.md and curves.png of the solver benchmark from its CSVs (benchmarks/solver_quality.py).

    python -m benchmarks.solver_report --out benchmarks/results/solver-quality
"""
import argparse
import csv
import math
import os
import statistics
from collections import defaultdict

import numpy as np

from benchmarks import harness
from benchmarks.solver_problems import BEST_FIELDS, read_best
from benchmarks.solver_quality import CONFIGS, GRAPH_CUT, PLAIN_ADAM, WALKER

AIM = 1e-2


def read(path):
    with harness.open_text(path) as f:
        return list(csv.DictReader(f))


def quality(rows, dataset):
    """mIoU over the classes present (CamVid) or mean Dice of RV, Myo and LV (ACDC), pooled over images."""
    tp, fp, fn = sum(np.array(r["class_counts"].split(), dtype=np.int64) for r in rows).reshape(3, -1)
    if dataset == "acdc":
        return float(np.mean(2 * tp[1:] / np.maximum(2 * tp[1:] + fp[1:] + fn[1:], 1)))
    present = tp + fn > 0
    return float(np.mean((tp / np.maximum(tp + fp + fn, 1))[present]))


def median(values, fmt="{:.2g}"):
    values = [v for v in values if not math.isnan(v)]
    return fmt.format(statistics.median(values)) if values else "–"


def floats(rows, field):
    return [float(r[field]) if r[field] != "" else math.nan for r in rows]


def budget_seconds(rows):
    """A tenth of the plain Adam loop's median time per image, per (dataset, neighbourhood)."""
    times = defaultdict(list)
    for r in rows:
        if r["method"] == PLAIN_ADAM:
            times[r["dataset"], r["neighborhood"]].append(float(r["seconds"]))
    return {key: statistics.median(t) / 10 for key, t in times.items()}


def final_gap(row, best):
    """The run's gap to the lowest energy known now (another run may have found a lower one since)."""
    lowest = float(best[tuple(row[k] for k in BEST_FIELDS[:6])]["energy"])
    energy, lower, start = float(row["energy"]), float(row["lower"]), float(row["start_energy"])
    return (energy - lowest) / max(lowest - lower, 1e-3 * (start - lower), 1e-12)


INDEPENDENT = (GRAPH_CUT, "exact harmonic")  # E* found by a method other than solve()


def provenance(keys, best):
    """Where the E* of these problems come from: 'independent' (α-expansion or the harmonic solve, for every
    image), 'certified ≤ w' (every image has a certified lower bound on its minimum, w the largest width
    (E* - bound) / (E* - L)), or 'solve()' (the lowest this solver found)."""
    rows = [best[k] for k in keys if k in best]
    if not rows:
        return "–"
    if all(r["found_by"] in INDEPENDENT for r in rows):
        return "independent"
    if all(r.get("bound") for r in rows):
        width = max((float(r["energy"]) - float(r["bound"])) / max(float(r["energy"]) - float(r["lower"]), 1e-12)
                    for r in rows)
        return f"certified ≤ {max(width, 0.0):.1g}"
    independent = sum(r["found_by"] in INDEPENDENT for r in rows)
    return "solve()" if not independent else f"{independent}/{len(rows)} independent"


def problem_keys(rows):
    return list(dict.fromkeys(tuple(r[k] for k in BEST_FIELDS[:6]) for r in rows))


def method_cells(rows, dataset, budget, best):
    if not rows:
        return ["–"] * 7
    gap = [final_gap(r, best) for r in rows]
    reached = floats(rows, "seconds_to_1e-2")
    met = sum(s <= budget for s in reached if not math.isnan(s)) if budget else None
    return [median(floats(rows, "seconds"), "{:.3f}"), median(gap), f"{max(gap):.2g}",
            f"{sum(g <= AIM for g in gap)}/{len(rows)}", "–" if met is None else f"{met}/{len(rows)}",
            median(reached, "{:.3f}"), f"{quality(rows, dataset):.3f}"]


def tables(rows, budgets, best):
    groups = defaultdict(list)
    for r in rows:
        key = (r["dataset"], r["neighborhood"], r["start"], r["relaxation"], r["unary"], r["method"], r["label"])
        groups[key].append(r)
    lines = []
    for dataset, neighborhood in dict.fromkeys((r["dataset"], r["neighborhood"]) for r in rows):
        labels = list(dict.fromkeys(r["label"] for r in rows if r["method"] == "solve" and r["dataset"] == dataset
                                    and r["neighborhood"] == neighborhood))  # code versions measured here
        budget = budgets.get((dataset, neighborhood))
        metric = "Dice" if dataset == "acdc" else "mIoU"
        images = len({r["image"] for r in rows if r["dataset"] == dataset and r["neighborhood"] == neighborhood})
        shown = "–" if budget is None else f"{budget:.3f} s"
        lines += [f"### {dataset}, {neighborhood} ({images} images; budget {shown} = a tenth of the plain Adam "
                  "loop's median time)", "",
                  "| start | relaxation + unary | E* | method | median s | median gap | max gap "
                  f"| gap ≤ 1e-2 at the end | 1e-2 within budget | median s to 1e-2 | {metric} |", "|---" * 11 + "|"]
        for start in ("zero", "noisy"):
            for relaxation, unary in CONFIGS:
                here = [label for label in labels  # the code versions measured on this configuration
                        if (dataset, neighborhood, start, relaxation, unary, "solve", label) in groups]
                for label in labels:
                    for method in ("solve", "levels=0", "levels=3", "mirror_descent", "alpha_expansion", GRAPH_CUT,
                                   PLAIN_ADAM):
                        chosen = groups.get((dataset, neighborhood, start, relaxation, unary, method, label), [])
                        if chosen and (method == "solve" or label == here[-1]):
                            name = method if len(here) == 1 or method != "solve" else f"solve @{label}"
                            cells = method_cells(chosen, dataset, budget if method != PLAIN_ADAM else None, best)
                            origin = provenance(problem_keys(chosen), best)
                            lines.append(f"| {start} | {relaxation}+{unary} | {origin} | {name} | "
                                         + " | ".join(cells) + " |")
            shown = {r["image"] for r in rows if r["dataset"] == dataset and r["neighborhood"] == neighborhood}
            walker = list({r["image"]: r for r in rows if r["dataset"] == dataset and r["method"] == WALKER
                           and r["start"] == start and r["image"] in shown}.values())  # the table's images, once
            if walker:
                seconds = median(floats(walker, "seconds"), "{:.3f}")
                lines.append(f"| {start} | – | – | {WALKER} | {seconds} | – | – | – | – | – | "
                             f"{quality(walker, dataset):.3f} |")
        lines.append("")
    return lines


def summary(rows, budgets, best, neighborhood="nn4"):
    """solve() with its defaults (the latest code measured on each configuration) at a glance: per
    relaxation + unary and (dataset, start), the median gap at the end, and the images within 1e-2 inside
    the budget."""
    columns = [(d, st) for d in dict.fromkeys(r["dataset"] for r in rows) for st in ("zero", "noisy")]
    lines = [f"| {neighborhood}: relaxation + unary | " + " | ".join(f"{d}, {st}" for d, st in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for relaxation, unary in CONFIGS:
        cells = []
        for dataset, start in columns:
            chosen = [r for r in rows if (r["dataset"], r["neighborhood"], r["start"], r["relaxation"], r["unary"],
                                          r["method"]) == (dataset, neighborhood, start, relaxation, unary, "solve")]
            latest = chosen[-1]["label"] if chosen else None
            chosen = [r for r in chosen if r["label"] == latest]
            if not chosen:
                cells.append("–")
                continue
            budget = budgets.get((dataset, neighborhood))
            reached = [float(r["seconds_to_1e-2"]) for r in chosen if r["seconds_to_1e-2"] != ""]
            within = sum(t <= budget for t in reached) if budget else 0
            gap = statistics.median(final_gap(r, best) for r in chosen)
            origin = provenance(problem_keys(chosen), best)
            mark = {"independent": " †"}.get(origin, " ‡" if origin.startswith("certified") else "")
            cells.append(f"{gap:.2g} ({within}/{len(chosen)}){mark}")
        lines.append(f"| {relaxation}+{unary} | " + " | ".join(cells) + " |")
    return lines


def plot(curves, rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = list(dict.fromkeys((c["dataset"], c["neighborhood"]) for c in curves))
    fig, axes = plt.subplots(len(panels), 2, figsize=(11, 3.2 * len(panels)), squeeze=False)
    colours = dict(zip(CONFIGS, plt.cm.tab10.colors))
    for (dataset, neighborhood), row in zip(panels, axes):
        for ax, start in zip(row, ("zero", "noisy")):
            for relaxation, unary in CONFIGS:
                points = [(float(c["x"]), float(c["median_gap"])) for c in curves
                          if (c["dataset"], c["neighborhood"], c["start"], c["relaxation"], c["unary"], c["method"],
                              c["axis"]) == (dataset, neighborhood, start, relaxation, unary, "solve", "seconds")]
                if points:
                    x, y = zip(*points)
                    ax.plot(x, np.maximum(y, 1e-6), color=colours[relaxation, unary], label=f"{relaxation}+{unary}")
                wanted = (dataset, neighborhood, start, relaxation, unary, PLAIN_ADAM)
                adam = [r for r in rows if (r["dataset"], r["neighborhood"], r["start"], r["relaxation"], r["unary"],
                                            r["method"]) == wanted]
                if adam:
                    ax.scatter([statistics.median(floats(adam, "seconds"))],
                               [max(statistics.median(floats(adam, "gap")), 1e-6)], marker="x",
                               color=colours[relaxation, unary])
            ax.axhline(AIM, color="grey", linestyle=":", linewidth=1)
            ax.set(xscale="log", yscale="log", xlabel="seconds per image (2 threads)", ylabel="median gap",
                   title=f"{dataset}, {neighborhood}, {start} start")
        row[0].legend(fontsize=7, ncol=2)
    fig.suptitle("solve(): median gap to the lowest known energy against time (x: plain Adam loop, 300 steps)")
    fig.tight_layout()
    harness.save_figure(fig, path, dpi=80)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/solver-quality")
    args = parser.parse_args(argv)
    rows = read(os.path.join(args.out, "runs.csv.gz"))
    curves = read(os.path.join(args.out, "curves.csv.gz"))
    bad = [r for r in rows if r["check"]]
    env = harness.environment(__import__("torch").device("cpu"))
    lines = ["# solve(): time to quality on CamVid and ACDC", "",
             f"`python -m benchmarks.solver_quality` then `python -m benchmarks.solver_report`, {env['device']}, "
             f"torch {env['torch']}; code: {', '.join(dict.fromkeys(r['label'] for r in rows))}.", "",
             "Gap: (E - E*) / (E* - L), E* the lowest energy known for the image (best_energies.csv.gz: long runs, the "
             "exact minimiser where one exists, α-expansion for bl+ce, every run here; the E* column says where it "
             "comes from), L the unary's lower bound (the energy's constant "
             "part); a thousandth of the start's excess where E* - L is smaller.  Medians over images; \"1e-2 within "
             "budget\": images whose run got within 1e-2 in at most the budget; the quality column pools argmax(y) "
             "over the images (CamVid: mIoU, ACDC: mean Dice of RV, Myo, LV over the pooled slices).", "",
             f"Runs that failed the check (finite, simplex, seeds, energy not above the start's): {len(bad)}.", ""]
    best = read_best(os.path.join(args.out, "best_energies.csv.gz"))
    lines += ["## solve() defaults at a glance", "",
              "Median gap at the end (images that got within 1e-2 inside the budget / images), per neighbourhood. "
              "† E* from a method solve() did not run (α-expansion for bl+ce, the harmonic solve), so the gap is "
              "measured against an independent reference; ‡ E* certified by a Frank-Wolfe duality gap (the quadratic "
              "relaxation is convex; the width is in the tables below); unmarked: E* is the lowest energy solve() "
              "itself found (long runs), which says how far a run is from the solver's own best, not from the "
              "minimum.", ""]
    for neighborhood in dict.fromkeys(r["neighborhood"] for r in rows):
        lines += summary(rows, budget_seconds(rows), best, neighborhood) + [""]
    lines += ["## Every method", ""] + tables(rows, budget_seconds(rows), best)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(curves, rows, os.path.join(args.out, "curves.png"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
