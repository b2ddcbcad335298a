"""`python -m zfjax.ensemble`: zfjax-ensemble. The library is zfjax.train.ensemble now."""

import sys

from zfjax.cli import ensemble

if __name__ == '__main__':
  sys.exit(ensemble.main())
