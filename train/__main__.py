"""python -m train --data camvid|acdc|voc|folder|synthetic --method pce|full|gd|hard|soft [options]

Examples:
    python -m train --data camvid --method soft --epochs 60          (root: ../shared/data/camvid)
    python -m train --data acdc --method soft --backbone resnet50
    torchrun --nproc_per_node 4 -m train --data voc --root VOC2012 --scribbles pascal_2012 --method soft
"""
import json
import sys

from train.config import parse_args
from train.loop import train


def main(argv=None):
    try:
        config = parse_args(argv)
    except ValueError as error:  # a setting or a missing data folder: the message, not a traceback
        print(f"python -m train: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    results = train(config)
    if results is not None:
        print(json.dumps({k: v for k, v in results.items() if k not in ("scores", "history")}, indent=1))


if __name__ == "__main__":
    main()
