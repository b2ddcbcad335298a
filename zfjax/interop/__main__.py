"""`python -m zfjax.interop`: zfjax-interop, the program of zfjax.cli.interop."""

import sys

from zfjax.cli import interop

if __name__ == '__main__':
  sys.exit(interop.main())
