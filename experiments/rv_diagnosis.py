"""Why soft self-labeling loses the right ventricle (issue 37): per-class curves and tables of a study made by
experiments.train_compare whose arms change one thing each from the same warm-up.

    python -m experiments.rv_diagnosis --runs runs/acdc_rv_diagnosis --seeds 0 --out experiments/results/train/acdc_rv_diagnosis

Reads each arm's train_log.csv (or its packed copy; per training batch, the 2D Dice of the network's argmax
and of the pseudo-labels' argmax against the dense masks, which no method trains on) and results.json (or its
packed copy; the end, and its history: per epoch, the 3D Dice per class on the tuning patients).  Writes
OUT/per_class.csv, OUT/per_class.md (the table) and OUT/per_class.png (curves per class: network solid,
pseudo-labels dashed, training batches smoothed over 50 steps; the tuning patients' Dice per epoch).  Only the
tuning patients are scored: nothing here looks at the test patients.
"""
import argparse
import csv
import glob
import os

import numpy as np

from benchmarks import harness
from experiments.train_compare import read_log, read_results

CLASSES = ("RV", "Myo", "LV")


def read_dice(row, key):
    values = row.get(key) or ""
    return [float(v) if v else np.nan for v in values.split("/")] if values else [np.nan] * len(CLASSES)


def arm_record(folder, warmup_steps):
    results = read_results(folder)
    rows = [r for r in read_log(folder) if int(r["step"]) > warmup_steps]
    steps = np.array([int(r["step"]) for r in rows])
    net = np.array([read_dice(r, "net_dice") for r in rows])
    labels = np.array([read_dice(r, "label_dice") for r in rows])
    return {"results": results, "steps": steps, "net": net, "labels": labels, "evals": results["history"]}


def smooth(values, width=50):
    out = np.full_like(values, np.nan)
    for i in range(len(values)):
        window = values[max(0, i - width + 1): i + 1]
        out[i] = np.nanmean(window) if np.isfinite(window).any() else np.nan
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="the study's folder (RUNS/NAME of train_compare)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--warmup-steps", type=int, default=300)
    parser.add_argument("--last", type=int, default=100, help="steps at the end the batch Dice is averaged over")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    arms = {}
    for folder in sorted(glob.glob(os.path.join(args.runs, "*", "*", "seed*"))):
        if read_results(folder) is None:
            continue
        label, seed = folder.split(os.sep)[-3], int(folder.split(os.sep)[-1][4:])
        if label == "warmup" or seed not in args.seeds:
            continue
        arms.setdefault(label, []).append(arm_record(folder, args.warmup_steps))
    warmups = [read_results(os.path.join(args.runs, "warmup", f"seed{s}")) for s in args.seeds]
    warmups = [w for w in warmups if w is not None]
    rows = []
    for label, records in arms.items():
        tail = lambda key: np.nanmean([np.nanmean(r[key][-args.last:], 0) for r in records], 0)  # noqa: E731
        tune = np.mean([r["results"]["scores"]["dice"] for r in records], 0)
        net, labels = tail("net"), tail("labels")
        rows.append({"arm": label, "seeds": len(records),
                     "tune_dice": round(float(np.mean([r["results"]["score"] for r in records])), 4),
                     **{f"tune_{c}": round(float(v), 4) for c, v in zip(CLASSES, tune)},
                     **{f"batch_net_{c}": round(float(v), 4) for c, v in zip(CLASSES, net)},
                     **{f"batch_labels_{c}": ("" if np.isnan(v) else round(float(v), 4)) for c, v in zip(CLASSES, labels)},
                     "seconds_per_step": round(float(np.mean([r["results"]["train_seconds"] / max(1, len(r["steps"]))
                                                              for r in records])), 3)})
    rows.sort(key=lambda r: -r["tune_dice"])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "per_class.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| arm | tune Dice | RV | Myo | LV | batch net RV / Myo / LV | batch labels RV / Myo / LV |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        labels = " / ".join("-" if r["batch_labels_" + c] == "" else f"{r['batch_labels_' + c]:.3f}" for c in CLASSES)
        net = " / ".join(f"{r['batch_net_' + c]:.3f}" for c in CLASSES)
        lines.append(f"| {r['arm']} | {r['tune_dice']:.4f} | {r['tune_RV']:.3f} | {r['tune_Myo']:.3f} | "
                     f"{r['tune_LV']:.3f} | {net} | {labels} |")
    if warmups:
        tune = np.mean([w["scores"]["dice"] for w in warmups], 0)
        lines.append(f"| (warm-up, step {args.warmup_steps}) | {np.mean([w['score'] for w in warmups]):.4f} | "
                     f"{tune[0]:.3f} | {tune[1]:.3f} | {tune[2]:.3f} | | |")
    with open(os.path.join(args.out, "per_class.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(os.path.join(args.out, "per_class.png"), arms)


def label_mass(checkpoint, batches=3):
    """Per foreground class, over the unscribbled valid pixels of that class in the checkpoint's first training
    batches (pooled): the mean of y and of sigma at the true class, and the share of pixels where each's
    argmax is the true class.  y: solve() with the checkpoint run's settings (soft's)."""
    import pottsops
    import torch
    from experiments.warmup_labels import problems
    cases, reg = problems(checkpoint, batches)
    sums = np.zeros((len(CLASSES), 5))
    for logits, batch in cases:
        y = pottsops.solve(logits, batch["image"], batch["seeds"], relaxation=reg.relaxation, unary=reg.unary,
                           neighborhood=reg.neighborhood, eta=reg.eta, lam=reg.lam, sigma_rgb=reg.sigma_rgb,
                           mask=batch["mask"], iters=reg.solver_iters)
        sigma = torch.softmax(logits, 1)
        free = batch["mask"] & (batch["seeds"] == 255)
        for c in range(1, len(CLASSES) + 1):
            where = free & (batch["label"] == c)
            sums[c - 1] += [float(y[:, c][where].sum()), float(sigma[:, c][where].sum()),
                            float((y.argmax(1) == c)[where].sum()), float((sigma.argmax(1) == c)[where].sum()),
                            float(where.sum())]
    count = np.maximum(sums[:, 4:], 1)
    return {name: dict(zip(("y", "sigma", "y_argmax", "sigma_argmax"), (sums[c, :4] / count[c]).round(3).tolist()))
            for c, name in enumerate(CLASSES)}


def plot(path, arms):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5), sharex=True)
    for i, (label, records) in enumerate(arms.items()):
        colour, record = f"C{i % 10}", records[0]
        for c, name in enumerate(CLASSES):
            axes[0, c].plot(record["steps"], smooth(record["net"][:, c]), "-", color=colour, lw=1, label=label)
            if np.isfinite(record["labels"][:, c]).any():
                axes[0, c].plot(record["steps"], smooth(record["labels"][:, c]), "--", color=colour, lw=1)
            evals = [e for e in record["evals"] if f"dice_{c + 1}" in e]  # (the warm-up's epochs: none)
            steps, values = [int(e["step"]) for e in evals], [float(e[f"dice_{c + 1}"]) for e in evals]
            if values:
                axes[1, c].plot(steps, values, "-o", color=colour, lw=1, ms=3, label=label)
            axes[0, c].set_title(f"{name}: training batches (net -, labels --)")
            axes[1, c].set_title(f"{name}: tuning patients, 3D Dice")
    for ax in axes[1]:
        ax.set_xlabel("training step")
    axes[0, 0].set_ylabel("2D Dice vs the dense masks")
    axes[1, 0].set_ylabel("3D Dice")
    axes[1, 2].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    harness.save_figure(fig, path, dpi=90)


if __name__ == "__main__":
    main()
