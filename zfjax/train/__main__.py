"""`python -m zfjax.train`: zfjax-train, the program of zfjax.cli.train."""

import sys

from zfjax.cli import train

if __name__ == '__main__':
  sys.exit(train.main())
