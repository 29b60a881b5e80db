"""The compiled kernels: their sources and flags, found ahead of time or built on first use, and loaded.

Three ways in, tried in this order for the C++ kernels ("cpu": the op schemas and the CPU kernels) and
the CUDA kernels ("cuda", which need "cpu" for the schemas):

1. ahead of time: pottsops._C built at install (POTTSOPS_AOT=1 pip install --no-build-isolation .; CPU
   and CUDA kernels in one module, `make test` builds it this way), if _C.json says it was built for this
   torch and from the sources installed with it (else it is skipped with a warning);
2. cached: a build on first use made earlier, in CACHE/<kind>-<key>/ (CACHE: POTTSOPS_CACHE, default
   ~/.cache/pottsops), key = a hash of everything that changes the binary (package version, every source
   and header, flags, torch and CUDA versions, Python ABI, platform, CPU architecture flag, GPU arch);
3. built now, the first time an op needs it (torch.utils.cpp_extension with ninja), one line on stderr.
   One process builds while the others wait on a file lock (fcntl.flock: released when its holder dies,
   so a killed build never blocks the next; torch's own lock file is removed under ours).  A failed build
   warns once and the backend reports the reason and the log; auto falls back (cuda -> triton ->
   reference, cpu -> reference).  Nothing is compiled while torch.compile traces.

POTTSOPS_JIT=0 turns building off (the first two ways still load).  POTTSOPS_EXTENSION=PATH loads that
file as pottsops._C instead (make sanitize).  This module imports neither torch nor pottsops at module
level (it is imported by pottsops/__init__ before torch is needed); the sources, flags and digest are in
pottsops/_build_settings.py, which setup.py reads too.
"""
import fcntl
import glob
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import sysconfig
import time
import warnings

from pottsops._build_settings import (CSRC, NVCC_FLAGS, VERSION, cpu_sources, cuda_sources, cxx_flags,
                                      host_checks_source, link_flags, sources_digest)


def cache_dir():
    return os.environ.get("POTTSOPS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "pottsops")


class Status:
    """What became of one kind of kernels: how (ahead-of-time, cached, built now) or why not."""

    def __init__(self):
        self.loaded, self.how, self.reason, self.log, self.module = False, None, None, None, None


STATUS = {"cpu": Status(), "cuda": Status()}
_WARNED = set()


def _key(kind):
    import torch
    digest = hashlib.sha256(sources_digest().encode())
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    if kind == "cuda" and not arch and torch.cuda.is_available():
        arch = "%d.%d" % torch.cuda.get_device_capability()
    parts = [VERSION, kind, " ".join(cxx_flags()), " ".join(link_flags()), " ".join(NVCC_FLAGS), torch.__version__,
             str(torch.version.cuda), sys.implementation.cache_tag, sysconfig.get_platform(), arch]
    digest.update("\0".join(parts).encode())
    return digest.hexdigest()[:20]


def _built_file(folder, name):
    matches = glob.glob(os.path.join(folder, name + ".so")) + glob.glob(os.path.join(folder, name + ".pyd"))
    return matches[0] if matches else None


def _import_module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_file(kind, name, path):
    """The built file of kind: a Python module (cpu) or a plain library of op kernels (cuda)."""
    import torch
    if kind == "cpu":
        module = _import_module(name, path)
        sys.modules["pottsops._C"] = module
        return module
    torch.ops.load_library(path)
    return path


def _ahead_of_time():
    """pottsops._C built at install, if it was built for this torch; None otherwise."""
    import torch
    if importlib.util.find_spec("pottsops._C") is None:
        return None
    info_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_C.json")
    if os.path.exists(info_path):
        with open(info_path) as f:
            info = json.load(f)
        if info.get("torch") != torch.__version__ or info.get("python") != sys.implementation.cache_tag:
            _warn_once("aot", f"pottsops: the installed pottsops._C was built for torch {info.get('torch')} "
                              f"({info.get('python')}), not torch {torch.__version__} ({sys.implementation.cache_tag}): "
                              "skipped; the kernels are built on first use instead")
            return None
        if info.get("sources") != sources_digest():  # an in-place build older than the C++ sources beside it
            _warn_once("aot", "pottsops: the installed pottsops._C was built from other C++ sources than the ones "
                              "installed with it (rebuild it: make build): skipped; the kernels are built on first "
                              "use instead")
            return None
    from pottsops import _C
    return _C


def _warn_once(key, message):
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def why_not_buildable(kind):
    """None if kind can be built here, else why not."""
    if os.environ.get("POTTSOPS_JIT") == "0":
        return "building on first use is turned off (POTTSOPS_JIT=0)"
    if not _find_ninja():
        return "ninja is not installed (pip install ninja), which building on first use needs"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler (c++ or $CXX) on PATH"
    if kind == "cuda":
        import torch
        cpp_extension = quiet_cpp_extension()
        if torch.version.cuda is None:
            return "this torch build has no CUDA"
        if cpp_extension.CUDA_HOME is None:
            return "no CUDA toolkit (nvcc) found: set CUDA_HOME"
    return None


def quiet_cpp_extension():
    """torch.utils.cpp_extension, imported without its "No CUDA runtime is found, using CUDA_HOME=..." warning:
    a toolkit without a GPU is the normal case of a CPU build (and of CI), not something to act on."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    quiet = lambda record: "No CUDA runtime is found" not in record.getMessage()  # noqa: E731
    logger.addFilter(quiet)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.removeFilter(quiet)
    return cpp_extension


def _find_ninja():
    """Whether ninja runs; the ninja package's binary is put on PATH where the environment's bin is not."""
    if shutil.which("ninja"):
        return True
    try:
        import ninja
    except ImportError:
        return False
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    return shutil.which("ninja") is not None


def _sources(kind):
    if kind == "cpu":
        return cpu_sources()
    return cuda_sources() + [host_checks_source()]  # the launchers' host checks are linked into it too


def _build(kind, folder, name):
    """Builds kind into folder with ninja; returns the built file.  The caller holds the lock."""
    cpp_extension = quiet_cpp_extension()
    os.makedirs(folder, exist_ok=True)
    stale = os.path.join(folder, "lock")  # torch's own lock: left behind by a build that was killed
    if os.path.exists(stale):
        os.remove(stale)
    what = {"cpu": "the C++ kernels", "cuda": "the CUDA kernels"}[kind]
    print(f"pottsops: compiling {what} (first use) into {folder} ...", end="", file=sys.stderr, flush=True)
    start = time.perf_counter()
    log = os.path.join(folder, "build.log")
    try:
        cpp_extension.load(name=name, sources=_sources(kind), extra_cflags=cxx_flags(), extra_cuda_cflags=NVCC_FLAGS,
                           extra_ldflags=link_flags(), extra_include_paths=[CSRC], build_directory=folder,
                           is_python_module=False, is_standalone=False, verbose=False)
    except Exception as error:  # a compiler error: its output is in the message
        with open(log, "w") as f:
            f.write(str(error))
        print(f" failed after {time.perf_counter() - start:.0f} s (log: {log})", file=sys.stderr, flush=True)
        raise RuntimeError(f"the build failed (log: {log})") from error
    print(f" done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return _built_file(folder, name)


def ensure(kind, build=True):
    """Whether kind's kernels are loaded, loading them (ahead of time, cached, or built now if build) the first
    time.  Never builds while torch.compile traces, or after a failure (STATUS[kind].reason says why)."""
    status = STATUS[kind]
    if status.loaded or status.reason is not None and status.how == "failed":
        return status.loaded
    if kind == "cuda":
        if not ensure("cpu", build):
            status.reason = f"the C++ module (op schemas) is not loaded: {STATUS['cpu'].reason}"
            return False
        if STATUS["cpu"].how != "cached" and STATUS["cpu"].module.compiled_with_cuda():  # one module, both kinds
            return _finish("cuda", status, STATUS["cpu"].module, STATUS["cpu"].how, None)
    if kind == "cpu" and _load_override_or_aot(status):
        return True
    key = _key(kind)
    name = f"pottsops_{kind}_{key}"
    folder = os.path.join(cache_dir(), f"{kind}-{key}")
    found = _built_file(folder, name)
    if found:
        return _finish(kind, status, _load_file(kind, name, found), "cached", folder)
    reason = why_not_buildable(kind)
    if reason is not None or not build or _tracing():
        status.reason = reason or ("not built yet (it is not built while torch.compile traces: run python -m "
                                   "pottsops build first)" if build else "not built yet")
        return False
    os.makedirs(cache_dir(), exist_ok=True)
    with open(os.path.join(cache_dir(), f"{kind}-{key}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process builds; the others wait here, then load its build
        found = _built_file(folder, name)
        how = "cached" if found else "built now"
        if not found:
            try:
                found = _build(kind, folder, name)
            except RuntimeError as error:
                status.how, status.reason, status.log = "failed", str(error), os.path.join(folder, "build.log")
                _warn_once(kind, f"pottsops: building {kind} kernels failed, falling back to the next backend: "
                                 f"{error}")
                return False
    return _finish(kind, status, _load_file(kind, name, found), how, folder)


def _tracing():
    """Whether torch.compile is tracing (also inside a function it calls eagerly, such as an
    assume_constant_result one)."""
    import torch
    if torch.compiler.is_compiling():
        return True
    try:
        from torch._guards import TracingContext
        return TracingContext.try_get() is not None
    except ImportError:
        return False


def _load_override_or_aot(status):
    path = os.environ.get("POTTSOPS_EXTENSION")
    if path:
        return _finish("cpu", status, _load_file("cpu", "pottsops._C", path), f"POTTSOPS_EXTENSION={path}", None)
    module = _ahead_of_time()
    return module is not None and _finish("cpu", status, module, "ahead-of-time", None)


def _finish(kind, status, module, how, folder):
    status.loaded, status.how, status.module, status.reason = True, how, module, None
    status.log = folder
    from pottsops import _ops
    _ops.on_load(kind)
    return True


def describe(kind):
    """One line: how kind's kernels are in use, or why not."""
    status = STATUS[kind]
    if status.loaded:
        return status.how + (f" ({status.log})" if status.log else "")
    return status.reason or "not loaded"


def clean():
    """Empties the build cache; returns what was removed."""
    folder = cache_dir()
    removed = sorted(glob.glob(os.path.join(folder, "cpu-*")) + glob.glob(os.path.join(folder, "cuda-*")))
    for path in removed:
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    return removed
