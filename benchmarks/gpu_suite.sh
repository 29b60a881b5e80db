#!/usr/bin/env bash
# On the GPU machine: build pottsops with its CUDA kernels, run the test-suite there (CUDA and compiled
# Triton included), then the GPU benchmarks.  Logs and results land under $OUT, each stage's as it ends.
#
#   OUT=... bash benchmarks/gpu_suite.sh first-light   # the first call on any GPU machine: <= 9 min on one
#                                                      # H200 with 16 cores (stages and budgets below)
#   OUT=... bash benchmarks/gpu_suite.sh second-light  # the second call (<= 9 min): the whole test-suite, the
#                                                      # compile baselines, the nn modules and lattice, the solver
#   bash benchmarks/gpu_suite.sh build test           # some steps, in order
#
# first-light, each stage bounded by `timeout` so that one failure or a slow stage never costs the rest:
#   env          env.txt: nvidia-smi, nvcc, torch, Triton, Python, ninja, the commit              (~10 s)
#   build        the CUDA kernels for sm_90 only, every core (the longest translation units are split
#                so that they compile in parallel); a failed build is logged and the Triton stages run
#                anyway                                                                          (<= 240 s)
#   test-kernels the CUDA and Triton tests at training sizes, --maxfail 10 (not -x)               (<= 150 s)
#   bench-first-light  one benchmark per op at its headline shape and the solver at 12x21x512^2,
#                checked before timing, no torch.compile baselines (second-light has them)      (<= 100 s)
#   solver-generated   solve() on the generated scene of pottsops.demo (no data outside the repo)  (<= 30 s)
# Without a GPU it writes env.txt, says that no GPU is visible and stops (tests/test_benchmarks.py).
#
# Steps: env, build, test, test-kernels, test-nn, bench-potts, bench-unary, bench-window, bench-dense,
# bench-solver, bench-first-light, bench-compile, solver-generated, solver-quality (needs ../shared/data), and
# the paired training studies train-acdc, train-camvid, train-camvid-0.3 (TRAIN_WARMUP + TRAIN_STEPS steps per
# method and seed, defaults 300 + 500, seeds TRAIN_SEEDS, default 0-4).
# The machine's python3 (with torch, triton, pytest, matplotlib) is used; nothing is downloaded.  The exit
# status is non-zero if a stage failed.  Run it with the $OUT the GPU machine provides: only files under
# it come back.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu-run}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 FORCE_CUDA=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-$(nproc)} POTTSOPS_AOT=1
unset TRITON_INTERPRET

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(env build test bench-potts bench-unary bench-window bench-dense bench-solver)
[ "${steps[*]}" = first-light ] && steps=(env build test-kernels bench-first-light solver-generated)
[ "${steps[*]}" = second-light ] && steps=(env build test test-nn bench-compile bench-dense bench-solver)
failed=()
gpu=$($PY -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
for step in "${steps[@]}"; do
  echo "=== $step ($(date +%T))"
  if [ "$step" != env ] && [ "$gpu" != 1 ]; then
    echo "no GPU is visible (torch.cuda.is_available() is False): stopping after env.txt"
    exit 1
  fi
  case $step in
    env)
      {
        echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (modified)')"
        echo "date $(date -u +%FT%TZ)"
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 || echo "nvidia-smi: not found"
        "$CUDA_HOME/bin/nvcc" --version 2>&1 | tail -n 1 || echo "nvcc: not found"
        $PY -c "import sys, torch; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())" 2>&1
        $PY -c "import triton; print('triton', triton.__version__)" 2>&1 | tail -n 1
        $PY -c "import ninja; print('ninja', ninja.__version__)" 2>&1 | tail -n 1
        echo "cores $(nproc)"
      } > "$OUT/env.txt"
      cat "$OUT/env.txt"
      ;;
    build)
      if ! timeout "${BUILD_TIMEOUT:-240}" $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
        tail -n 40 "$OUT/build.log"
        echo "build failed or timed out: the Triton stages run anyway (log: build.log)"
        failed+=(build)
      else
        grep -A 7 "pottsops build summary" "$OUT/build.log"
      fi
      $PY -m pottsops
      ;;
    test)
      timeout "${TEST_TIMEOUT:-400}" $PY -m pytest -q -ra -p no:cacheprovider --maxfail 20 tests \
        > "$OUT/pytest.log" 2>&1 || failed+=(test)
      grep -E "passed|failed|error" "$OUT/pytest.log" | tail -n 40
      ;;
    test-kernels)
      timeout "${TEST_TIMEOUT:-150}" $PY -m pytest -q -ra -p no:cacheprovider --maxfail 10 tests/test_gpu_large.py \
        tests/test_solve.py tests/test_potts_energy.py tests/test_unary.py tests/test_dense.py tests/test_ops.py \
        > "$OUT/pytest-kernels.log" 2>&1 || failed+=(test-kernels)
      grep -E "passed|failed|error" "$OUT/pytest-kernels.log" | tail -n 40
      ;;
    test-nn)
      timeout "${TEST_TIMEOUT:-150}" $PY -m pytest -q -ra -p no:cacheprovider --maxfail 10 tests/test_nn.py \
        tests/test_dense.py tests/test_graphcut.py > "$OUT/pytest-nn.log" 2>&1 || failed+=(test-nn)
      grep -E "passed|failed|error" "$OUT/pytest-nn.log" | tail -n 20
      ;;
    solver-generated)
      timeout 60 $PY -m pottsops.demo --out "$OUT/demo.png" > "$OUT/solver-generated.txt" 2>&1 || failed+=(solver-generated)
      cat "$OUT/solver-generated.txt"
      ;;
    solver-quality)
      $PY -m benchmarks.solver_quality --device cuda --full-size --datasets camvid --neighborhoods nn4 --images 6 \
        --configs cd+cce q+cce bl+cce --baseline-images 1 --out "$OUT/solver-quality" >> "$OUT/bench.log" 2>&1 \
        && $PY -m benchmarks.solver_report --out "$OUT/solver-quality" > /dev/null 2>&1 || failed+=(solver-quality)
      cp "$OUT/solver-quality/report.md" "$OUT/solver-quality.md" 2>/dev/null
      gzip -dc "$OUT/solver-quality/runs.csv.gz" > "$OUT/solver-quality.csv" 2>/dev/null
      rm -rf "$OUT/solver-quality"  # the two files above are what comes back
      grep -A 12 "^| start" "$OUT/solver-quality.md" 2>/dev/null | head -n 14
      ;;
    bench-first-light)
      timeout "${BENCH_TIMEOUT:-100}" $PY -m benchmarks.run --suite gpu-first-light --no-compile --out "$OUT" \
        >> "$OUT/bench.log" 2>&1 || failed+=("$step")
      grep -E "^\[|Error|FAIL" "$OUT/bench.log" | tail -n 8
      ;;
    bench-compile)  # first-light's cases with the torch.compile baselines
      timeout "${BENCH_TIMEOUT:-240}" $PY -m benchmarks.run --suite gpu-first-light --out "$OUT/compile" \
        >> "$OUT/bench.log" 2>&1 || failed+=("$step")
      grep -E "^\[|Error|FAIL" "$OUT/bench.log" | tail -n 8
      ;;
    bench-potts | bench-unary | bench-window | bench-dense | bench-solver)
      $PY -m benchmarks.run --suite "gpu-${step#bench-}" --out "$OUT" >> "$OUT/bench.log" 2>&1 || failed+=("$step")
      grep -E "^\[|Error|FAIL" "$OUT/bench.log" | tail -n 3
      ;;
    train-acdc | train-camvid | train-camvid-0.3)
      # the paired design of experiments/results/train/acdc_paired at full resolution: per seed one pCE
      # warm-up, then pce, gd, hard and soft for the same steps, tuned on the validation split; rerun the
      # same command to continue (finished runs are skipped, a cut run resumes)
      warmup=${TRAIN_WARMUP:-300} steps=${TRAIN_STEPS:-500}
      case $step in
        train-acdc) data=(--data acdc --backbone unet --crop 256 256 --train-patients 21 70 --val-patients 71 80
                          --test-patients 81 100) ;;
        # CamVid here has no test split (its README): the defaults, scored on val, nothing tuned
        train-camvid) data=(--data camvid --ratio 1.0 --crop 320 320 --backbone resnet50) ;;
        train-camvid-0.3) data=(--data camvid --ratio 0.3 --crop 320 320 --backbone resnet50) ;;
      esac
      grids=()
      [ "$step" = train-acdc ] && grids=(--grid gd=gd-lam:1e-3,3e-3 --grid hard=eta:0.3,1 --grid soft=eta:0.3,1)
      $PY -m experiments.train_compare --name "${step#train-}-${warmup}+${steps}" --out "$OUT/train" \
        --runs "${RUNS:-/tmp/pottsops-runs}" --seeds ${TRAIN_SEEDS:-0 1 2 3 4} --warmup-steps "$warmup" \
        --steps "$steps" "${grids[@]}" -- "${data[@]}" --lr 0.01 --workers 4 >> "$OUT/train.log" 2>&1 || \
        failed+=("$step")
      tail -n 12 "$OUT/train.log"
      (cd "${RUNS:-/tmp/pottsops-runs}" && find . -name "*.json" -o -name "*.csv" -o -name "panels.png" | \
        xargs -r cp --parents -t "$OUT/train")
      ;;
    *)
      echo "unknown step $step"
      exit 2
      ;;
  esac
done
[ -f "$OUT/results.md" ] && cat "$OUT/results.md"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed steps: ${failed[*]}"
  exit 1
fi
