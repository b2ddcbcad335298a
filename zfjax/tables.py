"""`python -m zfjax.tables`: zfjax.cli.tables; the library is zfjax.report.tables."""

import sys

from zfjax.cli import tables

if __name__ == '__main__':
  sys.exit(tables.main())
