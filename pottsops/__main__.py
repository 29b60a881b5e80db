"""python -m pottsops [status | build | clean]

status (default): which backends run here and why the others do not, how the compiled kernels are in use
    (ahead-of-time, cached, built now, or not yet) and where the build cache is;
build: compiles the kernels now (the C++ ones; the CUDA ones too where a GPU and nvcc are present), e.g.
    before a DDP launch or torch.compile;
clean: empties the build cache (pip uninstall pottsops leaves it: run this first).
"""
import sys

import torch

import pottsops
from pottsops import _extension


def status():
    print(f"pottsops {pottsops.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"build cache {_extension.cache_dir()}")
    for name, state in pottsops.backends().items():
        print(f"  {name:10s} {state}")


def build():
    states = pottsops.build()
    for kind in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        if not states[kind].available:
            print(f"{kind}: not built: {states[kind].reason}", file=sys.stderr)
            return 1
        print(f"{kind}: {_extension.describe(kind)}")
    return 0


def clean():
    removed = _extension.clean()
    print(f"removed {len(removed)} entries from {_extension.cache_dir()}")
    return 0


def main(argv):
    command = argv[0] if argv else "status"
    if command in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    if command not in ("status", "build", "clean") or len(argv) > 1:
        print(f"python -m pottsops: unknown command {' '.join(argv)!r}; expected one of status, build, clean\n",
              file=sys.stderr)
        print(__doc__, file=sys.stderr)
        return 2
    if command == "status":
        status()
        return 0
    return build() if command == "build" else clean()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
