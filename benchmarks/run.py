"""Benchmark CLI over the case registry.

    python -m benchmarks.run --suite cpu --out benchmarks/results/cpu
    python -m benchmarks.run --suite gpu-potts --out $OUT/bench   (also gpu-unary, gpu-window, gpu-dense, gpu)
    python -m benchmarks.run --suite cpu-dense --out benchmarks/results/cpu-dense   (also cpu-solver, cpu-anchors)
    POTTSOPS_RLOSS=DIR ... --suite cpu-dense   (DIR: a build of rloss's bilateralfilter, measured beside ours;
        OMP_NUM_THREADS=1 ... --out benchmarks/results/cpu-dense-1thread for one thread)
    python -m benchmarks.run --suite gpu --quick --device cpu --out /tmp/b   (the GPU suite's code, tiny, on CPU)

Rows are appended to OUT/results.csv after every case (a run cut short keeps what it measured); at the
end OUT/results.md (table) and OUT/speedups.png are rebuilt from the whole CSV, so several suites run
into one folder give one table.
"""
import argparse
import csv
import os

import torch

import pottsops
from benchmarks import cases, dense_accuracy, harness

RELAXATIONS = pottsops.RELAXATIONS
BASELINES = ["reference", "compile(reference)"]


def cpu_suite(quick, device, compile_baseline):
    backends = ["cpu", "reference"] + (["compile(reference)"] if compile_baseline else [])
    shape = (2, 21, 128, 128) if quick else (2, 21, 256, 256)
    suite = [cases.potts_case(r, nb, shape, torch.float32, "fwd+bwd", backends)
             for nb in ("nn4", "nn8") for r in (RELAXATIONS[:2] if quick else RELAXATIONS)]
    suite += [cases.unary_case(kind, shape, torch.float32, "fwd+bwd", backends) for kind in pottsops.UNARIES]
    return suite


def fast_backends(device):
    """The fused backends that run on `device` here (both GPU backends on a GPU, to compare them)."""
    status = pottsops.backends()
    names = ("cuda", "triton") if device.type == "cuda" else ("cpu",)
    return [name for name in names if status[name].available]


def gpu_shapes(quick):
    return [(2, 5, 32, 32)] if quick else [(12, 21, 512, 512), (12, 21, 128, 128)]


def with_compile(backends, compile_baseline, shape, dtype, direction):
    """torch.compile(reference) is timed on every forward+backward case at 512x512 and on float32 at
    128x128: each case is a separate compilation (~10 s), and the whole matrix would not fit a lease."""
    wanted = compile_baseline and direction == "fwd+bwd" and (shape[-1] >= 512 or dtype == torch.float32)
    return backends + (["compile(reference)"] if wanted else [])


def gpu_potts_suite(quick, device, compile_baseline):
    fused = fast_backends(device)
    suite = []
    for shape in gpu_shapes(quick):
        for dtype in (torch.float32, torch.bfloat16):
            for direction in ("fwd+bwd", "fwd"):
                backends = with_compile(fused + ["reference"], compile_baseline, shape, dtype, direction)
                for nb in ("nn4", "nn8"):
                    for r in (RELAXATIONS[:2] if quick else RELAXATIONS):
                        suite.append(cases.potts_case(r, nb, shape, dtype, direction, backends))
    return suite


def gpu_unary_suite(quick, device, compile_baseline):
    fused = fast_backends(device)
    return [cases.unary_case(kind, shape, dtype, direction,
                             with_compile(fused + ["reference"], compile_baseline, shape, dtype, direction))
            for shape in gpu_shapes(quick) for dtype in (torch.float32, torch.bfloat16)
            for direction in ("fwd+bwd", "fwd") for kind in pottsops.UNARIES]


def gpu_window_suite(quick, device, compile_baseline):
    """window(5) at 2x21x512x512 against the unfold-based loss: time and memory beyond the inputs."""
    shape = (1, 3, 24, 24) if quick else (2, 21, 512, 512)
    window = pottsops.window(2 if quick else 5)
    backends = fast_backends(device) + ["unfold", "reference"] + (["compile(reference)"] if compile_baseline else [])
    return [cases.potts_case("bilinear", window, shape, torch.float32, direction, backends)
            for direction in ("fwd+bwd", "fwd")]


def gpu_dense_suite(quick, device, compile_baseline):
    """The lattice filter at B = 12 (and B = 2 with the per-class loop) and exact dense Potts at 128x128."""
    lattice = ["cuda", "cpu"] if device.type == "cuda" else ["cpu"]
    big, small = ((2, 3, 24, 24), (1, 3, 24, 24)) if quick else ((12, 21, 512, 512), (2, 21, 512, 512))
    suite = [cases.bilateral_case(big, 100.0, 15.0, lattice),
             cases.bilateral_case(small, 100.0, 15.0, lattice + ["per-class(cpu)"])]
    exact_shape = (1, 3, 10, 12) if quick else (12, 21, 128, 128)
    triton = ["triton"] if pottsops.backends()["triton"].available else []
    suite += [cases.dense_exact_case(r, exact_shape, direction, triton + ["reference"])
              for r in ("collision_divergence", "normalized_quadratic") for direction in ("fwd+bwd", "fwd")]
    return suite


def cpu_dense_suite(quick, device, compile_baseline):
    """Dense CRF losses on CamVid images, B = 2, K = 21, sigma_rgb 15, sigma_xy 100: DenseCRFLoss against
    rloss's (when benchmarks/rloss.py finds it) where rloss's users run it: 128^2 to 512^2 inputs at its
    scale_factor 0.5 (lattices of 64^2 to 256^2) and 128^2, 256^2 at full scale; and potts_energy(dense,
    bilinear) on the same lattice; forward + backward, time and memory.  Threads: torch's (OMP_NUM_THREADS
    sets rloss's and torch's alike)."""
    sizes = [(24, 1.0)] if quick else [(128, 0.5), (256, 0.5), (512, 0.5), (128, 1.0), (256, 1.0)]
    suite = [cases.dense_crf_case(size, scale) for size, scale in sizes]
    return suite + [cases.dense_lattice_potts_case(size) for size, scale in sizes if scale == 1.0]


def cpu_anchors_suite(quick, device, compile_baseline):
    """pottsops.nn against what users run today (B = 2, K = 21, 128^2 and 256^2): the Gated CRF-style unfold
    window loss, the shift-and-subtract nn4 loss, the per-class dense CRF loss; time and peak memory."""
    sizes = [(2, 5, 24, 24)] if quick else [(2, 21, 128, 128), (2, 21, 256, 256)]
    return [cases.anchor_case(kind, shape) for shape in sizes for kind in ("window", "nn4", "dense")]


def solver_suite(quick, device, compile_baseline):
    """pottsops.solve throughput: 50 iterations, nn4, cd + cce, B = 12, K = 21 at 128x128 and 512x512."""
    fused = fast_backends(device)
    fused = [b for b in fused if b != "triton"]  # the fused step runs on the compiled ops
    shapes = [(2, 5, 32, 32)] if quick else [(12, 21, 128, 128), (12, 21, 512, 512)]
    baselines = ["reference"] + (["compile(reference)"] if compile_baseline else [])
    return [cases.solver_case(shape, fused + baselines, iters=5 if quick else 50) for shape in shapes]


def first_light_suite(quick, device, compile_baseline):
    """One case per op at its headline shape (forward + backward, fp32): the first measurement on a GPU."""
    fused = fast_backends(device)
    shape = (2, 5, 32, 32) if quick else (12, 21, 512, 512)
    compiled = ["compile(reference)"] if compile_baseline else []
    suite = [cases.potts_case("collision_divergence", "nn4", shape, torch.float32, "fwd+bwd",
                              fused + ["reference"] + compiled),
             cases.unary_case("cce", shape, torch.float32, "fwd+bwd", fused + ["reference"] + compiled)]
    suite += gpu_window_suite(quick, device, False)[:1]
    lattice = (["cuda"] if device.type == "cuda" else []) + ["cpu"]
    suite.append(cases.bilateral_case((2, 3, 24, 24) if quick else (2, 21, 512, 512), 100.0, 15.0, lattice))
    triton = ["triton"] if pottsops.backends()["triton"].available else []
    suite.append(cases.dense_exact_case("collision_divergence", (1, 3, 10, 12) if quick else (12, 21, 128, 128),
                                        "fwd+bwd", triton + ["reference"]))
    return suite + solver_suite(quick, device, compile_baseline)[-1:]


def gpu_suite(quick, device, compile_baseline):
    return (gpu_potts_suite(quick, device, compile_baseline) + gpu_unary_suite(quick, device, compile_baseline)
            + gpu_window_suite(quick, device, compile_baseline) + gpu_dense_suite(quick, device, compile_baseline)
            + solver_suite(quick, device, compile_baseline))


SUITES = {"cpu": cpu_suite, "cpu-dense": cpu_dense_suite, "gpu": gpu_suite, "gpu-potts": gpu_potts_suite,
          "gpu-unary": gpu_unary_suite, "gpu-window": gpu_window_suite, "gpu-dense": gpu_dense_suite,
          "gpu-solver": solver_suite, "cpu-solver": solver_suite, "gpu-first-light": first_light_suite,
          "cpu-anchors": cpu_anchors_suite}


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_reports(out, title):
    """results.md and speedups.png from every row of OUT/results.csv."""
    rows = read_csv(os.path.join(out, "results.csv"))
    measured = [r for r in rows if r["op"] not in ("copy", "matmul")]
    bandwidths = [float(r["value"]) for r in rows if r["op"] == "copy" and r["metric"] == "bandwidth_gbs"]
    env = {k: rows[-1][k] for k in ("device", "torch", "triton", "sha")}
    backends = list(dict.fromkeys(r["backend"] for r in measured))
    backends = [b for b in backends if b not in BASELINES] + [b for b in BASELINES if b in backends]
    table = harness.markdown_table(measured, env, max(bandwidths) * 1e9, backends)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table)
    harness.plot_speedups(measured, os.path.join(out, "speedups.png"), title)
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), required=True)
    parser.add_argument("--out", required=True, help="folder for results.csv, results.md, speedups.png")
    parser.add_argument("--quick", action="store_true", help="small shapes and few variants (smoke test)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda for the gpu suites")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile(reference) baseline")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if args.suite.startswith("gpu") else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible (use --device cpu for a smoke test)")
    os.makedirs(args.out, exist_ok=True)
    csv_path = os.path.join(args.out, "results.csv")
    env = harness.environment(device)
    bandwidth = harness.copy_bandwidth(device)
    rate = harness.fp32_rate(device)
    print(f"{env}; copy bandwidth {bandwidth / 1e9:.1f} GB/s" +
          (f"; fp32 matmul {rate / 1e12:.1f} TFLOP/s" if rate else ""), flush=True)
    harness.append_csv(csv_path, [{"op": "copy", "variant": "1 GiB", "shape": "", "dtype": "float32",
                                   "direction": "", "backend": "torch", "metric": "bandwidth_gbs",
                                   "value": f"{bandwidth / 1e9:.1f}"}] +
                      ([{"op": "matmul", "variant": "8192^3 fp32, no tf32", "shape": "", "dtype": "float32",
                         "direction": "", "backend": "torch", "metric": "tflops", "value": f"{rate / 1e12:.1f}"}]
                       if rate else []), env)
    suite = SUITES[args.suite](args.quick, device, not args.no_compile)
    memory_jobs = []  # measured after every timing: see harness.memory_rows
    # Every (relaxation, neighbourhood) variant is a separate compiled graph of the same Python function;
    # without a higher limit dynamo falls back to eager after a few variants and the baseline is wrong.
    with torch._dynamo.config.patch(cache_size_limit=1024):
        for i, case in enumerate(suite):
            case_rows = harness.measure(case, device, bandwidth, input_sets=1 if device.type == "cpu" else 3,
                                        rate=rate, memory_jobs=memory_jobs)
            harness.append_csv(csv_path, case_rows, env)
            summary = {r["backend"]: r["value"] for r in case_rows if r["metric"] in ("time_ms", "check", "error")}
            print(f"[{i + 1}/{len(suite)}] {case.op} {case.variant} {case.shape_str} {case.dtype_str} "
                  f"{case.direction}: {summary}", flush=True)
    harness.append_csv(csv_path, harness.memory_rows(memory_jobs), env)
    if args.suite == "cpu-dense":
        dense_accuracy.write(args.out, args.quick)
    print(write_reports(args.out, f"pottsops {args.suite}: {env['device']}"))


if __name__ == "__main__":
    main()
