"""Equal-budget training runs of several methods on one dataset, and their table.

    python -m experiments.train_compare --name acdc_cpu --methods pce gd hard soft full -- \\
        --data acdc --backbone mobilenet_v2 --time-budget 480 ...

Each method runs `python -m train ARGS --method M --out OUT/NAME/M` in turn (the same arguments, seed and
time budget); OUT/NAME/report.md gets the table (validation mIoU, mean Dice for ACDC, steps, epochs,
seconds) with the exact commands, the device and the git commit, and results.csv the same rows.
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--methods", nargs="+", default=["pce", "gd", "hard", "soft", "full"])
    parser.add_argument("--out", default=os.path.join("experiments", "results", "train"))
    parser.add_argument("--runs", default="runs", help="where the runs' checkpoints and logs go")
    parser.add_argument("--table-only", action="store_true", help="rebuild the table from finished runs")
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    train_args = [a for a in args.train_args if a != "--"]
    out = os.path.join(args.out, args.name)
    os.makedirs(out, exist_ok=True)
    rows = []
    for method in args.methods:
        run = os.path.join(args.runs, args.name, method)
        command = [sys.executable, "-m", "train", *train_args, "--method", method, "--out", run, "--no-progress"]
        if not args.table_only:
            print("$", shlex.join(["python", *command[1:]]), flush=True)
            subprocess.run(command, check=True)
        with open(os.path.join(run, "results.json")) as f:
            results = json.load(f)
        per_class = results["scores"].get("dice", [])
        rows.append({"method": method, "miou": results["miou"], "mean_dice": results.get("mean_dice", ""),
                     "dice_per_class": " ".join(f"{d:.3f}" for d in per_class),
                     "steps": results["steps"], "epochs": results["epochs_done"],
                     "train_seconds": round(results["train_seconds"]), "command": shlex.join(["python", *command[1:]])})
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_report(os.path.join(out, "report.md"), args.name, rows)


def write_report(path, name, rows):
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    dice = any(row["mean_dice"] != "" for row in rows)
    lines = [f"# {name}", "", f"Device: {device}; torch {torch.__version__}; Python {platform.python_version()}; "
             f"commit {sha}.", "", "| method | val mIoU |" + (" mean 3D Dice | Dice RV, Myo, LV |" if dice else "") +
             " steps | epochs | train seconds |", "|---|---|" + ("---|---|" if dice else "") + "---|---|---|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['miou']:.3f} |" + (f" {row['mean_dice']:.3f} | {row['dice_per_class']} |" if dice else "") +
                     f" {row['steps']} | {row['epochs']} | {row['train_seconds']} |")
    lines += ["", "Commands:", "", "```"] + [row["command"] for row in rows] + ["```", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
