"""`python -m zfjax.reference`: zfjax-reference, the program of zfjax.cli.reference."""

import sys

from zfjax.cli import reference

if __name__ == '__main__':
  sys.exit(reference.main())
