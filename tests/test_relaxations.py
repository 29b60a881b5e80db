"""The relaxation table: the contract's sanity values (paper Fig. 1) through the reference and through every
backend's kernels, finiteness on one-hot labels, and no fallback for an unknown index."""
import importlib.util
import os

import pytest
import torch

import pottsops
from pottsops import reference
from conftest import all_backends, backend_id

FIG1 = [  # (relaxation, p, q, P(p, q))
    ("bilinear", (0.5, 0.5, 0.0), (0.5, 0.5, 0.0), 0.5),
    ("quadratic", (1.0, 0.0, 0.0), (0.0, 0.5, 0.5), 0.75),
    ("quadratic", (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), 1.0),
    ("normalized_quadratic", (0.5, 0.5, 0.0), (0.5, 0.5, 0.0), 0.0),
    ("normalized_quadratic", (1.0, 0.0, 0.0), (0.0, 0.5, 0.5), 1.0),
    ("normalized_quadratic", (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), 1.0),
]


def pair_image(p, q, dtype=torch.float64):
    """A 1x2 image whose one horizontal pair is (p, q)."""
    return torch.tensor([p, q], dtype=dtype).T.reshape(1, len(p), 1, 2)


@pytest.mark.parametrize("pair", all_backends(), ids=backend_id)
@pytest.mark.parametrize("relaxation,p,q,expected", FIG1, ids=lambda v: str(v))
def test_fig1_values(pair, relaxation, p, q, expected):
    backend, device = pair
    y = pair_image(p, q).to(device)
    energy = pottsops.potts_energy(y, relaxation=relaxation, backend=backend)
    assert float(energy) == pytest.approx(expected, abs=1e-12)


def test_fig1_orderings():
    # Quadratic prefers the uncertain (0, 1/2, 1/2) neighbour; normalised quadratic does not.
    p = torch.tensor([[1.0, 0, 0]])
    half, one = torch.tensor([[0, 0.5, 0.5]]), torch.tensor([[0, 0, 1.0]])
    assert reference.pair_potential("quadratic", p, half) < reference.pair_potential("quadratic", p, one)
    assert reference.pair_potential("normalized_quadratic", p, half) == \
        reference.pair_potential("normalized_quadratic", p, one)
    # Bilinear penalises two identical uncertain labels; normalised quadratic does not.
    u = torch.tensor([[0.5, 0.5, 0]])
    assert reference.pair_potential("bilinear", u, u) == 0.5
    assert reference.pair_potential("normalized_quadratic", u, u) == 0


@pytest.mark.parametrize("pair", all_backends(), ids=backend_id)
@pytest.mark.parametrize("relaxation", pottsops.RELAXATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_one_hot_seeds_of_different_classes_are_finite(pair, relaxation, dtype):
    backend, device = pair
    # Neighbouring one-hot labels of different classes, identical ones, and a uniform pixel.
    y = torch.zeros(2, 3, 3, 4, dtype=dtype)
    y[:, 0, :, :2] = 1
    y[:, 1, :, 2:] = 1
    y[1, :, 1, 1] = 1 / 3
    y = y.to(device).requires_grad_()
    image = torch.rand(2, 3, 3, 4, dtype=dtype, device=device) * 255
    for neighborhood in ("nn4", "nn8", pottsops.window(1)):
        energy = pottsops.potts_energy(y, image, relaxation=relaxation, neighborhood=neighborhood, backend=backend)
        (grad,) = torch.autograd.grad(energy, y)
        assert torch.isfinite(energy) and torch.isfinite(grad).all()


@pytest.mark.parametrize("relaxation", pottsops.RELAXATIONS)
def test_aliases_name_the_same_relaxation(relaxation):
    from pottsops.names import RELAXATION_ALIASES
    alias = next(a for a, name in RELAXATION_ALIASES.items() if name == relaxation)
    y = torch.softmax(torch.randn(1, 4, 5, 6, dtype=torch.float64), 1)
    assert pottsops.potts_energy(y, relaxation=alias) == pottsops.potts_energy(y, relaxation=relaxation)



if importlib.util.find_spec("triton") is not None:
    import triton
    import triton.language as tl

    from pottsops.triton.math import pair_terms

    @triton.jit
    def _pair_value_kernel(out, REL: tl.constexpr):
        half = tl.full((1,), 0.5, tl.float32)
        value, _, _, _ = pair_terms(half, half, half, 1e-8, REL)
        tl.store(out + tl.arange(0, 1), value)


def test_an_unknown_relaxation_index_is_an_error_in_the_triton_table():
    """The Triton table has no fallback: an index past it fails to compile (the C++ dispatcher raises too)."""
    if importlib.util.find_spec("triton") is None or os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs the triton package and its interpreter (TRITON_INTERPRET=1, set by conftest without a GPU)")
    out = torch.zeros(1)
    _pair_value_kernel[(1,)](out, REL=len(pottsops.RELAXATIONS) - 1)
    with pytest.raises(Exception, match="unknown relaxation index"):
        _pair_value_kernel[(1,)](out, REL=len(pottsops.RELAXATIONS))
