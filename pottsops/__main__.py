"""python -m pottsops: which backends run on this machine, and why the others do not."""
import torch

import pottsops

print(f"pottsops {pottsops.__version__}, torch {torch.__version__}")
for name, status in pottsops.backends().items():
    print(f"  {name:10s} {status}")
