"""Which backend runs an op (docs/contract.md §7), decided in this one place.

auto: CUDA tensors use the CUDA extension, else Triton, else reference; CPU tensors use the C++
extension, else reference.  POTTSOPS_BACKEND overrides auto.  An explicit backend that cannot run
raises an error saying why.  The compiled backends count as available where they can be built: the first
op that picks one loads or builds it (pottsops._extension), and auto moves on if that fails.
"""
import functools
import importlib.util
import os
from dataclasses import dataclass

import torch

from pottsops import _extension

BACKENDS = ("auto", "cuda", "triton", "cpu", "reference")


@dataclass(frozen=True)
class BackendStatus:
    available: bool
    reason: str

    def __str__(self):
        return ("available" if self.available else "unavailable") + f": {self.reason}"


_extension.ensure("cpu", build=False)  # an ahead-of-time or cached build loads at import: no build here
if torch.cuda.is_available():
    _extension.ensure("cuda", build=False)


def triton_interpreted():
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=None)
def _triton_status():
    if importlib.util.find_spec("triton") is None:
        return BackendStatus(False, "the triton package is not installed")
    if triton_interpreted():
        return BackendStatus(True, "triton interpreter (TRITON_INTERPRET=1): runs on CPU tensors, slowly")
    if not torch.cuda.is_available():
        return BackendStatus(False, "no CUDA device visible (TRITON_INTERPRET=1 runs it on the CPU)")
    return BackendStatus(True, f"triton on {torch.cuda.get_device_name()}")


@functools.lru_cache(maxsize=None)
def _why_not_buildable(kind):
    return _extension.why_not_buildable(kind)


def _compiled_status(kind):
    """cpu / cuda: loaded (and how), failed (and why), or to be built on first use where it can be."""
    status = _extension.STATUS[kind]
    if status.loaded:
        return None
    if status.how == "failed":
        return BackendStatus(False, status.reason)
    why = _why_not_buildable(kind)
    if why is not None:
        return BackendStatus(False, why)
    return BackendStatus(True, f"not built yet: compiled on first use into {_extension.cache_dir()} (minutes, once; "
                               "python -m pottsops build compiles ahead)")


def _status(name):
    if name == "reference":
        return BackendStatus(True, "plain PyTorch")
    if name == "cpu":
        pending = _compiled_status("cpu")
        if pending is not None:
            return pending
        module = _extension.STATUS["cpu"].module
        parallel = "OpenMP" if module.compiled_with_openmp() else "single-threaded (built without OpenMP)"
        return BackendStatus(True, f"C++ kernels, {parallel}; {_extension.describe('cpu')}")
    if name == "cuda":
        if not torch.cuda.is_available():
            return BackendStatus(False, "no CUDA device visible")
        cpu = _status("cpu")
        if not cpu.available:
            return BackendStatus(False, f"needs the C++ module (the ops' schemas): {cpu.reason}")
        pending = _compiled_status("cuda")
        if pending is not None:
            return pending
        return BackendStatus(True, f"CUDA kernels on {torch.cuda.get_device_name()}; {_extension.describe('cuda')}")
    return _triton_status()


@torch.compiler.assume_constant_result
def _available(name):
    """Whether backend `name` can run here; a constant for torch.compile, which need not trace it."""
    return _status(name).available


def backends():
    """{backend name: BackendStatus(available, reason)} for cuda, triton, cpu and reference.

    >>> for name, status in pottsops.backends().items(): print(name, status)
    """
    return {name: _status(name) for name in BACKENDS[1:]}


def build():
    """Compile (or load from the cache) the C++ kernels, and the CUDA ones where a GPU is visible, now rather
    than at the first op that needs them: before a timed run, a DDP launch or torch.compile.  Returns
    backends(); a kernel set that cannot be built is reported there (the ops fall back as usual).

    >>> pottsops.build()["cpu"]
    """
    for kind in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        _extension.ensure(kind)
    return backends()


def _runs_on(name, device):
    if name == "cuda":
        return device.type == "cuda"
    if name == "cpu":
        return device.type == "cpu"
    if name == "triton":
        return device.type == "cuda" or (device.type == "cpu" and triton_interpreted())
    return True


def resolve(backend, device, supported, op):
    """The backend that runs `op` on tensors of `device`; `supported` lists the backends op has."""
    source = "backend"
    if backend == "auto" and os.environ.get("POTTSOPS_BACKEND", "auto") != "auto":
        backend, source = os.environ["POTTSOPS_BACKEND"], "POTTSOPS_BACKEND"
    if backend not in BACKENDS:
        valid = ", ".join(repr(b) for b in BACKENDS)
        raise ValueError(f"{source}: expected one of {valid}, got {backend!r}")
    if backend == "auto":
        order = ("cuda", "triton", "reference") if device.type == "cuda" else ("cpu", "reference")
        for name in order:
            if name in supported and _available(name) and _runs_on(name, device) and _loaded(name):
                return name
        return "reference"
    if backend not in supported:
        raise ValueError(f"{source}: {op} has no {backend!r} backend; it has {', '.join(map(repr, supported))}")
    if not _available(backend) or not _loaded(backend):
        raise RuntimeError(f"{source}: the {backend!r} backend is not available: {_status(backend).reason}")
    if not _runs_on(backend, device):
        raise ValueError(f"{source}: the {backend!r} backend cannot run on {device} tensors")
    return backend


@torch.compiler.assume_constant_result
def _loaded(name):
    """Whether a compiled backend's kernels are loaded, loading or building them now (not while torch.compile
    traces); True for the others."""
    return name not in ("cpu", "cuda") or _extension.ensure(name)
