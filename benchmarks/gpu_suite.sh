#!/usr/bin/env bash
# On the GPU machine: build pottsops with its CUDA kernels, run the whole test-suite there (CUDA and
# compiled Triton included), then the GPU benchmarks.  Logs and results land under $OUT.
#
#   bash benchmarks/gpu_suite.sh                      # every step
#   bash benchmarks/gpu_suite.sh build test           # some steps, in order
#   bash benchmarks/gpu_suite.sh first-light          # the first thing to run on any GPU machine (<= 9 min on
#                                                     # one H200): build for sm_90 with every core, the CUDA and
#                                                     # Triton tests of the kernels, one benchmark per op at its
#                                                     # headline shape, the solver's time to quality on CamVid
#                                                     # at 480x360; at most 8 files in $OUT
#
# Steps: build, test, bench-potts, bench-unary, bench-window, bench-dense, bench-solver, and the training
# comparisons train-acdc, train-camvid, train-camvid-0.3 (pce, gd, hard, soft, full with the same seed and
# TRAIN_BUDGET seconds of training each, default 90; the issue's full runs use 480).  The machine's python3
# (with torch, triton, pytest, matplotlib) is used; nothing is downloaded.  The exit status is non-zero
# if the build, the tests, a benchmark or a training run failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu-run}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 FORCE_CUDA=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-$(nproc)} POTTSOPS_AOT=1
unset TRITON_INTERPRET

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(build test bench-potts bench-unary bench-window bench-dense bench-solver)
[ "${steps[*]}" = first-light ] && steps=(build test-kernels bench-first-light solver-quality)
MAX_JOBS=${MAX_JOBS:-$(nproc)}
failed=()
for step in "${steps[@]}"; do
  echo "=== $step ($(date +%T))"
  case $step in
    build)
      nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
      if ! $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
        tail -n 40 "$OUT/build.log"
        echo "build failed"
        exit 1
      fi
      grep -A 7 "pottsops build summary" "$OUT/build.log"
      $PY -m pottsops
      ;;
    test)
      $PY -m pytest -q -ra -p no:cacheprovider tests > "$OUT/pytest.log" 2>&1 || failed+=(test)
      grep -E "passed|failed|error" "$OUT/pytest.log" | tail -n 40
      ;;
    test-kernels)
      $PY -m pytest -q -ra -p no:cacheprovider -x tests/test_gpu_large.py tests/test_solve.py tests/test_potts_energy.py \
        tests/test_unary.py tests/test_dense.py tests/test_ops.py > "$OUT/pytest.log" 2>&1 || failed+=(test-kernels)
      grep -E "passed|failed|error" "$OUT/pytest.log" | tail -n 40
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
    bench-potts | bench-unary | bench-window | bench-dense | bench-solver | bench-first-light)
      $PY -m benchmarks.run --suite "gpu-${step#bench-}" --out "$OUT" >> "$OUT/bench.log" 2>&1 || failed+=("$step")
      grep -E "^\[|Error|FAIL" "$OUT/bench.log" | tail -n 3
      ;;
    train-acdc | train-camvid | train-camvid-0.3)
      budget=${TRAIN_BUDGET:-90}
      case $step in
        train-acdc) data=(--data acdc --crop 256 256) ;;
        train-camvid) data=(--data camvid --ratio 1.0 --crop 320 320) ;;
        train-camvid-0.3) data=(--data camvid --ratio 0.3 --crop 320 320) ;;
      esac
      $PY -m experiments.train_compare --name "${step#train-}-${budget}s" --out "$OUT/train" \
        --runs "${RUNS:-/tmp/pottsops-runs}" -- "${data[@]}" --backbone resnet50 --lr 0.01 --epochs 1000 \
        --eval-every 1000 --time-budget "$budget" --workers 4 \
        >> "$OUT/train.log" 2>&1 || failed+=("$step")
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
