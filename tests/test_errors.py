"""Every error of docs/contract.md §8 names the argument, what was expected and what was given."""
import pytest
import torch

import pottsops

y = torch.softmax(torch.randn(2, 3, 4, 5), 1)
image = torch.rand(2, 3, 4, 5) * 255
seeds = torch.full((2, 4, 5), 255)
with_nan = y.clone()
with_nan[0, 0, 0, 0] = float("nan")
bad_seeds = seeds.clone()
bad_seeds[0, 0, 0] = 3


@pytest.mark.parametrize("call,error,pattern", [
    (lambda: pottsops.potts_energy(y[0]), ValueError, r"y: expected a 4-D tensor \(B, K, H, W\), got shape \(3, 4, 5\)"),
    (lambda: pottsops.potts_energy(y[:, :1]), ValueError, r"y: expected K >= 2 classes.*\(2, 1, 4, 5\)"),
    (lambda: pottsops.potts_energy(y.long()), TypeError, r"y: expected a floating-point tensor, got dtype torch.int64"),
    (lambda: pottsops.potts_energy([1.0]), TypeError, r"y: expected a torch.Tensor, got list"),
    (lambda: pottsops.potts_energy(y, image.byte()), TypeError, r"image: expected a floating-point tensor"),
    (lambda: pottsops.potts_energy(y, image[:, :, :3]), ValueError,
     r"image: expected shape \(2, C, 4, 5\) to match y \(2, 3, 4, 5\), got \(2, 3, 3, 5\)"),
    (lambda: pottsops.potts_energy(y, image.to("meta")), ValueError, r"image: expected a tensor on cpu.*got meta"),
    (lambda: pottsops.potts_energy(y, relaxation="potts"), ValueError,
     r"relaxation: unknown name 'potts'; expected one of 'bilinear'.*'cd'"),
    (lambda: pottsops.potts_energy(y, neighborhood="nn6"), ValueError,
     r"neighborhood: unknown neighbourhood 'nn6'; expected one of 'nn4', 'nn8'"),
    (lambda: pottsops.potts_energy(y, image, sigma_rgb=0.0), ValueError, r"sigma_rgb: expected a finite number > 0, got 0.0"),
    (lambda: pottsops.potts_energy(y, image, sigma_rgb=-1), ValueError, r"sigma_rgb: expected a finite number > 0, got -1"),
    (lambda: pottsops.potts_energy(y, neighborhood=pottsops.window(2), sigma_xy=0), ValueError,
     r"sigma_xy: expected a finite number > 0, got 0"),
    (lambda: pottsops.potts_energy(y, weights=torch.rand(2, 3, 4, 5)), ValueError,
     r"weights: expected shape \(2, 2, 4, 5\) \(one channel per offset of nn4\), got \(2, 3, 4, 5\)"),
    (lambda: pottsops.potts_energy(y, mask=torch.ones(2, 4, 5)), TypeError, r"mask: expected dtype torch.bool"),
    (lambda: pottsops.potts_energy(y, mask=torch.ones(2, 5, 4, dtype=torch.bool)), ValueError,
     r"mask: expected shape \(2, 4, 5\)"),
    (lambda: pottsops.potts_energy(y, reduction="max"), ValueError, r"reduction: expected one of 'sum', 'mean', 'none', got 'max'"),
    (lambda: pottsops.potts_energy(y, backend="tpu"), ValueError, r"backend: expected one of 'auto'.*got 'tpu'"),
    (lambda: pottsops.potts_energy(y * 2, validate=True), ValueError, r"y: expected values in \[0, 1\]"),
    (lambda: pottsops.potts_energy(y * 0.5, validate=True), ValueError, r"y: expected each pixel on the simplex"),
    (lambda: pottsops.potts_energy(with_nan, validate=True), ValueError, r"y: expected finite values"),
    (lambda: pottsops.window(0), ValueError, r"radius: expected an integer >= 1, got 0"),
    (lambda: pottsops.window(2, dilation=0), ValueError, r"dilation: expected an integer >= 1, got 0"),
    (lambda: pottsops.window(20), ValueError, r"radius: window\(20\) has 840 offsets, at most 512"),
    (lambda: pottsops.affinity(image[0]), ValueError, r"image: expected a 4-D tensor \(B, C, H, W\), got shape \(3, 4, 5\)"),
    (lambda: pottsops.unary(y, y[:, :2]), ValueError, r"y: expected shape \(2, 3, 4, 5\) \(the shape of logits\)"),
    (lambda: pottsops.unary(y.int(), y), TypeError, r"logits: expected a floating-point tensor"),
    (lambda: pottsops.unary(y, y, "kl"), ValueError, r"unary: unknown name 'kl'; expected one of 'cce', 'ce', 'rce'"),
    (lambda: pottsops.self_labeling_loss(y, y, seeds.float()), TypeError, r"seeds: expected an integer tensor"),
    (lambda: pottsops.self_labeling_loss(y, y, seeds[:1]), ValueError, r"seeds: expected shape \(2, 4, 5\)"),
    (lambda: pottsops.self_labeling_loss(y, y, bad_seeds), ValueError, r"seeds: expected class ids in \[0, 2\] or ignore_index=255, got 3"),
    (lambda: pottsops.self_labeling_loss(y, y, seeds, eta=-1), ValueError, r"eta: expected a finite number >= 0, got -1"),
    # issue 30: a tiny sigma_rgb was a ZeroDivisionError; a user Neighborhood was not checked
    (lambda: pottsops.potts_energy(y, image, sigma_rgb=1e-300), ValueError, r"sigma_rgb: expected a number whose"),
    (lambda: pottsops.Neighborhood("self", ((0, 0),)), ValueError, r"offsets: \(\(0, 0\)\) is not an integer"),
    (lambda: pottsops.Neighborhood("left", ((0, -1),)), ValueError, r"offsets: \(\(0, -1\)\) is not"),
    (lambda: pottsops.Neighborhood("c", ((0, 1),), "cosine"), ValueError, r"factor: expected one of"),
    (lambda: pottsops.potts_energy(y, torch.rand(2, 15, 4, 5), neighborhood="dense", relaxation="q"), ValueError,
     r"image: the lattice is accurate up to 4 channels .*, got 15: use fewer channels"),
    (lambda: pottsops.solve(y, image, seeds, init={"y": y}), TypeError, r"init: expected a torch.Tensor, got dict"),
], ids=lambda v: getattr(v, "__name__", None) if isinstance(v, type) else None)
def test_error_names_the_argument(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_unavailable_backend_says_why():
    status = pottsops.backends()
    missing = [name for name, s in status.items() if not s.available]
    for name in missing:
        with pytest.raises(RuntimeError, match=f"backend: the '{name}' backend is not available: "):
            pottsops.potts_energy(y, backend=name)
    assert all(s.reason for s in status.values())


def test_backend_that_cannot_run_on_the_device():
    if not pottsops.backends()["cpu"].available:
        pytest.skip("the cpu backend is not built here: " + pottsops.backends()["cpu"].reason)
    with pytest.raises(ValueError, match="backend: the 'cpu' backend cannot run on meta tensors"):
        pottsops.potts_energy(y.to("meta"), backend="cpu")


def test_environment_override(monkeypatch):
    monkeypatch.setenv("POTTSOPS_BACKEND", "gpu")
    with pytest.raises(ValueError, match=r"POTTSOPS_BACKEND: expected one of"):
        pottsops.potts_energy(y)
    monkeypatch.setenv("POTTSOPS_BACKEND", "reference")
    torch.testing.assert_close(pottsops.potts_energy(y), pottsops.potts_energy(y, backend="reference"))


def test_the_command_line_says_what_was_wrong():
    """python -m pottsops --help prints the usage and exits 0; an unknown command is named, with exit 2."""
    import subprocess
    import sys
    shown = subprocess.run([sys.executable, "-m", "pottsops", "--help"], capture_output=True, text=True)
    assert shown.returncode == 0 and "python -m pottsops [status | build | clean]" in shown.stdout
    wrong = subprocess.run([sys.executable, "-m", "pottsops", "bogus"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "unknown command 'bogus'" in wrong.stderr
