"""pottsops' build.  By default the package is pure Python (metadata in pyproject.toml): the C++/CUDA sources
ship inside it (pottsops/csrc) and are compiled the first time an op needs them (pottsops/_extension.py).  What is built, from which sources
and with which flags: pottsops/_build_settings.py.

Ahead of time, for clusters and CI (torch must be installed first, hence --no-build-isolation):

    POTTSOPS_AOT=1 pip install --no-build-isolation .      # builds pottsops._C now

Environment of the ahead-of-time build:
  FORCE_CUDA=1            compile pottsops/csrc/cuda even without a GPU (CI does, so CUDA errors never land)
  FORCE_CUDA=0            never compile CUDA
  CUDA_HOME               the CUDA toolkit (nvcc) to use
  TORCH_CUDA_ARCH_LIST    GPU architectures, e.g. "8.0;9.0"
  POTTSOPS_CPU_ARCH       -march of the CPU kernels (default native; x86-64 for a portable build)
  POTTSOPS_SANITIZE=1     build the C++ kernels with AddressSanitizer and UBSan (make sanitize)
"""
import glob
import importlib.util
import json
import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def _build_module():
    """pottsops/_build_settings.py, read without importing pottsops (which imports torch): sources and flags."""
    spec = importlib.util.spec_from_file_location("pottsops_build_settings",
                                                  os.path.join(HERE, "pottsops", "_build_settings.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _PurePythonBuild(build_py):
    """build_py that leaves out what an earlier ahead-of-time build left behind (a _C module in the tree or in
    build/lib, its _C.json): a pure-Python wheel carries sources only."""

    def run(self):
        super().run()
        for stale in glob.glob(os.path.join(self.build_lib, "pottsops", "_C*")):
            os.remove(stale)

    def find_package_modules(self, package, package_dir):
        return [m for m in super().find_package_modules(package, package_dir) if not m[1].startswith("_C")]


def _extensions():
    if os.environ.get("POTTSOPS_AOT") != "1":
        print("pottsops build: pure Python; the kernels compile on first use (POTTSOPS_AOT=1 builds them now)")
        return [], {"build_py": _PurePythonBuild}
    import torch
    from torch.utils import cpp_extension

    build = _build_module()
    force = os.environ.get("FORCE_CUDA")
    cuda_home = cpp_extension.CUDA_HOME
    if force == "1":
        with_cuda, reason = True, "FORCE_CUDA=1"
    elif force == "0":
        with_cuda, reason = False, "FORCE_CUDA=0"
    elif cuda_home is None:
        with_cuda, reason = False, "no CUDA toolkit found (set CUDA_HOME)"
    elif not torch.cuda.is_available():
        with_cuda, reason = False, "no GPU visible (set FORCE_CUDA=1 to compile anyway)"
    else:
        with_cuda, reason = True, "GPU visible"
    if with_cuda and torch.version.cuda is None:
        raise RuntimeError("pottsops build: CUDA requested but this torch build has no CUDA")

    sources = [os.path.relpath(p, HERE) for p in build.cpu_sources()]
    extension, define_macros, extra = cpp_extension.CppExtension, [], {"cxx": build.cxx_flags()}
    if with_cuda:
        sources += [os.path.relpath(p, HERE) for p in build.cuda_sources()]
        extension = cpp_extension.CUDAExtension
        define_macros.append(("WITH_CUDA", None))
        extra["nvcc"] = build.NVCC_FLAGS
    print("pottsops build summary")
    print(f"  torch           {torch.__version__} (CUDA {torch.version.cuda})")
    print(f"  CUDA kernels    {'yes' if with_cuda else 'no'} ({reason})")
    if with_cuda:
        print(f"  CUDA_HOME       {cuda_home}")
        print(f"  arch list       {os.environ.get('TORCH_CUDA_ARCH_LIST', '(torch default: visible GPUs)')}")
    print(f"  CPU arch        -march={os.environ.get('POTTSOPS_CPU_ARCH', 'native')} (POTTSOPS_CPU_ARCH)")
    print(f"  sanitizers      {'address, undefined' if '-g' in build.cxx_flags() else 'none'} (POTTSOPS_SANITIZE)")
    print(f"  sources         {len(sources)} files")
    # What the module was built for and from: an installed _C built for another torch, or from other sources
    # (an in-place build the C++ has changed since), is skipped, not loaded.
    with open(os.path.join(HERE, "pottsops", "_C.json"), "w") as f:  # package data of this wheel
        json.dump({"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.implementation.cache_tag,
                   "with_cuda": with_cuda, "sources": build.sources_digest()}, f)
    ext = extension(name="pottsops._C", sources=sources, include_dirs=[build.CSRC], define_macros=define_macros,
                    extra_compile_args=extra, extra_link_args=build.link_flags())
    return [ext], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
