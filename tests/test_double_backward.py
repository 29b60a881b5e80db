"""Second derivatives: the fused kernels' backward passes are not differentiable again, so asking for a
second derivative (create_graph=True) is an error naming the op, never a silently wrong Hessian-vector
product (PyTorch only warns where an op has no autograd of its own); the reference grid energy, plain
autograd, gives the right one (against finite differences of the gradient)."""
import pytest
import torch

import pottsops
from conftest import STATUS, random_image, soft_labels


def hvp(fn, y, v):
    y = y.detach().requires_grad_()
    (grad,) = torch.autograd.grad(fn(y), y, create_graph=True)
    (out,) = torch.autograd.grad((grad * v).sum(), y)
    return out


def calls():
    g = torch.Generator().manual_seed(0)
    y = soft_labels((2, 3, 6, 7), torch.float64, generator=g)
    image = random_image((2, 3, 6, 7), generator=g, dtype=torch.float64)
    logits = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64)
    found = {"unary cpu": (lambda t: pottsops.unary(logits, t, "cce", backend="cpu"), "unary_loss"),
             "grid cpu": (lambda t: pottsops.potts_energy(t, image, backend="cpu"), "grid_potts_energy"),
             "dense lattice": (lambda t: pottsops.potts_energy(t, image, neighborhood="dense", relaxation="q",
                                                               backend="cpu"), "lattice_quadratic"),
             "DenseCRFLoss": (lambda t: pottsops.nn.DenseCRFLoss(1.0, 15.0, 20.0, 1.0)(image, t, torch.ones(2, 6, 7)),
                              "lattice_quadratic"),
             "dense exact": (lambda t: pottsops.potts_energy(t, image, neighborhood="dense", method="exact",
                                                             backend="reference"), "dense_potts_energy")}
    return y, found


@pytest.mark.skipif(not STATUS["cpu"].available, reason=f"the C++ kernels are not available: {STATUS['cpu'].reason}")
@pytest.mark.parametrize("name", ["unary cpu", "grid cpu", "dense lattice", "DenseCRFLoss", "dense exact"])
def test_a_second_derivative_of_a_fused_op_is_an_error(name):
    y, found = calls()
    fn, op = found[name]
    torch.autograd.grad(fn(y.clone().requires_grad_()), y.clone().requires_grad_(), allow_unused=True)  # first: fine
    with pytest.raises(RuntimeError, match=op):
        hvp(fn, y, torch.ones_like(y))


def test_the_reference_grid_energy_has_the_right_second_derivative():
    g = torch.Generator().manual_seed(1)
    y = soft_labels((1, 3, 5, 6), torch.float64, generator=g)
    image = random_image((1, 3, 5, 6), generator=g, dtype=torch.float64)
    v = torch.randn(y.shape, generator=g, dtype=torch.float64)
    fn = lambda t: pottsops.potts_energy(t, image, relaxation="cd", backend="reference")  # noqa: E731

    def grad(t):
        t = t.detach().requires_grad_()
        return torch.autograd.grad(fn(t), t)[0]
    h = 1e-6
    expected = (grad(y + h * v) - grad(y - h * v)) / (2 * h)
    torch.testing.assert_close(hvp(fn, y, v), expected, rtol=1e-5, atol=1e-7)
