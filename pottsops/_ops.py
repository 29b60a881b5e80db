"""The compiled operators (schemas in csrc/ops.cpp): fake kernels for torch.compile and autograd, registered
when pottsops._extension loads the kernels (on_load)."""
import torch

from pottsops.reference import accumulation_dtype  # float64 stays, the rest in float32


def _same_device(first_name, first, **others):
    """A fake kernel also runs when a meta tensor is mixed with real ones (the dispatcher picks Meta): it
    raises, as the real kernels do, instead of returning uninitialised tensors."""
    for name, t in others.items():
        if t is not None and t.device != first.device:
            raise ValueError(f"{name}: expected a tensor on {first.device} (the device of {first_name}), "
                             f"got {t.device}")


def _register():
    lib = "pottsops::"

    @torch.library.register_fake(lib + "grid_potts_energy")
    def _(y, image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps):
        _same_device("y", y, image=image, weights=weights, mask=mask, inv_two_sigma2=inv_two_sigma2)
        return y.new_empty(y.shape[0], dtype=accumulation_dtype(y.dtype))

    @torch.library.register_fake(lib + "grid_potts_energy_backward")
    def _(grad_energy, y, image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps,
          weights_grad):
        _same_device("y", y, grad_energy=grad_energy, image=image, weights=weights, mask=mask,
                     inv_two_sigma2=inv_two_sigma2)
        grad_weights = torch.empty_like(weights, memory_format=torch.contiguous_format) if weights_grad \
            else y.new_empty(0)
        return torch.empty_like(y), grad_weights

    @torch.library.register_fake(lib + "grid_affinity")
    def _(image, mask, inv_two_sigma2, offsets, spatial):
        _same_device("image", image, mask=mask, inv_two_sigma2=inv_two_sigma2)
        dtype = accumulation_dtype(image.dtype)
        B, _, H, W = image.shape
        return image.new_empty(B, len(offsets) // 2, H, W, dtype=dtype)

    @torch.library.register_fake(lib + "unary_loss")
    def _(logits, y, mask, kind, eps):
        _same_device("logits", logits, y=y, mask=mask)
        B, _, H, W = logits.shape
        return logits.new_empty(B, H, W)

    @torch.library.register_fake(lib + "unary_loss_backward")
    def _(grad_loss, logits, y, mask, kind, eps):
        _same_device("logits", logits, grad_loss=grad_loss, y=y, mask=mask)
        return torch.empty_like(logits), torch.empty_like(y)

    @torch.library.register_fake(lib + "lattice_build")
    def _(features):
        B, d, H, W = features.shape
        weights = accumulation_dtype(features.dtype)
        vertices = torch.library.get_ctx().new_dynamic_size()  # the lattice's size depends on the data
        if features.device.type == "cuda":  # pottsops/lattice_tensors.py build_tensors
            entries = B * H * W * (d + 1)
            return [features.new_empty(B, H * W, d + 1, dtype=weights), *(features.new_empty(entries, dtype=torch.long)
                                                                          for _ in range(2)),
                    features.new_empty(vertices + 1, dtype=torch.long),
                    features.new_empty(vertices, d + 1, 2, dtype=torch.long)]
        return [features.new_empty(B, H * W, d + 1, dtype=torch.int32),  # csrc/cpu/lattice.cpp
                features.new_empty(B, H * W, d + 1, dtype=weights),
                features.new_empty(vertices, d + 1, 2, dtype=torch.int32), features.new_empty(B + 1, dtype=torch.long)]

    @torch.library.register_fake(lib + "lattice_filter")
    def _(values, lattice):
        _same_device("values", values, **{f"lattice[{i}]": t for i, t in enumerate(lattice)})
        return torch.empty_like(values, memory_format=torch.contiguous_format)

    def filter_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[1])

    def filter_backward(ctx, grad):  # the filter is symmetric: its adjoint is itself
        lattice = list(ctx.saved_tensors)
        return torch.ops.pottsops.lattice_filter(grad.contiguous(), lattice), [None] * len(lattice)

    torch.library.register_autograd(lib + "lattice_filter", filter_backward, setup_context=filter_setup)

    @torch.library.register_fake(lib + "lattice_quadratic")
    def _(values, lattice):
        _same_device("values", values, **{f"lattice[{i}]": t for i, t in enumerate(lattice)})
        forms = values.new_empty(values.shape[:2], dtype=accumulation_dtype(values.dtype))
        return torch.empty_like(values, memory_format=torch.contiguous_format), forms

    def quadratic_setup(ctx, inputs, output):
        ctx.mark_non_differentiable(output[0])  # so the lattice need not be kept for the backward pass
        ctx.save_for_backward(output[0])
        ctx.dtype, ctx.parts = inputs[0].dtype, len(inputs[1])

    def quadratic_backward(ctx, grad_filtered, grad_forms):
        first_order_only("lattice_quadratic")  # 2 g A v from the kept A v: not differentiable again
        (filtered,) = ctx.saved_tensors  # d forms[b, c] / d values[b, c] = 2 A values[b, c]: no filtering
        return (2 * grad_forms[:, :, None, None] * filtered).to(ctx.dtype), [None] * ctx.parts

    torch.library.register_autograd(lib + "lattice_quadratic", quadratic_backward, setup_context=quadratic_setup)

    @torch.library.register_fake(lib + "lattice_simplex")
    def _(features):
        B, d, H, W = features.shape
        dtype = accumulation_dtype(features.dtype)
        return features.new_empty(B, H * W, d + 1, d, dtype=torch.int32), features.new_empty(B, H * W, d + 1,
                                                                                            dtype=dtype)

    @torch.library.register_fake(lib + "grid_solver_gradient")
    def _(y, image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps, operand, unlabeled, seeded,
          kind, eta, lam, unary_eps):
        _same_device("y", y, image=image, weights=weights, mask=mask, inv_two_sigma2=inv_two_sigma2, operand=operand,
                     unlabeled=unlabeled, seeded=seeded)
        return y.new_empty(y.shape[0]), torch.empty_like(y, memory_format=torch.contiguous_format)

    @torch.library.register_fake(lib + "adaptive_step")
    def _(theta, m, v, y, grad, steps, active, seeds, seeded, rule):
        _same_device("y", y, theta=theta, m=m, v=v, grad=grad, steps=steps, scale=active, seeds=seeds, seeded=seeded)
        return None

    @torch.library.register_fake(lib + "adaptive_solve")
    def _(y, theta, image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps, operand, unlabeled,
          seeded, seeds, lower, kind, eta, lam, unary_eps, rule, iters, tol, window):
        _same_device("y", y, theta=theta, image=image, weights=weights, mask=mask, inv_two_sigma2=inv_two_sigma2,
                     operand=operand, unlabeled=unlabeled, seeded=seeded, seeds=seeds, lower=lower)
        B = y.shape[0]
        steps = torch.library.get_ctx().new_dynamic_size()  # the trace's length depends on the data
        return torch.empty_like(y), y.new_empty(B), y.new_empty(steps, B), y.new_empty(B, dtype=torch.long)

    @torch.library.register_fake(lib + "segment_sum")
    def _(rows, offsets):
        _same_device("rows", rows, offsets=offsets)
        return rows.new_empty(offsets.shape[0] - 1, rows.shape[1])
    grid_setup, grid_backward = grid_autograd(torch.ops.pottsops.grid_potts_energy_backward)
    torch.library.register_autograd(lib + "grid_potts_energy", grid_backward, setup_context=grid_setup)
    unary_setup, unary_backward = unary_autograd(torch.ops.pottsops.unary_loss_backward)
    torch.library.register_autograd(lib + "unary_loss", unary_backward, setup_context=unary_setup)


def first_order_only(op):
    """Raises where a second derivative is asked of op (create_graph=True runs a backward with grad mode on):
    op's backward is a kernel with no derivative of its own, and PyTorch would otherwise return a wrong one
    with only a warning."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"{op}: second derivatives (double backward, create_graph=True) are not implemented by "
                           "the fused kernels; use backend='reference' for the grid and unary terms")


def grid_autograd(backward_op):
    """(setup_context, backward) of a grid_potts_energy op whose gradient is `backward_op` (any backend)."""
    def setup(ctx, inputs, output):
        y, image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps = inputs
        ctx.save_for_backward(y, image, weights, mask, inv_two_sigma2)
        ctx.params = (offsets, spatial, relaxation, eps)
        ctx.weights_grad = weights is not None and ctx.needs_input_grad[2]

    def backward(ctx, grad_energy):
        first_order_only("grid_potts_energy")
        y, image, weights, mask, inv_two_sigma2 = ctx.saved_tensors
        grad_y, grad_weights = backward_op(grad_energy, y, image, weights, mask, inv_two_sigma2, *ctx.params,
                                           ctx.weights_grad)
        return grad_y, None, grad_weights if ctx.weights_grad else None, None, None, None, None, None, None

    return setup, backward


def unary_autograd(backward_op):
    """(setup_context, backward) of a unary_loss op whose gradient is `backward_op` (any backend)."""
    def setup(ctx, inputs, output):
        logits, y, mask, kind, eps = inputs
        ctx.save_for_backward(logits, y, mask)
        ctx.params = (kind, eps)

    def backward(ctx, grad_loss):
        first_order_only("unary_loss")
        logits, y, mask = ctx.saved_tensors
        grad_logits, grad_y = backward_op(grad_loss, logits, y, mask, *ctx.params)
        return grad_logits, grad_y, None, None, None

    return setup, backward

def on_load(kind):
    """Called once each kind of kernels is loaded: the schemas' fakes and autograd with the C++ module, the CUDA
    lattice (CUDA kernels for the simplex and splat, tensor ops around them) with the CUDA kernels."""
    if kind == "cpu":
        _register()
    elif kind == "cuda":
        from pottsops import lattice_tensors
        torch.library.register_kernel("pottsops::lattice_build", "cuda", lattice_tensors.build_tensors)
        torch.library.register_kernel("pottsops::lattice_filter", "cuda", lattice_tensors.filter_tensors)
        torch.library.register_kernel("pottsops::lattice_quadratic", "cuda", lattice_tensors.quadratic_tensors)
