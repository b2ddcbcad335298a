"""`python -m zfjax.transfer`: zfjax-transfer. The library is zfjax.train.transfer now."""

import sys

from zfjax.cli import transfer

if __name__ == '__main__':
  sys.exit(transfer.main())
