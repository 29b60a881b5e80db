"""Build of pottsops._C: C++ CPU kernels always, CUDA kernels when CUDA is usable or FORCE_CUDA=1.

Environment:
  FORCE_CUDA=1            compile csrc/cuda even without a GPU (CI does, so CUDA errors never land)
  FORCE_CUDA=0            never compile CUDA
  CUDA_HOME               the CUDA toolkit (nvcc) to use
  TORCH_CUDA_ARCH_LIST    GPU architectures, e.g. "8.0;9.0"
  POTTSOPS_CPU_ARCH       -march of the CPU kernels (default native; x86-64 for a portable build)
  POTTSOPS_NO_EXTENSION=1 install the pure-Python package only (reference backend)
  POTTSOPS_SANITIZE=1     build the C++ kernels with AddressSanitizer and UBSan (make sanitize)
"""
import glob
import os

from setuptools import find_packages, setup


def _extensions():
    if os.environ.get("POTTSOPS_NO_EXTENSION") == "1":
        print("pottsops build: POTTSOPS_NO_EXTENSION=1, no compiled extension")
        return [], {}
    import torch
    from torch.utils import cpp_extension

    force = os.environ.get("FORCE_CUDA")
    cuda_home = cpp_extension.CUDA_HOME
    if force == "1":
        with_cuda = True
        reason = "FORCE_CUDA=1"
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
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    if with_cuda and not cuda_sources:
        with_cuda, reason = False, "no CUDA sources in csrc/cuda yet"

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    # The C++ standard is torch's own.  The CPU kernels are written to auto-vectorise; -march decides
    # the vector width (native: this machine's; set POTTSOPS_CPU_ARCH=x86-64 for a portable build).
    arch = os.environ.get("POTTSOPS_CPU_ARCH", "native")
    cxx_flags = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", f"-march={arch}"]
    link_flags = ["-fopenmp"]
    if os.environ.get("POTTSOPS_SANITIZE") == "1":
        sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
        cxx_flags, link_flags = [f for f in cxx_flags if f != "-O3"] + ["-O1"] + sanitize, link_flags + sanitize
    define_macros = []
    extension = cpp_extension.CppExtension
    extra = {"cxx": cxx_flags}
    if with_cuda:
        sources += cuda_sources
        extension = cpp_extension.CUDAExtension
        define_macros.append(("WITH_CUDA", None))
        extra["nvcc"] = ["-O3", "-lineinfo"]
    print("pottsops build summary")
    print(f"  torch           {torch.__version__} (CUDA {torch.version.cuda})")
    print(f"  CUDA kernels    {'yes' if with_cuda else 'no'} ({reason})")
    if with_cuda:
        print(f"  CUDA_HOME       {cuda_home}")
        print(f"  arch list       {os.environ.get('TORCH_CUDA_ARCH_LIST', '(torch default: visible GPUs)')}")
    print(f"  CPU arch        -march={arch} (POTTSOPS_CPU_ARCH)")
    print(f"  sanitizers      {'address, undefined' if '-g' in cxx_flags else 'none'} (POTTSOPS_SANITIZE)")
    print(f"  sources         {len(sources)} files")
    ext = extension(
        name="pottsops._C",
        sources=sources,
        include_dirs=[os.path.abspath("csrc")],
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=link_flags,
    )
    return [ext], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = _extensions()

setup(
    name="pottsops",
    version="0.1.0",
    description="Fused Potts/CRF energies, unaries and a pseudo-label solver for scribble segmentation",
    packages=find_packages(include=["pottsops", "pottsops.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.6", "numpy"],
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
