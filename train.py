"""Trains a convnet of the paper and evaluates it (zfjax.cli.train; also `zfjax-train`).

    python train.py --config configs/digits.py --workdir /tmp/zf_digits
    python train.py --config configs/zfnet.py --workdir /tmp/zfnet --config.batch_size=256

`python train.py --help` lists the flags.
"""

import sys

from zfjax.cli import train

if __name__ == '__main__':
  sys.exit(train.main())
