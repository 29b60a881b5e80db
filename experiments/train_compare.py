"""Equal-budget training runs of several methods on one dataset, their table and learning curves.

    python -m experiments.train_compare --name acdc_cpu --methods pce gd hard soft full --seeds 0 1 \\
        --seeded pce soft -- --data acdc --backbone mobilenet_v2 --time-budget 480 ...

A method is a trainer method (pce, full, gd, hard, soft) or a variant LABEL=ARGS, e.g.
`soft-q="--method soft --relaxation quadratic"`.  Each run is `python -m train ARGS [variant args]
--method M --seed S --out RUNS/NAME/LABEL/seedS` (the same arguments and time budget for all); methods
named in --seeded run once per seed, the others with the first seed.  Finished runs are not repeated (a
run cut short resumes from its checkpoint).  OUT/NAME/ gets report.md (a table: mean and spread over seeds
of the validation score, per-class scores, steps; whether the paper's ordering soft > hard > gd > pce held;
the commands, device and commit), results.csv (a row per run) and curves.png (validation score against
training seconds).
"""
import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys

import torch

PAPER_ORDER = ("soft", "hard", "gd", "pce")


def parse_method(spec):
    """'soft' -> ('soft', ['--method', 'soft']); 'soft-q=--method soft --relaxation q' -> ('soft-q', [...])."""
    if "=" not in spec:
        return spec, ["--method", spec]
    label, args = spec.split("=", 1)
    return label, shlex.split(args)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--methods", nargs="+", default=["pce", "gd", "hard", "soft", "full"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--seeded", nargs="*", default=[], help="labels that run once per seed")
    parser.add_argument("--out", default=os.path.join("experiments", "results", "train"))
    parser.add_argument("--runs", default="runs", help="where the runs' checkpoints and logs go")
    parser.add_argument("--table-only", action="store_true", help="rebuild the table from finished runs")
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    train_args = [a for a in args.train_args if a != "--"]
    out = os.path.join(args.out, args.name)
    os.makedirs(out, exist_ok=True)
    rows = []
    for label, method_args in map(parse_method, args.methods):
        for seed in args.seeds if label in args.seeded else args.seeds[:1]:
            run = os.path.join(args.runs, args.name, label, f"seed{seed}")
            command = [sys.executable, "-m", "train", *train_args, *method_args, "--seed", str(seed),
                       "--out", run, "--no-progress", "--resume"]
            done = os.path.isfile(os.path.join(run, "results.json"))
            if not args.table_only and not done:
                print("$", shlex.join(["python", *command[1:]]), flush=True)
                subprocess.run(command, check=True)
            if not os.path.isfile(os.path.join(run, "results.json")):
                continue
            rows.append(run_row(label, seed, run, command))
    if not rows:
        raise SystemExit("no finished runs")
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "curve"])
        writer.writeheader()
        writer.writerows({k: v for k, v in row.items() if k != "curve"} for row in rows)
    plot_curves(os.path.join(out, "curves.png"), args.name, rows)
    write_report(os.path.join(out, "report.md"), args.name, rows)


def run_row(label, seed, run, command):
    with open(os.path.join(run, "results.json")) as f:
        results = json.load(f)
    per_class = results["scores"].get("dice", results["scores"]["iou"])
    curve = [(row["train_seconds"], row["score"]) for row in results["history"] if "train_seconds" in row]
    curve.append((results["train_seconds"], results.get("mean_dice", results["miou"])))
    return {"method": label, "seed": seed, "score": results.get("mean_dice", results["miou"]),
            "miou": results["miou"], "per_class": " ".join(f"{d:.3f}" for d in per_class),
            "steps": results["steps"], "epochs": results["epochs_done"],
            "train_seconds": round(results["train_seconds"]), "run": run,
            "command": shlex.join(["python", *command[1:]]), "curve": curve}


def summarise(rows):
    """{label: (mean score, spread (max - min), runs, rows)} in the order the labels first appear."""
    table = {}
    for row in rows:
        table.setdefault(row["method"], []).append(row)
    return {label: (sum(r["score"] for r in runs) / len(runs), max(r["score"] for r in runs) -
                    min(r["score"] for r in runs), len(runs), runs) for label, runs in table.items()}


def ordering_verdict(summary):
    present = [m for m in PAPER_ORDER if m in summary]
    if len(present) < 2:
        return "fewer than two of soft, hard, gd, pce ran: no ordering to check"
    held = all(summary[a][0] > summary[b][0] for a, b in zip(present, present[1:]))
    measured = " > ".join(sorted(present, key=lambda m: -summary[m][0]))
    text = f"the paper's ordering {' > '.join(present)} {'held' if held else 'did not hold'}: measured {measured}"
    if "full" in summary and "soft" in summary:
        text += f"; soft - full supervision = {summary['soft'][0] - summary['full'][0]:+.3f}"
    return text


def plot_curves(path, name, rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = {}
    for row in rows:
        first = row["method"] not in colours   # one legend entry per method, its seeds in one colour
        colour = colours.setdefault(row["method"], f"C{len(colours)}")
        seconds, scores = zip(*row["curve"])
        ax.plot(seconds, scores, "o-", color=colour, ms=3, label=row["method"] if first else None)
    ax.set_xlabel("training seconds")
    ax.set_ylabel("validation score (mean 3D Dice or mIoU)")
    ax.set_title(name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(path, name, rows):
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    summary = summarise(rows)
    lines = [f"# {name}", "", f"Device: {device}; torch {torch.__version__}; Python {platform.python_version()}; "
             f"commit {sha}.  Score: mean 3D Dice over the validation volumes (ACDC; per class RV, Myo, LV) "
             f"or mIoU (per class IoU).", "",
             "| method | runs | score (mean) | spread over seeds | per class (first seed) | steps | train seconds |",
             "|---|---|---|---|---|---|---|"]
    for label, (mean, spread, count, runs) in summary.items():
        lines.append(f"| {label} | {count} | {mean:.3f} | {spread:.3f} | {runs[0]['per_class']} | "
                     f"{runs[0]['steps']} | {runs[0]['train_seconds']} |")
    lines += ["", ordering_verdict(summary) + ".", "", "![validation score against training time](curves.png)", "",
              "Commands (each run resumable with the same command):", "", "```"] + \
             [row["command"] for row in rows] + ["```", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
