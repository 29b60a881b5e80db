"""Benchmark CLI over the case registry.

    python -m benchmarks.run --suite cpu --out benchmarks/results/cpu
    python -m benchmarks.run --suite gpu --out $OUT/bench

Writes OUT/results.csv (long format, appended), OUT/results.md (table) and OUT/speedups.png.
"""
import argparse
import os

import torch

import pottsops
from benchmarks import cases, harness

RELAXATIONS = pottsops.RELAXATIONS


def cpu_suite(quick):
    backends = ["cpu", "reference", "compile(reference)"]
    shape = (2, 21, 128, 128) if quick else (2, 21, 256, 256)
    suite = [cases.potts_case(r, nb, shape, torch.float32, "fwd+bwd", backends)
             for nb in ("nn4", "nn8") for r in (RELAXATIONS[:2] if quick else RELAXATIONS)]
    suite += [cases.unary_case(kind, shape, torch.float32, "fwd+bwd", backends) for kind in pottsops.UNARIES]
    return suite


SUITES = {"cpu": cpu_suite}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), required=True)
    parser.add_argument("--out", required=True, help="folder for results.csv, results.md, speedups.png")
    parser.add_argument("--quick", action="store_true", help="small shapes and few variants (smoke test)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.suite.startswith("gpu") else "cpu")
    os.makedirs(args.out, exist_ok=True)
    env = harness.environment(device)
    bandwidth = harness.copy_bandwidth(device)
    print(f"{env}; copy bandwidth {bandwidth / 1e9:.1f} GB/s", flush=True)
    suite = SUITES[args.suite](args.quick)
    rows = []
    for i, case in enumerate(suite):
        case_rows = harness.measure(case, device, bandwidth, input_sets=1 if device.type == "cpu" else 3)
        rows += case_rows
        summary = {r["backend"]: r["value"] for r in case_rows if r["metric"] in ("time_ms", "check", "error")}
        print(f"[{i + 1}/{len(suite)}] {case.op} {case.variant} {case.shape_str} {case.dtype_str} "
              f"{case.direction}: {summary}", flush=True)
    harness.append_csv(os.path.join(args.out, "results.csv"), rows, env)
    all_backends = list(dict.fromkeys(b for case in suite for b in case.backends))
    table = harness.markdown_table(rows, env, bandwidth, all_backends)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table)
    harness.plot_speedups(rows, os.path.join(args.out, "speedups.png"), f"pottsops {args.suite}: {env['device']}")
    print(table)


if __name__ == "__main__":
    main()
