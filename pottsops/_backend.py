"""Which backend runs an op (SPEC section 7), decided in this one place.

auto: CUDA tensors use the CUDA extension, else Triton, else reference; CPU tensors use the C++
extension, else reference.  POTTSOPS_BACKEND overrides auto.  An explicit backend that cannot run
raises an error saying why.
"""
import functools
import importlib.util
import os
from dataclasses import dataclass

import torch

from pottsops import _ops

BACKENDS = ("auto", "cuda", "triton", "cpu", "reference")


@dataclass(frozen=True)
class BackendStatus:
    available: bool
    reason: str

    def __str__(self):
        return ("available" if self.available else "unavailable") + f": {self.reason}"


def triton_interpreted():
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=None)
def _triton_status():
    if importlib.util.find_spec("triton") is None:
        return BackendStatus(False, "the triton package is not installed")
    if importlib.util.find_spec("pottsops.triton") is None:
        return BackendStatus(False, "the Triton kernels (pottsops/triton) are not part of this version yet")
    if triton_interpreted():
        return BackendStatus(True, "triton interpreter (TRITON_INTERPRET=1): runs on CPU tensors, slowly")
    if not torch.cuda.is_available():
        return BackendStatus(False, "no CUDA device visible (TRITON_INTERPRET=1 runs it on the CPU)")
    return BackendStatus(True, f"triton on {torch.cuda.get_device_name()}")


def _status(name):
    if name == "reference":
        return BackendStatus(True, "plain PyTorch")
    if name == "cpu":
        if _ops.C is None:
            return BackendStatus(False, f"the compiled extension pottsops._C did not load: {_ops.LOAD_ERROR}")
        parallel = "OpenMP" if _ops.C.compiled_with_openmp() else "single-threaded (built without OpenMP)"
        return BackendStatus(True, f"C++ kernels, {parallel}")
    if name == "cuda":
        if _ops.C is None:
            return BackendStatus(False, f"the compiled extension pottsops._C did not load: {_ops.LOAD_ERROR}")
        if not _ops.C.compiled_with_cuda():
            return BackendStatus(False, "pottsops._C was built without CUDA kernels (rebuild with FORCE_CUDA=1 "
                                        "or with a GPU visible)")
        if not torch.cuda.is_available():
            return BackendStatus(False, "no CUDA device visible")
        return BackendStatus(True, f"CUDA kernels on {torch.cuda.get_device_name()}")
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
            if name in supported and _available(name) and _runs_on(name, device):
                return name
        return "reference"
    if backend not in supported:
        raise ValueError(f"{source}: {op} has no {backend!r} backend; it has {', '.join(map(repr, supported))}")
    if not _available(backend):
        raise RuntimeError(f"{source}: the {backend!r} backend is not available: {_status(backend).reason}")
    if not _runs_on(backend, device):
        raise ValueError(f"{source}: the {backend!r} backend cannot run on {device} tensors")
    return backend
