"""Nothing a user passes crashes the process (docs/contract.md §8): random calls of every public function and
registered op (tests/fuzz.py), each batch in its own process so that a crash or a hang is a failure here and
not a dead pytest, and the cases the fuzz run of issue 16 found, one by one.

POTTSOPS_FUZZ_CASES=N runs N random cases (default 240, about a minute on 2 cores); POTTSOPS_FUZZ_FIRST
moves the window (a longer sweep: POTTSOPS_FUZZ_CASES=5000)."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import pottsops
from conftest import STATUS

HERE = os.path.dirname(__file__)
CASES = int(os.environ.get("POTTSOPS_FUZZ_CASES", "240"))
FIRST = int(os.environ.get("POTTSOPS_FUZZ_FIRST", "0"))
CHUNK = 80
needs_cpu = pytest.mark.skipif(not STATUS["cpu"].available, reason="the cpu backend is not built here: "
                               + STATUS["cpu"].reason)
needs_triton = pytest.mark.skipif(not STATUS["triton"].available, reason="triton is not available here: "
                                  + STATUS["triton"].reason)


def run_cases(first, count):
    """{case: result} of fuzz cases first .. first + count - 1, restarting after a case that kills the
    process (its result then says how it died)."""
    results, number = {}, first
    while number < first + count:
        process = subprocess.run([sys.executable, os.path.join(HERE, "fuzz.py"), str(number),
                                  str(first + count - number)], capture_output=True, text=True, timeout=3600)
        started = None
        for line in process.stdout.splitlines():
            record = json.loads(line)
            if "start" in record:
                started = record["start"]
            else:
                results[record["case"]], started = record, None
        if started is None:
            break
        how = (f"killed by {signal.Signals(-process.returncode).name}" if process.returncode < 0
               else f"exit status {process.returncode}")
        results[started] = dict(case=started, problem=f"the process died ({how}): {process.stderr[-1500:]}")
        number = started + 1
    return results


@pytest.mark.parametrize("first", range(FIRST, FIRST + CASES, CHUNK))
def test_random_calls_are_answered_or_refused_by_name(first):
    results = run_cases(first, min(CHUNK, FIRST + CASES - first))
    bad = [f"case {r['case']} ({r.get('target')}, {r.get('expect')}): {r['problem']}\n    {r.get('notes', '')}"
           for r in results.values() if r["problem"]]
    assert not bad, "\n".join(bad)


def isolated(code, timeout=120):
    """Runs code in a fresh process: (return code, stdout, stderr); a crash is a return code, not ours."""
    process = subprocess.run([sys.executable, "-c", "import os\nos.environ.setdefault('TRITON_INTERPRET', '1')\n"
                              + code], capture_output=True, text=True, timeout=timeout)
    return process.returncode, process.stdout, process.stderr


def expect_error(code, pattern):
    rc, out, err = isolated(f"import torch, pottsops\ntry:\n    {code}\nexcept Exception as e:\n"
                            f"    print(type(e).__name__, e)\nelse:\n    print('no error')")
    assert rc == 0, f"the process died ({rc}): {err[-1500:]}"
    assert pattern in out, out


@needs_cpu
@pytest.mark.parametrize("code, pattern", [
    # NaN, tiny sigmas or huge features made the simplex search write outside its arrays
    ("pottsops.bilateral_filter(torch.rand(1,2,6,7), torch.rand(1,3,6,7)*255, 3.0, 1e-7, backend='cpu')",
     "sigma_rgb: colour differences / sigma_rgb reach"),
    ("pottsops.bilateral_filter(torch.rand(1,2,6,7), torch.full((1,3,6,7), float('nan')), 3.0, 9.0, backend='cpu')",
     "image: expected finite values"),
    ("pottsops.bilateral_filter(torch.rand(1,2,6,7), torch.rand(1,3,6,7), 1e-30, 9.0, backend='cpu')",
     "sigma_xy: expected at least"),
    ("torch.ops.pottsops.lattice_build(torch.rand(1,5,6,7) * 1e12)",
     "features: expected finite values of magnitude at most 2^24"),
    ("torch.ops.pottsops.lattice_simplex(torch.full((1,5,2,2), float('nan'), dtype=torch.float64))",
     "features: expected finite values"),
    # registered ops that trusted their arguments
    ("torch.ops.pottsops.segment_sum(torch.rand(3, 2), torch.tensor([0, 9]))", "offsets: expected non-decreasing"),
    ("torch.ops.pottsops.segment_sum(torch.rand(3, 2), torch.tensor([2, 1, 3]))", "offsets: expected non-decreasing"),
    ("torch.ops.pottsops.unary_loss(torch.rand(1,3,2,2), torch.rand(1,3,2,2), None, 3, 1e-8)",
     "kind: expected an index in [0, 3)"),
    ("torch.ops.pottsops.unary_loss(torch.rand(1,3,2,2), torch.rand(1,3,2,2), None, 0, float('nan'))",
     "eps: expected a finite number"),
    ("torch.ops.pottsops.grid_potts_energy(torch.rand(1,3,4,4), None, None, torch.ones(1,4,4, dtype=torch.bool, "
     "device='meta'), None, [0, 1], [1.0], 0, 1e-8)", "mask: expected a tensor on cpu"),
    ("torch.ops.pottsops.grid_potts_energy(torch.rand(1,3,4,4), None, None, None, None, [0, 1], [float('nan')], 0, "
     "1e-8)", "spatial: expected finite factors"),
    ("y = torch.full((1,3,2,2), 1/3); z = torch.zeros_like(y)\n    "
     "torch.ops.pottsops.adaptive_step(z.clone(), z.clone(), z.clone(), y, z, torch.ones(1, dtype=torch.long), "
     "torch.ones(1, dtype=torch.float64), torch.full((1,2,2), 7), torch.ones(1,2,2, dtype=torch.bool), "
     "[0.1, 0.9, 0.99, 1e-8, -20.0])", "seeds: expected class ids in [0, 2] where seeded"),
    ("y = torch.full((1,3,2,2), 1/3)\n    torch.ops.pottsops.grid_solver_gradient(y, None, None, None, None, [0, 1], "
     "[1.0], 0, 1e-8, y, torch.ones(1,2,2, dtype=torch.bool), torch.zeros(1,2,2, dtype=torch.bool), 5, 0.3, 6.0, "
     "1e-8)", "kind: expected an index in [0, 3)"),
])
def test_the_crashes_found_are_errors_now(code, pattern):
    expect_error(code, pattern)


@needs_cpu
def test_many_feature_channels_do_not_hang_the_lattice():
    """Six or more feature channels filled the fixed-size hash table (find looped for ever), even on one
    pixel; the table now grows, and the lattice takes at most 4 channels and refuses sparse points (issue 30:
    where it cannot be accurate)."""
    rc, out, err = isolated("import torch, pottsops\n"
                            "torch.manual_seed(0)\n"
                            "one = pottsops.bilateral_filter(torch.ones(1,1,1,1), torch.rand(1,4,1,1)*255, 3.0, 50.0,"
                            " backend='cpu')\n"
                            "try:\n"
                            "    pottsops.bilateral_filter(torch.ones(1,2,9,11), torch.rand(1,14,9,11)*255, 3.0, 0.5, "
                            "backend='cpu')\n"
                            "except ValueError as e:\n"
                            "    print(float(one), str(e).split(' (')[0])", timeout=300)
    assert rc == 0, err[-1500:]
    single, refusal = out.split(" ", 1)
    # a lone pixel's filter is its own value (weight 1), within the lattice's error: its blur overstates a lone
    # point's own weight (1.45 at 4 channels; docs/design.md, "Lattice accuracy")
    assert 0.7 < float(single) < 1.55
    assert refusal.strip() == "image: the lattice is accurate up to 4 channels"


@needs_triton
@pytest.mark.parametrize("code, pattern", [
    ("from pottsops.triton import grid_potts\n    grid_potts.grid_potts_energy(torch.rand(1,3,4,4), None, "
     "torch.rand(1,1,4,3), None, None, [0, 1], [1.0], 0, 1e-8)", "weights: expected shape (1, 1, 4, 4)"),
    ("from pottsops.triton import grid_potts\n    grid_potts.grid_potts_energy(torch.rand(1,3,4,4), None, None, "
     "None, None, [0, 1], [1.0], 9, 1e-8)", "relaxation: expected an index in [0, 6)"),
    ("from pottsops.triton import grid_potts\n    grid_potts.grid_potts_energy(torch.rand(1,1,4,4), None, None, "
     "None, None, [0, 1], [1.0], 0, 1e-8)", "y: expected K >= 2 classes"),
    ("from pottsops.triton import unary\n    unary.unary_loss(torch.rand(1,3,4,4), torch.rand(1,3,4,3), None, 0, "
     "1e-8)", "y: expected shape (1, 3, 4, 4)"),
])
def test_triton_ops_check_their_arguments(code, pattern):
    expect_error(code, pattern)


def test_silent_wrong_values_are_right_now():
    backend = "cpu" if STATUS["cpu"].available else "reference"
    y = torch.softmax(torch.randn(1, 3, 8, 9, dtype=torch.float64), 1)
    image = torch.full((1, 3, 8, 9), 128.0, dtype=torch.float64)
    # sigma_rgb="auto" on a constant image: weights of position only (was 2.4e23 on the lattice)
    kwargs = dict(relaxation="bl", neighborhood="dense", sigma_rgb="auto", sigma_xy=3.0)
    lattice = pottsops.potts_energy(y, image, backend=backend, **kwargs)
    exact = pottsops.potts_energy(y, image, method="exact", backend="reference", **kwargs)
    assert abs(float(lattice) / float(exact) - 1) < 0.25
    # a masked pixel holding NaN changes nothing on the dense neighbourhood, value and gradient
    mask = torch.ones(1, 8, 9, dtype=torch.bool)
    mask[0, 3, 4] = False
    poisoned, clean = y.clone(), y.clone()
    poisoned[0, :, 3, 4], clean[0, :, 3, 4] = float("nan"), 0.25
    image = torch.rand(1, 3, 8, 9, dtype=torch.float64) * 255
    image_poisoned = image.clone()
    image_poisoned[0, :, 3, 4] = float("nan")
    for method in ("lattice", "exact"):
        values = []
        for labels, picture in ((poisoned, image_poisoned), (clean, image)):
            labels = labels.clone().requires_grad_()
            energy = pottsops.potts_energy(labels, picture, relaxation="nq", neighborhood="dense", mask=mask,
                                           method=method, sigma_xy=3.0, backend=backend if method == "lattice"
                                           else "reference")
            energy.backward()
            values.append((energy.detach(), torch.where(mask[:, None], labels.grad, 0)))
        assert torch.isfinite(values[0][0]) and torch.isfinite(values[0][1]).all()
        torch.testing.assert_close(values[0], values[1])
    # reductions over no pixels are 0
    empty = torch.zeros(1, 8, 9, dtype=torch.bool)
    assert float(pottsops.potts_energy(y, image, mask=empty, reduction="mean", backend=backend)) == 0
    assert float(pottsops.unary(torch.randn(1, 3, 8, 9), y.float(), mask=empty, backend=backend)) == 0


@pytest.mark.parametrize("backend", ["reference"] + [b for b in ("cpu", "triton") if STATUS[b].available])
def test_one_hot_neighbours_of_different_classes_agree_and_stay_finite(backend):
    """The lq gradient at one-hot neighbours of different classes (where its clamp sits at 0) is the contract's
    partials on every backend; fp16 and bf16 gradients of order 1/eps saturate instead of becoming Inf, and
    energies of reduced precision come back in float32 (fp16 ends at 65504)."""
    y = torch.zeros(1, 3, 2, 3, dtype=torch.float64)
    y[0, 0, :, 0], y[0, 1, :, 1], y[0, 2, :, 2] = 1, 1, 1
    for relaxation in pottsops.RELAXATIONS:
        expected = None
        for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
            labels = y.to(dtype).clone().requires_grad_()
            energy = pottsops.potts_energy(labels, relaxation=relaxation, neighborhood="nn8", backend=backend)
            energy.backward()
            assert energy.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
            assert torch.isfinite(energy) and torch.isfinite(labels.grad).all(), (relaxation, dtype)
            reference = labels.detach().double().requires_grad_()
            pottsops.potts_energy(reference, relaxation=relaxation, neighborhood="nn8", backend="reference").backward()
            top = torch.finfo(dtype).max
            torch.testing.assert_close(labels.grad.double(), reference.grad.clamp(-top, top), rtol=1e-2, atol=1e-6)
            if dtype == torch.float64:
                expected = reference.grad
        assert expected is not None


@pytest.mark.parametrize("call, pattern", [
    (lambda l, i, s: pottsops.solve(l, i, s, init=torch.zeros_like(l)), "init: expected labels >= 0 with a positive"),
    (lambda l, i, s: pottsops.solve(l, i, s, sigma_xy=0.0, neighborhood=pottsops.window(2)),
     "sigma_xy: expected a finite number > 0"),
    (lambda l, i, s: pottsops.solve(l, i, s, sigma_rgb=1e-30), "sigma_rgb: expected a number whose 1 / (2 sigma_rgb^2)"),
    (lambda l, i, s: pottsops.solve(l, None, s, weights=torch.full((1, 2, 6, 7), float("nan"))),
     "weights: expected finite values"),
    (lambda l, i, s: pottsops.solve(l, i, s, eta=float("nan")), "eta: expected a finite number"),
    (lambda l, i, s: pottsops.potts_energy(torch.softmax(l, 1), i, eps=float("inf")), "eps: expected a finite number"),
    (lambda l, i, s: pottsops.potts_energy(torch.softmax(l, 1), i, sigma_rgb=1e-30),
     "sigma_rgb: expected a number whose 1 / (2 sigma_rgb^2)"),
    (lambda l, i, s: pottsops.unary(l, torch.softmax(l, 1), eps=float("nan")), "eps: expected a finite number"),
    (lambda l, i, s: pottsops.self_labeling_loss(l, torch.softmax(l, 1), s, eta=float("inf")),
     "eta: expected a finite number"),
    (lambda l, i, s: pottsops.window(True), "radius: expected an integer >= 1"),
])
def test_bad_scalars_are_named(call, pattern):
    logits, image = torch.randn(1, 3, 6, 7), torch.rand(1, 3, 6, 7) * 255
    seeds = torch.full((1, 6, 7), 255)
    seeds[0, 0, 0] = 1
    with pytest.raises(ValueError) as error:
        call(logits, image, seeds)
    assert pattern in str(error.value)


@pytest.mark.parametrize("backend", ["reference"] + [b for b in ("cpu", "triton") if STATUS[b].available])
def test_windows_reaching_past_the_image(backend):
    """Offsets past the image hold no pair: the reference computes them (it failed with a size message), and
    window(1, dilation=10**7) on a 4 x 5 image costs nothing (it allocated 3.4 GB)."""
    y = torch.softmax(torch.randn(2, 3, 4, 5, dtype=torch.float64), 1).requires_grad_()
    image = torch.rand(2, 3, 4, 5, dtype=torch.float64) * 255
    far = pottsops.potts_energy(y, image, neighborhood=pottsops.window(1, dilation=10 ** 7), backend=backend)
    far.backward()
    assert float(far.detach()) == 0 and float(y.grad.abs().max()) == 0
    reach = pottsops.window(3)  # offsets up to 3 rows / columns: some past a 4 x 5 image, some not
    torch.testing.assert_close(pottsops.potts_energy(y, image, neighborhood=reach, backend=backend),
                               pottsops.potts_energy(y, image, neighborhood=reach, backend="reference"))


KILL_RUN = ["-m", "train", "--data", "synthetic", "--method", "soft", "--backbone", "unet", "--crop", "32", "32",
            "--synthetic-size", "6", "2", "--batch-size", "2", "--epochs", "3", "--checkpoint-every", "1",
            "--solver-iters", "5", "--workers", "0", "--panels", "0", "--no-progress", "--lr", "0.01", "--resume"]


def _run_state(out):
    """What an interrupted run must end with as an uninterrupted one does: the weights, the logs' rows
    (without the seconds they took) and the final scores."""
    import csv
    state = torch.load(os.path.join(out, "last.pt"), weights_only=False)
    logs = {}
    for name, timed in (("train_log.csv", "seconds"), ("eval_log.csv", "train_seconds")):
        with open(os.path.join(out, name), newline="") as f:
            logs[name] = [{k: v for k, v in row.items() if k != timed} for row in csv.DictReader(f)]
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    return state["model"], logs, (results["steps"], results["score"], results["scores"]["iou"])


def _size(path):
    return os.path.getsize(path) if os.path.exists(path) else -1


@pytest.mark.parametrize("seed", [0, 1])
def test_training_runs_killed_at_random_moments_resume_to_the_uninterrupted_run(tmp_path, seed):
    """Killed trainer runs (issue 38): a tiny run SIGKILLed four times, each time continued with --resume,
    then run to its end, ends with the weights, log rows and scores of a run never killed, and leaves no
    temporaries.  Two kills land in the windows a kill found: as soon as train_log.csv changes (created, maybe
    without its header yet, rewritten or grown) and as soon as eval_log.csv grows (an evaluation row written, the checkpoint that records it
    not yet); two at random moments within the uninterrupted run's time."""
    import random
    import time
    reference = tmp_path / "straight"
    start = time.perf_counter()
    subprocess.run([sys.executable, *KILL_RUN, "--out", str(reference)], check=True, capture_output=True, timeout=600)
    duration = time.perf_counter() - start
    rng, out = random.Random(seed), tmp_path / "killed"
    train_log, eval_log = out / "train_log.csv", out / "eval_log.csv"
    moments = ["train log written", "random", "random"]
    rng.shuffle(moments)
    moments.insert(0, "eval log grew")  # first: a later one may find the run past its last evaluation row
    landed = []
    for moment in moments:
        if (out / "results.json").exists():
            break
        train_size, eval_size = _size(train_log), _size(eval_log)
        when = {"train log written": lambda: _size(train_log) != train_size,  # created, rewritten or grown
                "eval log grew": lambda: _size(eval_log) > max(eval_size, 0)}.get(moment)
        deadline = time.perf_counter() + rng.uniform(0.2, 1.0) * duration
        process = subprocess.Popen([sys.executable, *KILL_RUN, "--out", str(out)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        while process.poll() is None and not (when() if when else time.perf_counter() > deadline):
            time.sleep(0.002)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            landed.append(moment)
        process.wait()
    done = subprocess.run([sys.executable, *KILL_RUN, "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "eval log grew" in landed, landed
    weights, logs, results = _run_state(out)
    expected_weights, expected_logs, expected_results = _run_state(reference)
    for name, value in expected_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=0, msg=name)
    assert logs == expected_logs and results == expected_results
    assert not [name for name in os.listdir(out) if ".tmp" in name]
