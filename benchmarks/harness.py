"""One benchmark harness for every op: correctness check before timing, medians of device-event (GPU)
or wall-clock (CPU) times, the byte floor of each op, a long-format CSV, a markdown table and a plot.

A Case names an op variant at a shape and how to run it on each backend; measure() checks every
backend's outputs against a float64 reference before timing it, and a backend that fails the check is
recorded as such and not timed.
"""
import csv
import ctypes
import gzip
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class Case:
    op: str                      # e.g. "potts_energy"
    variant: str                 # e.g. "cd/nn4"
    shape: tuple                 # (B, K, H, W)
    dtype: torch.dtype
    direction: str               # "fwd" or "fwd+bwd"
    make_inputs: Callable        # (device, seed) -> dict of tensors
    run: Callable                # (backend, inputs) -> tuple of output tensors
    expected: Callable           # inputs -> outputs of the float64 reference
    floor_bytes: int             # fewest bytes the op must move
    backends: list = field(default_factory=list)
    tolerance: float = 1e-4      # relative error |out - ref| / |ref| allowed
    floor_flops: int = 0         # fewest floating-point operations (0: a memory-bound op)
    slow: tuple = ()             # backends timed with few repetitions (seconds per run)
    slow_reps: int = 1           # how many (median of), after the correctness run that warms them up
    check: Callable = None       # (outputs, inputs) -> error, for ops with no unique answer (solvers)
    compare: Callable = None     # (outputs, expected) -> error instead of relative_error (a loss's own scale)
    throughput: tuple = ()       # (metric name, units of work per run): reported as units per second
    cpu_memory: bool = False     # on the CPU, also report the peak memory of one run beyond its inputs

    @property
    def shape_str(self):
        return "x".join(str(s) for s in self.shape)

    @property
    def dtype_str(self):
        return str(self.dtype).replace("torch.", "")


def git_sha():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment(device):
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    return {"device": name, "torch": torch.__version__, "triton": triton_version, "sha": git_sha()}


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_L2_FLUSH = {}


def _flush_cache(device):
    """Overwrites a buffer larger than the GPU's L2 cache, so that each timed run reads from memory."""
    if device not in _L2_FLUSH:
        _L2_FLUSH[device] = torch.empty(256 * 2 ** 20, dtype=torch.uint8, device=device)
    _L2_FLUSH[device].zero_()


def median_time(fn, device, warmup=2, min_reps=5, min_seconds=1.0, max_reps=200):
    """Median seconds of fn().

    GPU: CUDA events around each run, the L2 cache flushed before each (outside the timed region); the
    flush keeps the GPU busy while the host queues the run, so launch latency is hidden as in training.
    CPU: perf_counter around each run.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type == "cuda":
        return _median_time_cuda(fn, device, min_reps, min_seconds, max_reps)
    times = []
    start_all = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start_all < min_seconds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _median_time_cuda(fn, device, min_reps, min_seconds, max_reps):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    _flush_cache(device)
    start.record()
    fn()
    end.record()
    end.synchronize()
    once = max(start.elapsed_time(end) / 1e3, 1e-6)
    reps = int(min(max_reps, max(min_reps, min_seconds / once)))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        _flush_cache(device)
        start.record()
        fn()
        end.record()
    synchronize(device)
    return statistics.median(start.elapsed_time(end) / 1e3 for start, end in events)


def copy_bandwidth(device, megabytes=1024):
    """Measured device copy bandwidth in bytes/s (bytes read + bytes written), on a copy far larger than
    any cache."""
    n = megabytes * 2 ** 20 // 4
    a = torch.rand(n, device=device)
    b = torch.empty_like(a)
    seconds = median_time(lambda: b.copy_(a), device, warmup=3, min_reps=10, min_seconds=0.5)
    return 2 * a.numel() * 4 / seconds


def relative_error(outputs, expected):
    """||out - ref|| / ||ref|| over all outputs together (on the outputs' device); NaN never passes."""
    num = sum(float((o.double() - e.to(o.device, torch.float64)).norm() ** 2) for o, e in zip(outputs, expected))
    den = sum(float(e.double().norm() ** 2) for e in expected)
    return (num / max(den, 1e-300)) ** 0.5


def fp32_rate(device):
    """Measured float32 FLOP/s of a large matrix product without tf32 (the compute ceiling of fp32 code);
    None on the CPU, where no op here is compute-floored."""
    if device.type != "cuda":
        return None
    allow = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        a, b = (torch.rand(8192, 8192, device=device) for _ in range(2))
        seconds = median_time(lambda: a @ b, device, warmup=2, min_reps=5, min_seconds=0.5)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow
    return 2 * 8192 ** 3 / seconds


def _status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _malloc_returns_memory():
    """glibc: blocks from 64 KB up come from mmap and go back to the system when freed (its threshold is
    otherwise raised by the first large free, and freed blocks then stay resident, hiding later peaks);
    free heap memory is trimmed.  Returns the C library, or None off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
        libc.mallopt(_M_TRIM_THRESHOLD, 64 * 1024)
        return libc
    except (OSError, AttributeError):
        return None


def cpu_peak_extra_mb(fn):
    """Peak resident memory of one call beyond what was resident before it (MB), from Linux's high-water
    mark reset through /proc/self/clear_refs; None where that is not available.  The kernel's resident-set
    counters are approximate: a 5.5 MB tensor reads as 2.5-3.6 MB here, a 64 MB one as 64 MB."""
    libc = _malloc_returns_memory()
    if libc is None:
        return None
    try:
        libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kb("VmRSS")
        fn()
        return (_status_kb("VmHWM") - before) / 1024
    except (OSError, KeyError):
        return None


def floor_seconds(case, bandwidth, rate):
    """The larger of the byte floor and the FLOP floor of a case."""
    return max(case.floor_bytes / bandwidth, case.floor_flops / rate if rate and case.floor_flops else 0.0)


def memory_rows(jobs):
    """extra_mem_mb rows of (row base, call) jobs.  cpu_peak_extra_mb changes malloc's settings for the rest
    of the process (large blocks mmapped, so slower to get), so a suite measures memory after its timings."""
    rows = []
    for base, call in jobs:
        extra = cpu_peak_extra_mb(call)
        if extra is not None:
            rows.append({**base, "metric": "extra_mem_mb", "value": f"{extra:.1f}"})
    return rows


def measure(case, device, bandwidth, input_sets=1, rate=None, memory_jobs=None):
    """Rows of the long-format CSV for one case: per backend the check and the time.  CPU memory is measured
    at once, or, given a list memory_jobs, left there for memory_rows after every timing."""
    inputs = [case.make_inputs(device, seed) for seed in range(input_sets)]
    expected = case.expected(inputs[0]) if case.check is None else None
    rows, times = [], {}
    for backend in case.backends:
        base = {"op": case.op, "variant": case.variant, "shape": case.shape_str, "dtype": case.dtype_str,
                "direction": case.direction, "backend": backend}
        try:
            outputs = case.run(backend, inputs[0])
            error = case.check(outputs, inputs[0]) if case.check is not None else \
                (case.compare or relative_error)(outputs, expected)
        except Exception as exc:  # a backend that cannot run this case is reported, not hidden
            rows.append({**base, "metric": "error", "value": f"{type(exc).__name__}: {exc}"[:200]})
            continue
        rows.append({**base, "metric": "rel_error", "value": f"{error:.3e}"})
        if not error <= case.tolerance:
            rows.append({**base, "metric": "check", "value": "FAIL"})
            continue
        counter = iter(range(10 ** 9))
        if device.type == "cuda":
            _flush_cache(device)
            synchronize(device)
            resident = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        reps = dict(warmup=0, min_reps=case.slow_reps, min_seconds=0.0, max_reps=case.slow_reps) \
            if backend in case.slow else \
            dict(min_seconds=0.3 if device.type == "cuda" else 1.0)
        seconds = median_time(lambda: case.run(backend, inputs[next(counter) % input_sets]), device, **reps)
        times[backend] = seconds
        rows.append({**base, "metric": "time_ms", "value": f"{seconds * 1e3:.4f}"})
        if case.throughput:
            name, units = case.throughput
            rows.append({**base, "metric": name, "value": f"{units / seconds:.3f}"})
        rows.append({**base, "metric": "floor_fraction",
                     "value": f"{floor_seconds(case, bandwidth, rate) / seconds:.4f}"})
        if device.type == "cuda":  # memory the op needs beyond its inputs (and the cache-flush buffer)
            extra = (torch.cuda.max_memory_allocated(device) - resident) / 2 ** 20
            rows.append({**base, "metric": "extra_mem_mb", "value": f"{extra:.1f}"})
        elif case.cpu_memory:
            job = (base, lambda backend=backend: case.run(backend, inputs[0]))
            if memory_jobs is None:
                rows += memory_rows([job])
            else:
                memory_jobs.append(job)
    for backend, seconds in times.items():
        base = {"op": case.op, "variant": case.variant, "shape": case.shape_str, "dtype": case.dtype_str,
                "direction": case.direction, "backend": backend}
        for baseline in ("reference", "compile(reference)", "unfold", "eager", "cpu", "per-class(cpu)", "cuda", "rloss"):
            if baseline in times and backend != baseline:
                rows.append({**base, "metric": f"speedup_vs_{baseline}", "value": f"{times[baseline] / seconds:.2f}"})
    return rows


CSV_FIELDS = ["op", "variant", "shape", "dtype", "direction", "backend", "metric", "value", "device", "torch",
              "triton", "sha"]


def open_text(path, mode="r"):
    """A text file, gzip-compressed where its name ends in .gz (raw per-run logs are kept compressed in git)."""
    if path.endswith(".gz"):
        return gzip.open(path, mode + "t", newline="")
    return open(path, mode, newline="")


def append_rows(path, fields, rows):
    """Appends rows (dicts) to a CSV file (gzip where the name ends in .gz), with the header when it is new."""
    new = not os.path.exists(path)
    with open_text(path, "a") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def append_csv(path, rows, env):
    append_rows(path, CSV_FIELDS, [{**row, **env} for row in rows])


def markdown_table(rows, env, bandwidth, backends):
    """One line per (op, variant, shape, dtype, direction): time of each backend, the fastest fused
    backend's floor fraction and its speed-ups."""
    key = lambda r: (r["op"], r["variant"], r["shape"], r["dtype"], r["direction"])  # noqa: E731
    cases = {}
    for row in rows:
        cases.setdefault(key(row), {}).setdefault(row["backend"], {})[row["metric"]] = row["value"]
    fused = [b for b in backends if b not in ("reference", "compile(reference)", "unfold", "eager", "per-class(cpu)")]
    header = ["op", "variant", "shape", "dtype", "dir"] + [f"{b} ms" for b in backends] + \
        ["best fused", "floor frac", "× ref", "× compile(ref)"]
    lines = [f"Device: {env['device']}; torch {env['torch']}; triton {env['triton']}; commit {env['sha']}; "
             f"measured copy bandwidth {bandwidth / 1e9:.1f} GB/s.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for k, per_backend in cases.items():
        cells = list(k)
        for b in backends:
            m = per_backend.get(b, {})
            cells.append(m.get("time_ms", m.get("check", "err" if "error" in m else "–")))
        timed = [b for b in fused if "time_ms" in per_backend.get(b, {})]
        if timed:
            best = min(timed, key=lambda b: float(per_backend[b]["time_ms"]))
            m = per_backend[best]
            cells += [best, m.get("floor_fraction", "–"), m.get("speedup_vs_reference", "–"),
                      m.get("speedup_vs_compile(reference)", "–")]
        else:
            cells += ["–"] * 4
        lines.append("| " + " | ".join(cells) + " |")
    others = [(k, b, metric[len("speedup_vs_"):], value) for k, per_backend in cases.items()
              for b, m in per_backend.items() for metric, value in m.items()
              if metric in ("speedup_vs_unfold", "speedup_vs_eager", "speedup_vs_cpu", "speedup_vs_per-class(cpu)")
              and b in fused]
    if others:
        lines += ["", "Speed-ups over the other baselines:", "", "| op | variant | shape | dtype | dir | backend | over | × |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += ["| " + " | ".join(list(k) + [b, over, value]) + " |" for k, b, over, value in others]
    memory = {k: v for k, v in cases.items() if any("extra_mem_mb" in m for m in v.values())}
    if memory:
        lines += ["", "Memory beyond the inputs (outputs and workspace, MB; on a GPU the peak allocated during the "
                  "timed runs, on the CPU the peak resident during one run, to a few MB):",
                  "", "| op | variant | shape | dtype | dir | " + " | ".join(backends) + " |",
                  "|" + "---|" * (5 + len(backends))]
        for k, per_backend in memory.items():
            cells = list(k) + [per_backend.get(b, {}).get("extra_mem_mb", "–") for b in backends]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_speedups(rows, path, title):
    """Bar chart of each fused backend's speed-up over the eager reference."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    data = {}
    for row in rows:
        if row["metric"] == "speedup_vs_reference":
            label = f"{row['variant']} {row['shape']} {row['dtype']} {row['direction']}"
            data.setdefault(row["backend"], {})[label] = float(row["value"])
    if not data:
        return False
    labels = sorted({label for series in data.values() for label in series})
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(labels)), 4.5))
    width = 0.8 / len(data)
    for i, (backend, series) in enumerate(sorted(data.items())):
        ax.bar([j + i * width for j in range(len(labels))], [series.get(lab, 0) for lab in labels], width,
               label=backend)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels, rotation=75, fontsize=7)
    ax.set_ylabel("speed-up over eager reference (×)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    return True


PLOT_COLOURS = 64  # a committed plot is saved with this many colours: a fifth of the bytes, the same picture


def save_figure(fig, path, dpi):
    """Save a matplotlib figure as a PNG with a PLOT_COLOURS palette (results are committed, so their size
    counts), and close it."""
    import io
    import matplotlib.pyplot as plt
    from PIL import Image
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(PLOT_COLOURS).save(path, optimize=True)
