"""The benchmark code runs and checks before it times: the GPU suite's code path, tiny, on the CPU."""
import csv

import pytest
import torch

import pottsops
from benchmarks import baselines, cases, harness, run
from conftest import random_image, soft_labels


def test_unfold_baseline_is_the_bilinear_window_energy():
    g = torch.Generator().manual_seed(0)
    shape = (2, 4, 11, 13)
    y = soft_labels(shape, torch.float64, generator=g)
    image = random_image(shape, generator=g)
    window = pottsops.window(3)
    expected = pottsops.potts_energy(y, image, relaxation="bilinear", neighborhood=window, reduction="none")
    torch.testing.assert_close(baselines.unfold_window_potts(y, image, window), expected)


def test_check_before_timing_rejects_a_wrong_backend(monkeypatch):
    case = cases.potts_case("quadratic", "nn4", (1, 3, 8, 9), torch.float32, "fwd+bwd", ["reference"])
    right = case.run
    monkeypatch.setattr(case, "run", lambda backend, inputs: tuple(t * 1.01 for t in right(backend, inputs)))
    rows = harness.measure(case, torch.device("cpu"), bandwidth=1e10)
    metrics = {r["metric"]: r["value"] for r in rows}
    assert metrics["check"] == "FAIL" and "time_ms" not in metrics


@pytest.mark.skipif(not pottsops.backends()["cpu"].available, reason="the cpu backend is not built here")
def test_gpu_suite_code_path_on_cpu(tmp_path):
    run.main(["--suite", "gpu", "--quick", "--device", "cpu", "--no-compile", "--out", str(tmp_path)])
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    checks = [r for r in rows if r["metric"] in ("check", "error")]
    assert not checks, checks
    timed = {(r["op"], r["variant"], r["backend"]) for r in rows if r["metric"] == "time_ms"}
    assert ("potts_energy", "bilinear/window(radius=2, dilation=1)", "unfold") in timed
    assert ("unary", "cce", "cpu") in timed
    table = (tmp_path / "results.md").read_text()
    assert "| potts_energy | quadratic/nn8 | 2x5x32x32 | bfloat16 | fwd |" in table


@pytest.mark.skipif(not pottsops.backends()["cpu"].available, reason="the cpu backend is not built here")
def test_first_light_suite_code_path_on_cpu(tmp_path):
    """gpu_suite.sh first-light's benchmark: one case per op, checked before it is timed."""
    run.main(["--suite", "gpu-first-light", "--quick", "--device", "cpu", "--no-compile", "--out", str(tmp_path)])
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert not [r for r in rows if r["metric"] in ("check", "error")]
    ops = {r["op"] for r in rows if r["metric"] == "time_ms"}
    assert ops == {"potts_energy", "unary", "bilateral_filter", "solve"}, ops


@pytest.mark.skipif(not pottsops.backends()["cpu"].available, reason="the cpu backend is not built here")
def test_cpu_anchors_suite_checks_the_modules_against_the_eager_losses(tmp_path):
    """Each pottsops.nn module gives the eager formulation's value and gradient (the check before timing),
    and its peak memory is reported."""
    run.main(["--suite", "cpu-anchors", "--quick", "--device", "cpu", "--no-compile", "--out", str(tmp_path)])
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert not [r for r in rows if r["metric"] in ("check", "error")]
    timed = {(r["variant"], r["backend"]) for r in rows if r["metric"] == "time_ms"}
    assert timed == {("GatedCRFLoss r=5", "cpu"), ("GatedCRFLoss r=5", "unfold"), ("PottsLoss q/nn4", "cpu"),
                     ("PottsLoss q/nn4", "eager"), ("DenseCRFLoss sxy=100 srgb=15", "cpu"),
                     ("DenseCRFLoss sxy=100 srgb=15", "per-class(cpu)")}
    assert len([r for r in rows if r["metric"] == "extra_mem_mb"]) == 6


@pytest.mark.skipif(not pottsops.backends()["cpu"].available, reason="the cpu backend is not built here")
def test_cpu_dense_suite_checks_then_times_and_measures_accuracy(tmp_path, monkeypatch):
    """The dense CRF loss and the dense lattice energy on CamVid images pass their checks before timing; the
    accuracy table against the exact sum is written; without POTTSOPS_RLOSS rloss is named as not measured."""
    monkeypatch.delenv("POTTSOPS_RLOSS", raising=False)
    run.main(["--suite", "cpu-dense", "--quick", "--device", "cpu", "--no-compile", "--out", str(tmp_path)])
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert not [r for r in rows if r["metric"] in ("check", "error")]
    assert {(r["op"], r["backend"]) for r in rows if r["metric"] == "time_ms"} == {("nn", "cpu"), ("potts_energy", "cpu")}
    assert len([r for r in rows if r["metric"] == "extra_mem_mb"]) == 2
    accuracy = (tmp_path / "accuracy.md").read_text()
    assert "rloss not measured: POTTSOPS_RLOSS is not set" in accuracy and "pottsops DenseCRFLoss" in accuracy
    with open(tmp_path / "accuracy.csv", newline="") as f:
        assert all(0.5 < float(r["value / exact"]) < 1.2 for r in csv.DictReader(f))
    with open(tmp_path / "lattice_memory.csv", newline="") as f:
        memory = {(r["image"], r["sigma_xy, sigma_rgb"]): r["result"] for r in csv.DictReader(f)}
    assert memory[("CamVid RGB 64^2", "100, 15")].endswith("vertices per pixel")
    assert memory[("RGB noise 64^2", "1, 1")].startswith("refused: image 0's points are too sparse")
    assert memory[("14-channel noise 32^2", "10, 15")].startswith("refused: the lattice is accurate up to 4 channels")


def test_cpu_peak_memory_sees_an_allocation():
    extra = harness.cpu_peak_extra_mb(lambda: torch.ones(16, 1024, 1024).sum())  # 64 MB, freed at once
    if extra is None:
        pytest.skip("no /proc/self/clear_refs here: CPU peak memory is not measured")
    assert 60 <= extra < 200


def test_first_light_without_a_gpu_writes_env_and_stops(tmp_path):
    """gpu_suite.sh first-light on a machine without a GPU: within a minute, env.txt (versions, commit) under
    $OUT and a line saying that no GPU is visible, then a non-zero exit (nothing else is attempted)."""
    import os
    import subprocess
    import sys
    import time
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: first-light would run for minutes")
    start = time.perf_counter()
    done = subprocess.run(["bash", os.path.join(root, "benchmarks", "gpu_suite.sh"), "first-light"], cwd=root,
                          env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}, capture_output=True,
                          text=True, timeout=120)
    seconds = time.perf_counter() - start
    env = (tmp_path / "env.txt").read_text()
    assert done.returncode != 0 and "no GPU is visible" in done.stdout, done.stdout + done.stderr
    assert "torch " in env and "commit " in env and "python " in env, env
    assert sorted(p.name for p in tmp_path.iterdir()) == ["env.txt"]
    assert seconds < 60, seconds


def test_solver_quality_counts_give_the_pooled_miou_and_dice_of_the_labels():
    """class_counts (tp, fp, fn per class; 255 ignored) pooled over images by solver_report.quality give the
    mIoU over present classes and the foreground Dice, worked out by hand here."""
    from benchmarks import solver_quality, solver_report
    labels = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 1, 0]])
    y = torch.nn.functional.one_hot(pred, 4).permute(2, 0, 1)[None].float()
    counts = solver_quality.class_counts(y, labels, 4)
    assert counts == "1 2 0 0 0 2 0 0 1 0 1 0"  # tp 1 2 0 0 | fp 0 2 0 0 | fn 1 0 1 0
    rows = [{"class_counts": counts}, {"class_counts": counts}]
    # IoU over the present classes 0, 1, 2: 1/2, 2/4, 0 (class 3 absent from the truth)
    assert solver_report.quality(rows, "camvid") == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    # Dice of classes 1-3: 8/12, 0, 0 (no class 3 anywhere: 0 / max(0, 1))
    assert solver_report.quality(rows, "acdc") == pytest.approx((2 / 3 + 0 + 0) / 3)
