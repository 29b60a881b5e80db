"""A paired training study: every method branches from one shared warm-up per seed, with the same data order
and the same number of steps, tuned on a split it does not report.

    python -m experiments.train_compare --name acdc_paired --seeds 0 1 2 3 4 --warmup-steps 400 --steps 800 \\
        --methods pce gd hard soft --grid gd=gd-lam:3e-4,1e-3 --grid soft=eta:0.3,1 --grid hard=eta:0.3,1 \\
        -- --data acdc --backbone unet --input-scale 0.5 --crop 96 96 \\
           --train-patients 21 70 --val-patients 71 80 --test-patients 81 100

Per seed s: the warm-up `python -m train ARGS --method pce --seed s --steps W+S --max-steps W` (RUNS/NAME/
warmup/seeds); then each method continues from its checkpoint (`--start-from`, `--warmup 0`) to step W+S, so
that all methods of a seed share the start, the data order and the schedule.  A method is a trainer method or
a variant LABEL=ARGS (`soft-q="--method soft --relaxation quadratic"`).  Tuning: a method with --grid
LABEL=FLAG:V1,V2 runs each value on the tuning seeds (default: the first) and keeps the one with the best
validation score (the trainer's val split, here the tuning patients); the other seeds run that value.  Two
--grid of one label tune their product (`--grid soft=lr:0.01,0.03 --grid soft=eta:0.01,0.03`: 4 runs).  The
report scores the test split (results.json "test"), which no choice looked at.  Finished runs are skipped and
a run cut short resumes from its checkpoint: the same command continues the study.

OUT/NAME/ gets runs.csv (a row per method and seed), differences.csv (paired differences with a t interval
over seeds and a bootstrap over seeds and test volumes), tuning.csv, report.md (plan.md from that folder, if
present, then the tables, the verdicts, the curves and the commands), curves.png and panels_LABEL.png.
"""
import argparse
import csv
import gzip
import io
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys

import numpy as np

from benchmarks import harness
from experiments import paired_stats

PAIRS = ("soft-gd", "soft-hard", "soft-pce", "gd-pce", "hard-pce")
RUN_FIELDS = ("method", "seed", "setting", "steps", "tune_dice", "test_dice", "rv", "myo", "lv",
              "train_seconds", "seconds_per_step")


def parse_method(spec):
    """'soft' -> ('soft', ['--method', 'soft']); 'soft-q=--method soft --relaxation q' -> ('soft-q', [...])."""
    if "=" not in spec:
        return spec, ["--method", spec]
    label, args = spec.split("=", 1)
    return label, shlex.split(args)


def product_grids(specs):
    """['soft=lr:0.01,0.03', 'soft=eta:0.1'] -> {'soft': [(('--lr', '0.01'), ('--eta', '0.1')), ...]}: each
    label's settings, one per run, the product of its --grid values."""
    grids = {}
    for label, flag, values in map(parse_grid, specs):
        grids[label] = [(*before, (flag, value)) for before in grids.get(label, [()]) for value in values]
    return grids


def parse_grid(spec):
    """'soft=eta:0.3,1' -> ('soft', '--eta', ['0.3', '1'])."""
    try:
        label, rest = spec.split("=", 1)
        flag, values = rest.split(":", 1)
    except ValueError:
        raise SystemExit(f"--grid: expected LABEL=FLAG:V1,V2,..., got {spec!r}") from None
    return label, "--" + flag.lstrip("-"), [v for v in values.split(",") if v]


class Study:
    def __init__(self, args, train_args):
        self.args, self.train_args = args, train_args
        self.root = os.path.join(args.runs, args.name)
        self.total = args.warmup_steps + args.steps

    def run(self, out, extra, seed, again=False):
        """Run `python -m train` into out unless it finished there (or again); the resumable command."""
        command = [sys.executable, "-m", "train", *self.train_args, *extra, "--seed", str(seed),
                   "--steps", str(self.total), "--out", out, "--no-progress", "--resume"]
        results = None if again else read_results(out)
        if results is None:
            if self.args.table_only:
                return None
            print("$", shlex.join(["python", *command[1:]]), flush=True)
            subprocess.run(command, check=True)
            results = read_results(out)
        return {"results": results, "out": out, "command": shlex.join(["python", *command[1:]])}

    def warmup(self, seed, again=False):
        out = os.path.join(self.root, "warmup", f"seed{seed}")
        return self.run(out, ["--method", "pce", "--max-steps", str(self.args.warmup_steps)], seed, again)

    def branch(self, label, method_args, setting, seed):
        """setting: ((flag, value), ...) from the method's grids, or () for none."""
        folder = "-".join(f"{flag.lstrip('-')}{value}" for flag, value in setting) or "default"
        out = os.path.join(self.root, label, folder, f"seed{seed}")
        start = os.path.join(self.root, "warmup", f"seed{seed}", "last.pt")
        finished = read_results(out) is not None
        if not finished and not self.args.table_only and not os.path.isfile(start):
            # the finished runs are committed without their checkpoints: a new branch of an old seed repeats
            # its warm-up, which gives the same weights (runs on the CPU are reproducible bit for bit)
            print(f"{start} is missing: its warm-up runs again", flush=True)
            self.warmup(seed, again=True)
        flags = [part for pair in setting for part in pair]
        extra = [*method_args, *flags, "--start-from", start, "--warmup", "0"]
        return self.run(out, extra, seed)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--methods", nargs="+", default=["pce", "gd", "hard", "soft"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--tune-seeds", nargs="+", type=int, help="seeds the grids run on (default: the first)")
    parser.add_argument("--grid", action="append", default=[], help="LABEL=FLAG:V1,V2 (tuned on the val split)")
    parser.add_argument("--grid-point", action="append", default=[],
                        help="LABEL=FLAG:V,FLAG:V: one more setting of a method's grid, beside the product of its "
                             "--grid values (to take a choice at an end past it without a whole row of runs)")
    parser.add_argument("--warmup-steps", type=int, required=True, help="pCE steps shared by every method")
    parser.add_argument("--steps", type=int, required=True, help="steps of each method after the warm-up")
    parser.add_argument("--pairs", nargs="*", default=list(PAIRS), help="A-B: differences to report")
    parser.add_argument("--out", default=os.path.join("experiments", "results", "train"))
    parser.add_argument("--runs", default="runs", help="where the runs' checkpoints and logs go")
    parser.add_argument("--table-only", action="store_true", help="rebuild the tables from finished runs")
    parser.add_argument("--pack", action="store_true", help="first pack the finished runs under RUNS/NAME for "
                                                            "committing (pack_run), then rebuild the tables")
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.pack:
        for folder, _, files in os.walk(os.path.join(args.runs, args.name)):
            if "results.json" in files:
                pack_run(folder)
        args.table_only = True
    study = Study(args, [a for a in args.train_args if a != "--"])
    methods = dict(map(parse_method, args.methods))
    grids = add_grid_points(product_grids(args.grid), args.grid_point)
    unknown = set(grids) - set(methods)
    if unknown:
        raise SystemExit(f"--grid: {sorted(unknown)} not among --methods")
    tune_seeds = args.tune_seeds or args.seeds[:1]

    warmups = {seed: study.warmup(seed) for seed in dict.fromkeys(tune_seeds + args.seeds)}
    tuning, chosen, tuned = [], {}, []
    for label, settings in grids.items():
        scores = {}
        for setting in settings:
            runs = [study.branch(label, methods[label], setting, seed) for seed in tune_seeds]
            runs = [r for r in runs if r is not None]
            if runs:
                scores[setting] = float(np.mean([r["results"]["score"] for r in runs]))
                gains = [late_gain(r["results"], args.steps // LATE_FRACTION) for r in runs]
                tuning.append({"method": label, "setting": setting_text(setting), "seeds": len(runs),
                               "tune_dice": round(scores[setting], 4),
                               "late_gain": round(float(np.mean(gains)), 4) if None not in gains else "",
                               "chosen": "", "edges": ""})
                tuned += [(label, setting_text(setting), r["results"]) for r in runs]
        if scores:
            chosen[label] = max(scores, key=scores.get)
            for row in tuning:
                if row["method"] == label and row["setting"] == setting_text(chosen[label]):
                    row["chosen"] = "yes"
                    row["edges"] = grid_edges(chosen[label], list(scores))  # the values that ran
    runs = []
    for seed in args.seeds:  # seed by seed: a study cut short leaves whole seeds, every method of them paired
        for label, method_args in methods.items():
            if label in grids and label not in chosen:
                continue
            run = study.branch(label, method_args, chosen.get(label, ()), seed)
            if run is not None:
                runs.append(run_row(label, seed, chosen.get(label, ()), run, args.warmup_steps))
    runs.sort(key=lambda r: list(methods).index(r["method"]))  # the tables list a method's seeds together
    if not runs:
        raise SystemExit("no finished runs")
    out = os.path.join(args.out, args.name)
    os.makedirs(out, exist_ok=True)
    write_csv(os.path.join(out, "runs.csv"), [{k: r[k] for k in RUN_FIELDS} for r in runs])
    if tuning:
        write_csv(os.path.join(out, "tuning.csv"), tuning)
    differences = paired_differences(runs, args.pairs)
    if differences:
        write_csv(os.path.join(out, "differences.csv"), differences)
    plot_curves(os.path.join(out, "curves.png"), args.name, runs, [w for w in warmups.values() if w])
    if tuned:
        plot_tuning_curves(os.path.join(out, "tuning_curves.png"), args.name, tuned)
    for label in methods:
        first = next((r for r in runs if r["method"] == label), None)
        if first and os.path.isfile(os.path.join(first["out"], "panels.png")):
            shutil.copyfile(os.path.join(first["out"], "panels.png"), os.path.join(out, f"panels_{label}.png"))
    given = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("--table-only", "--pack")]
    command = shlex.join(["python", "-m", "experiments.train_compare", *given])
    write_report(out, args, command, runs, tuning, differences, [w for w in warmups.values() if w])


def run_row(label, seed, setting, run, warmup_steps):
    results = run["results"]
    test = results.get("test", {"score": results["score"], "scores": results["scores"]})  # none held out: val
    dice = test["scores"].get("dice", test["scores"].get("iou"))
    seconds = _branch_seconds(run["out"], warmup_steps)
    return {"method": label, "seed": seed, "setting": setting_text(setting),
            "steps": results["steps"], "tune_dice": round(results["score"], 4), "test_dice": round(test["score"], 4),
            "rv": round(dice[0], 4), "myo": round(dice[1], 4), "lv": round(dice[2], 4) if len(dice) > 2 else "",
            "train_seconds": round(results["train_seconds"]), "seconds_per_step": seconds,
            "volumes": {name: float(np.nanmean(v)) for name, v in test["scores"].get("volumes", {}).items()},
            "history": results["history"], "out": run["out"], "command": run["command"], "held_out": "test" in results}


LATE_FRACTION = 5  # the tuning table's late gain: over the last fifth of a run's steps


def late_gain(results, window):
    """How much the tuning score still rose at the end of a run: the mean of its evaluations (the final one
    included) in the last `window` steps less the mean of those in the `window` steps before (means, not two
    single evaluations, which move by about 0.02 from one epoch to the next here).  Near 0 where the curve
    is flat; None where a window holds no evaluation."""
    points = results["history"] + [{"step": results["steps"], "score": results["score"]}]
    end = results["steps"]
    last = [h["score"] for h in points if end - window < h["step"] <= end]
    before = [h["score"] for h in points if end - 2 * window < h["step"] <= end - window]
    return float(np.mean(last) - np.mean(before)) if last and before else None


def plot_tuning_curves(path, name, tuned):
    """Every grid run's validation score against steps, a panel per method: whether the tuning runs were
    long enough (their curves flat at the end)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = list(dict.fromkeys(label for label, _, _ in tuned))
    columns = min(4, len(labels))
    rows = -(-len(labels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows), squeeze=False, sharey=True)
    for ax, label in zip(axes.flat, labels):
        for setting, results in [(s, r) for lab, s, r in tuned if lab == label]:
            history = results["history"] + [{"step": results["steps"], "score": results["score"]}]
            ax.plot([h["step"] for h in history], [h["score"] for h in history], "-", lw=1, label=setting or "-")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(labels):]:
        ax.set_visible(False)
    axes[0][0].set_ylabel("validation score (tuning split)")
    fig.suptitle(f"{name}: the tuning runs")
    fig.tight_layout()
    harness.save_figure(fig, path, dpi=90)


def add_grid_points(grids, specs):
    """grids with each 'soft=lr:0.3,eta:0.01' appended to its label's settings (flags as in its --grid, in their
    order), unless it is there already."""
    for spec in specs:
        label, _, rest = spec.partition("=")
        try:
            pairs = [part.split(":", 1) for part in rest.split(",")]
            point = tuple(("--" + flag.lstrip("-"), value) for flag, value in pairs)
        except ValueError:
            raise SystemExit(f"--grid-point: expected LABEL=FLAG:V,FLAG:V, got {spec!r}") from None
        if label not in grids or [f for f, _ in point] != [f for f, _ in grids[label][0]]:
            raise SystemExit(f"--grid-point {spec!r}: give one value of each flag of {label}'s --grid, in its order")
        if point not in grids[label]:
            grids[label].append(point)
    return grids


def grid_edges(setting, settings):
    """Which values of a chosen setting lie at an end of their flag's grid ('--lr top'), for the report: a
    choice at an end may lie past the grid, which a further value would show."""
    edges = []
    for i, (flag, value) in enumerate(setting):
        values = sorted(dict.fromkeys(s[i][1] for s in settings), key=float)
        if len(values) > 1 and value in (values[0], values[-1]):
            edges.append(f"{flag} {'lowest' if value == values[0] else 'highest'}")
    return ", ".join(edges)


def chosen_text(row):
    """The tuning table's 'chosen' cell: yes, with the values at an end of their grid."""
    if not row.get("chosen"):
        return ""
    return f"yes (at the end: {row['edges']})" if row.get("edges") else "yes"


def setting_text(setting):
    """(('--lr', '0.03'), ('--eta', '0.1')) -> '--lr 0.03 --eta 0.1'."""
    return " ".join(f"{flag} {value}" for flag, value in setting)


def _branch_seconds(out, warmup_steps):
    """Mean seconds per training step after the warm-up (forward, loss with its solve, backward, update)."""
    rows = read_log(out)
    if rows is None:
        return ""
    seconds = [float(row["seconds"]) for row in rows if int(row["step"]) > warmup_steps]
    return round(float(np.mean(seconds)), 4) if seconds else ""


PACKED_LOG_EVERY = 20  # a packed run keeps every 20th step of its training log (acdc_rv_diagnosis: every 10th)
PACKED = "run.json.gz"  # a packed run's one file


def pack_run(folder):
    """A finished run made small for committing: one file, PACKED, a gzipped JSON object of the run's files by
    name: config.json and results.json (parsed), the training log (text) with every PACKED_LOG_EVERY-th step and
    the last (enough for the seconds per step and the curves the tables read), its numbers to 5 significant
    digits (short_log).  The panels and the evaluation log (results.json's history has its rows; acdc_paired's
    runs keep theirs) go.  One file, not three, because a small file takes a whole disk block.  The checkpoints
    stay (git-ignored: a branch of a packed warm-up repeats it where last.pt is gone, to the same weights).
    The study reads packed runs as finished ones (read_results, read_log)."""
    packed = {}
    for name in ("config.json", "results.json"):
        with open(os.path.join(folder, name)) as f:
            packed[name] = json.load(f)
    log = os.path.join(folder, "train_log.csv")
    if os.path.isfile(log):
        with open(log, newline="") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [r for i, r in enumerate(rows[1:], 1) if i % PACKED_LOG_EVERY == 0 or i == len(rows) - 1]
        packed["train_log.csv"] = short_log(kept)
    temporary = os.path.join(folder, PACKED + ".tmp")
    with gzip.open(temporary, "wt") as f:
        json.dump(packed, f, separators=(",", ":"))
    os.replace(temporary, os.path.join(folder, PACKED))
    for name in ("config.json", "results.json", "train_log.csv", "eval_log.csv", "panels.png"):
        if os.path.isfile(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))


def short_log(rows):
    """A CSV log (header first) as text, each number to 5 significant digits (the 17 digits of a float cost most
    of a log's size and say nothing a table or a curve reads); integers and text stay as they are."""
    def short(value):
        try:
            return value if value.lstrip("-").isdigit() else f"{float(value):.5g}"
        except ValueError:
            return value
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(rows[0])
    writer.writerows([short(v) for v in row] for row in rows[1:])
    return text.getvalue()


def read_run_file(folder, name):
    """The text of a run's file `name`: the file itself while the run is unpacked, else its entry in PACKED (a
    parsed JSON value for the .json files), or None where the run has neither."""
    path = os.path.join(folder, name)
    if os.path.isfile(path):
        with open(path, newline="") as f:
            return json.load(f) if name.endswith(".json") else f.read()
    packed = os.path.join(folder, PACKED)
    if not os.path.isfile(packed):
        return None
    with gzip.open(packed, "rt") as f:
        return json.load(f).get(name)


def read_log(folder, name="train_log.csv"):
    """The rows of a run's CSV log (read_run_file), or None."""
    text = read_run_file(folder, name)
    return None if text is None else list(csv.DictReader(io.StringIO(text, newline="")))


def read_results(folder):
    """A finished run's results.json (read_run_file), or None."""
    return read_run_file(folder, "results.json")


def paired_differences(runs, pairs):
    """One row per pair A-B whose methods both ran on common seeds."""
    by = {(r["method"], r["seed"]): r for r in runs}
    rows = []
    for pair in pairs:
        a, b = split_pair(pair, {r["method"] for r in runs})
        seeds = sorted(s for (m, s) in by if m == a and (b, s) in by)
        if not seeds:
            continue
        per_seed = [by[a, s]["test_dice"] - by[b, s]["test_dice"] for s in seeds]
        mean, low, high = paired_stats.t_interval(per_seed)
        volumes = sorted(set.intersection(*(set(by[m, s]["volumes"]) for s in seeds for m in (a, b))))
        boot = (float("nan"),) * 2
        if volumes and len(seeds) > 1:
            table = lambda m: [[by[m, s]["volumes"][v] for v in volumes] for s in seeds]  # noqa: E731
            boot = paired_stats.bootstrap_interval(table(a), table(b))
        rows.append({"pair": pair, "mean": round(mean, 4), "ci_low": round(low, 4), "ci_high": round(high, 4),
                     "boot_low": round(boot[0], 4), "boot_high": round(boot[1], 4), "n_seeds": len(seeds),
                     "resolvable": round(paired_stats.smallest_resolvable(per_seed), 4),
                     "per_seed": " ".join(f"{d:+.4f}" for d in per_seed)})
        for part in ("rv", "myo", "lv"):  # the classes' differences, each with its t interval over seeds
            if all(by[m, s][part] != "" for s in seeds for m in (a, b)):
                part_mean, part_low, part_high = paired_stats.t_interval([by[a, s][part] - by[b, s][part]
                                                                          for s in seeds])
                rows[-1].update({f"{part}_mean": round(part_mean, 4), f"{part}_low": round(part_low, 4),
                                 f"{part}_high": round(part_high, 4)})
    return rows


def split_pair(pair, labels):
    """'soft-q-soft' -> ('soft-q', 'soft'): the split whose both sides are labels that ran."""
    parts = pair.split("-")
    for i in range(1, len(parts)):
        a, b = "-".join(parts[:i]), "-".join(parts[i:])
        if a in labels and b in labels:
            return a, b
    return pair, ""


def verdicts(differences, labels):
    """What the intervals support: a claim holds where both its intervals exclude 0."""
    def sign(row):
        if row["ci_low"] > 0 and row["boot_low"] > 0:
            return 1
        if row["ci_high"] < 0 and row["boot_high"] < 0:
            return -1
        return 0
    by = {row["pair"]: row for row in differences}
    lines = []
    for pair, row in by.items():
        a, b = split_pair(pair, labels)
        if row["n_seeds"] < 2:
            lines.append(f"- {a} against {b}: {row['mean']:+.4f} on one seed, which supports no claim")
            continue
        word = {1: "better than", -1: "worse than", 0: "not distinguishable from"}[sign(row)]
        lines.append(f"- {a} is {word} {b}: {row['mean']:+.4f} (t {row['ci_low']:+.4f} .. {row['ci_high']:+.4f}; "
                     f"bootstrap {row['boot_low']:+.4f} .. {row['boot_high']:+.4f}; {row['n_seeds']} seeds)")
    if "soft-gd" in by and "soft-hard" in by:
        held = sign(by["soft-gd"]) > 0 and sign(by["soft-hard"]) > 0
        lines.append(f"- the paper's claim soft > max(gd, hard) {'holds' if held else 'is not supported'} here")
    scribble = [p for p in ("gd-pce", "hard-pce", "soft-pce") if p in by]
    if scribble:
        held = all(sign(by[p]) > 0 for p in scribble)
        lines.append(f"- every scribble method > pce {'holds' if held else 'is not supported'} here")
    return lines


def plot_curves(path, name, runs, warmups):
    """Validation (tuning split) score against steps: each method's seeds in one colour, the warm-ups grey."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for warmup in warmups:
        history = warmup["results"]["history"] + [{"step": warmup["results"]["steps"],
                                                   "score": warmup["results"]["score"]}]
        ax.plot([h["step"] for h in history], [h["score"] for h in history], "-", color="0.6", lw=1)
    colours = {}
    for run in runs:
        first = run["method"] not in colours
        colour = colours.setdefault(run["method"], f"C{len(colours)}")
        history = run["history"] + [{"step": run["steps"], "score": run["tune_dice"]}]
        ax.plot([h["step"] for h in history], [h["score"] for h in history], "-", color=colour, lw=1,
                label=run["method"] if first else None)
    ax.set_xlabel("training step (grey: the shared pCE warm-up)")
    ax.set_ylabel("validation score (tuning split)")
    ax.set_title(name)
    ax.legend()
    fig.tight_layout()
    harness.save_figure(fig, path, dpi=110)


def write_report(out, args, command, runs, tuning, differences, warmups):
    import torch
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    lines = []
    plan = os.path.join(out, "plan.md")
    if os.path.isfile(plan):
        with open(plan) as f:
            lines += [f.read().rstrip(), ""]
    lines += [f"## Results ({args.name})", "",
              f"Device: {device}; torch {torch.__version__}; Python {platform.python_version()}; commit {sha}.  "
              f"{args.warmup_steps} shared pCE warm-up steps, then {args.steps} steps per method.  Scores: "
              + ("mean 3D Dice (RV, Myo, LV) or mIoU on the test split; tune: the same on the tuning split."
                 if all(r["held_out"] for r in runs) else
                 "**no held-out split was given: the 'test' columns are the validation split, the one any grid "
                 "was tuned on**."), "",
              "| method | setting | seeds | test Dice (mean ± sd) | RV | Myo | LV | tune Dice | s / step |",
              "|---|---|---|---|---|---|---|---|---|"]
    for label in dict.fromkeys(r["method"] for r in runs):
        rs = [r for r in runs if r["method"] == label]
        mean = lambda key: float(np.mean([float(r[key]) for r in rs]))  # noqa: E731
        test = (f"{mean('test_dice'):.4f} ± {np.std([r['test_dice'] for r in rs], ddof=1):.4f}" if len(rs) > 1
                else f"{mean('test_dice'):.4f} (one seed)")
        per_step = [r["seconds_per_step"] for r in rs if r["seconds_per_step"] != ""]
        lines.append(f"| {label} | {rs[0]['setting'] or '-'} | {len(rs)} | {test} | "
                     f"{mean('rv'):.3f} | {mean('myo'):.3f} | {mean('lv'):.3f} | {mean('tune_dice'):.4f} | "
                     f"{np.mean(per_step) if per_step else float('nan'):.3f} |")
    if warmups:
        scores = [w["results"]["test"]["score"] for w in warmups if "test" in w["results"]]
        if scores:
            lines += ["", f"The warm-up checkpoints themselves (step {args.warmup_steps}): test Dice "
                          f"{np.mean(scores):.4f} (mean of {len(scores)})."]
    if tuning:
        window = args.steps // LATE_FRACTION
        lines += ["", "Tuning (validation split, tuning seeds only; chosen: the best of its method's grid, and which "
                      f"of its values lie at an end of their grid; late gain: the mean score over the last {window} "
                      f"steps less that over the {window} before, near 0 where the curve is flat; every curve in "
                      "tuning_curves.png):", "",
                  "| method | setting | seeds | tune Dice | late gain | chosen |", "|---|---|---|---|---|---|"]
        lines += [f"| {t['method']} | {t['setting']} | {t['seeds']} | {t['tune_dice']:.4f} | "
                  f"{t['late_gain'] if t['late_gain'] == '' else format(t['late_gain'], '+.4f')} | {chosen_text(t)} |"
                  for t in tuning]
    if differences:
        lines += ["", "Paired differences of test Dice (A - B, same seeds; 95 % intervals: t over seeds, and a "
                      "bootstrap over seeds and test volumes; resolvable: the true difference a paired t test "
                      "detects with 80 % power given the measured spread):", "",
                  "| pair | mean | t interval | bootstrap interval | seeds | resolvable | per seed |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {d['pair']} | {d['mean']:+.4f} | " + (
                  f"{d['ci_low']:+.4f} .. {d['ci_high']:+.4f} | {d['boot_low']:+.4f} .. {d['boot_high']:+.4f} | "
                  f"{d['n_seeds']} | {d['resolvable']:.4f} |" if d["n_seeds"] > 1 else
                  f"- | - | {d['n_seeds']} | - (one seed) |") + f" {d['per_seed']} |" for d in differences]
        by_class = [d for d in differences if d["n_seeds"] > 1 and "rv_mean" in d]
        if by_class:
            cell = lambda d, k: f"{d[k + '_mean']:+.3f} ({d[k + '_low']:+.3f} .. {d[k + '_high']:+.3f})"  # noqa: E731
            lines += ["", "Per class (paired differences of each class's test Dice, A - B; 95 % t interval over "
                          "seeds; pairs with more than one seed):", "", "| pair | seeds | RV | Myo | LV |",
                      "|---|---|---|---|---|"]
            lines += [f"| {d['pair']} | {d['n_seeds']} | {cell(d, 'rv')} | {cell(d, 'myo')} | {cell(d, 'lv')} |"
                      for d in by_class]
        lines += ["", "What the intervals support:", ""] + verdicts(differences, {r["method"] for r in runs})
    lines += measured_at_warmup(out)
    lines += ["", "![validation score against steps](curves.png)", ""]
    if tuning:
        lines += ["![the tuning runs' validation scores against steps](tuning_curves.png)", ""]
    lines += ["Commands (the study's command reruns nothing that finished and resumes what was cut short):", "",
              "```", command,
              *dict.fromkeys([w["command"] for w in warmups] + [r["command"] for r in runs]), "```", ""]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines[-40:]))


def measured_at_warmup(out):
    """The tables of experiments.warmup_labels, where it wrote them into this folder: mean over seeds."""
    lines = []
    path = os.path.join(out, "label_quality.csv")
    if os.path.isfile(path):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        lines += ["", f"Pseudo-labels at the warm-up checkpoints (experiments.warmup_labels; training crops, Dice "
                      f"against the ground truth, mean over {len({r['seed'] for r in rows})} seeds; per seed in "
                      f"label_quality.csv):", "", "| labels | RV | Myo | LV | mean | range over seeds |",
                  "|---|---|---|---|---|---|"]
        for name in dict.fromkeys(r["labels"] for r in rows):
            rs = [r for r in rows if r["labels"] == name]
            mean = lambda k: np.mean([float(r[k]) for r in rs])  # noqa: E731
            values = [float(r["mean"]) for r in rs]
            lines.append(f"| {name} | {mean('rv'):.3f} | {mean('myo'):.3f} | {mean('lv'):.3f} | {mean('mean'):.3f} | "
                         f"{min(values):.3f}–{max(values):.3f} |")
    path = os.path.join(out, "solver_steps.csv")
    if os.path.isfile(path):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        lines += ["", "Solver steps on the same problems (soft's cd + cce; gap (E - E*) / (E* - L); median over the "
                      "seeds of each seed's median):", "", "| solver lr | steps | median gap | 90th percentile | "
                      "s / batch |", "|---|---|---|---|---|"]
        for lr, iters in dict.fromkeys((r.get("lr", "default"), r["iters"]) for r in rows):
            rs = [r for r in rows if r.get("lr", "default") == lr and r["iters"] == iters]
            median = lambda k: np.median([float(r[k]) for r in rs])  # noqa: E731
            lines.append(f"| {lr} | {iters} | {median('median_gap'):.4g} | {median('p90_gap'):.4g} | "
                         f"{np.mean([float(r['seconds_per_batch']) for r in rs]):.3f} |")
    return lines


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
