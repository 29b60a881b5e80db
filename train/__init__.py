"""train/: a DeepLabV3+ soft self-labeling trainer built on the public pottsops API (python -m train)."""
