"""Argument checks shared by the public functions: each error names the argument, what was expected
and what was given (docs/contract.md §8)."""

import os
import sys
import warnings

import torch


def shape_str(t):
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_tensor(name, t):
    if not isinstance(t, torch.Tensor):
        hint = (": torchvision's segmentation models return a dict, pass model(x)['out']"
                if isinstance(t, dict) and "out" in t else "")
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}{hint}")


def check_probabilities(name, t):
    """Values in [0, 1] (a softmax output), checked with one pass (aminmax) outside torch.compile: logits
    passed by mistake make the log relaxations NaN."""
    if torch.compiler.is_compiling() or t.numel() == 0:
        return
    low, high = torch.aminmax(t.detach())
    if not (float(low) >= -1e-6 and float(high) <= 1 + 1e-6):
        raise ValueError(f"{name}: expected probabilities in [0, 1] (softmax(logits, 1), not logits), got values in "
                         f"[{float(low):.3g}, {float(high):.3g}]")


def check_float(name, t):
    check_tensor(name, t)
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")


def check_labels(name, t):
    """A (B, K, H, W) floating tensor with K >= 2."""
    check_float(name, t)
    if t.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D tensor (B, K, H, W), got shape {shape_str(t)}")
    if t.shape[1] < 2:
        raise ValueError(f"{name}: expected K >= 2 classes in dim 1, got shape {shape_str(t)}")


def check_like(name, t, expected_shape, what):
    check_tensor(name, t)
    if tuple(t.shape) != tuple(expected_shape):
        want = "(" + ", ".join(str(s) for s in expected_shape) + ")"
        raise ValueError(f"{name}: expected shape {want} ({what}), got {shape_str(t)}")


def check_device(name, t, reference_name, reference):
    if t.device != reference.device:
        raise ValueError(f"{name}: expected a tensor on {reference.device} (the device of "
                         f"{reference_name}), got {t.device}")


def check_image(name, image, y_name, y):
    """(B, C, H, W) floating, matching y's batch and spatial size and device."""
    check_tensor(name, image)
    if image.dtype == torch.uint8:  # refused rather than guessed: .float() keeps the 0..255 colours sigma_rgb expects
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype torch.uint8; pass {name}.float() "
                        f"(colours stay 0..255, the units of the default sigma_rgb)")
    check_float(name, image)
    B, _, H, W = y.shape
    if image.dim() != 4 or image.shape[0] != B or image.shape[2:] != y.shape[2:]:
        raise ValueError(f"{name}: expected shape ({B}, C, {H}, {W}) to match {y_name} "
                         f"{shape_str(y)}, got {shape_str(image)}")
    check_device(name, image, y_name, y)


def fill_masked(image, mask):
    """image with each masked-out pixel replaced by its image's per-channel least unmasked value (0 where an
    image has none): what such a pixel held (even NaN) reaches no computation, and the fill stays inside the
    image's range, which the lattice's range check reads."""
    if mask is None:
        return image
    keep = mask.unsqueeze(1)
    least = torch.where(keep, image, torch.inf).amin((2, 3), keepdim=True) if image.numel() else image
    return torch.where(keep, image, torch.where(torch.isfinite(least), least, 0.0).to(image.dtype))


def check_mask(mask, y_name, y):
    """(B, H, W) bool on y's device, or None."""
    if mask is None:
        return
    check_tensor("mask", mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask: expected dtype torch.bool, got {mask.dtype}")
    B, _, H, W = y.shape
    check_like("mask", mask, (B, H, W), f"batch and size of {y_name}")
    check_device("mask", mask, y_name, y)


def check_seeds(seeds, y_name, y, ignore_index):
    """(B, H, W) integer class ids in [0, K) or ignore_index."""
    check_tensor("seeds", seeds)
    if seeds.is_floating_point() or seeds.is_complex() or seeds.dtype == torch.bool:
        raise TypeError(f"seeds: expected an integer tensor, got dtype {seeds.dtype}")
    B, K, H, W = y.shape
    check_like("seeds", seeds, (B, H, W), f"batch and size of {y_name}")
    check_device("seeds", seeds, y_name, y)
    if torch.compiler.is_compiling():
        return  # a value check would break the graph; eager calls check
    bad = (seeds != ignore_index) & ((seeds < 0) | (seeds >= K))
    if bool(bad.any()):
        value = int(seeds[bad][0])
        raise ValueError(f"seeds: expected class ids in [0, {K - 1}] or ignore_index={ignore_index}, "
                         f"got {value}")


def check_number(name, value, least=0.0, inclusive=True):
    """A finite real number (not a bool) >= least (or > least).  Finite is written value - value == 0 (NaN and
    Inf give NaN) rather than math.isfinite, which torch.compile cannot trace on the symbolic float that
    dynamic=True makes of a module's attribute."""
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.SymInt, torch.SymFloat)) or \
            not value - value == 0 or \
            not (value >= least if inclusive else value > least):
        raise ValueError(f"{name}: expected a finite number {'>=' if inclusive else '>'} {least:g}, got {value!r}")


def check_positive(name, value):
    check_number(name, value, 0.0, inclusive=False)


def check_choice(name, value, choices):
    if value not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name}: expected one of {valid}, got {value!r}")


def check_finite(name, t, where=None):
    """Finite values (where the (B, H, W) mask `where` is True, if given)."""
    bad = ~torch.isfinite(t)
    if where is not None:
        bad = bad & where.view(where.shape[0], 1, *where.shape[1:])
    if bool(bad.any()):
        raise ValueError(f"{name}: expected finite values{'' if where is None else ' where mask is True'}, "
                         "got NaN or Inf")


def check_pseudo_label_inputs(logits, image, seeds, mask, ignore_index, weights=None, image_where=None):
    """The inputs of a pseudo-label problem (solve(), graphcut.alpha_expansion): finite logits, scribbles, a
    mask, an image finite where image_where is True (everywhere for None), edge weights finite and >= 0."""
    check_labels("logits", logits)
    check_seeds(seeds, "logits", logits, ignore_index)
    check_mask(mask, "logits", logits)
    check_finite("logits", logits)
    if image is not None:
        check_image("image", image, "logits", logits)
        check_finite("image", image, image_where)
    if weights is not None:
        check_float("weights", weights)
        check_device("weights", weights, "logits", logits)
        check_finite("weights", weights)
        if bool((weights < 0).any()):
            raise ValueError("weights: expected non-negative edge weights, got a negative value")


SCALE_CHECKS = 100  # image-scale checks per entry point: a training loop's first steps, then nothing more to pay
_scale_checks, _scale_warned = {}, set()  # {entry point: checks left}, {(entry point, kind)}


def warn_image_scale(image, sigma_rgb):
    """Warn, once per public function or module (the entry point the user called) and kind, where an image is
    not in the units sigma_rgb assumes: negative values (an image normalised for the network) or all values
    in [0, 1] with sigma_rgb > 1 (0..1 colours against a bandwidth meant for 0..255, so that every colour
    weight is about 1).  Only the first SCALE_CHECKS calls of each entry point look (one min/max each), and
    none under torch.compile's tracing."""
    if image.numel() == 0 or torch.compiler.is_compiling():
        return
    entry = _entry_point()
    left = _scale_checks.get(entry, SCALE_CHECKS)
    if left <= 0:
        return
    _scale_checks[entry] = left - 1
    low, high = (float(v) for v in torch.aminmax(image.detach()))
    if low < 0:
        kind, problem = "negative", f"has negative values (range [{low:.3g}, {high:.3g}]): is it the network's normalised input?"
    elif high <= 1 and sigma_rgb > 1:
        kind, problem = "unit", (f"lies in [0, 1] (range [{low:.3g}, {high:.3g}]) while sigma_rgb = {sigma_rgb:g} is "
                                 f"in colour units.")
    else:
        return
    if (entry, kind) in _scale_warned:
        return
    _scale_warned.add((entry, kind))
    warn_at_caller(f"{entry}: image {problem} The colour weights exp(-|I_i - I_j|^2 / (2 sigma_rgb^2)) read the "
                   f"image in the units of sigma_rgb: pass colours in 0..255 for the defaults (sigma_rgb 9, 15), or "
                   f"sigma_rgb in your image's units.  (Warned once per function or module and kind of image.)")


def _entry_point():
    """The pottsops function or method the user's code called (the outermost pottsops frame on the stack)."""
    inside = os.path.dirname(os.path.abspath(sys.modules["pottsops"].__file__)) + os.sep
    outside_ok = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep  # a module's __call__, torch.compile
    frame, entry = sys._getframe(1), "pottsops"
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if path.startswith(inside):
            entry = "pottsops." + getattr(frame.f_code, "co_qualname", frame.f_code.co_name)
        elif not path.startswith(outside_ok):
            break
        frame = frame.f_back
    return entry.replace(".forward", "")


def warn_at_caller(message):
    """warnings.warn(message, UserWarning) attributed to the user's line: the first frame outside pottsops and
    torch (a module's forward goes through torch's __call__)."""
    level, frame = 2, sys._getframe(1)
    skipped = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep for m in (sys.modules["pottsops"], torch))
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(skipped):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, UserWarning, stacklevel=level)
