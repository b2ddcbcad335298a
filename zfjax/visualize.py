"""`python -m zfjax.visualize`: zfjax.cli.visualize; the figures are zfjax.report's."""

import sys

from zfjax.cli import visualize

if __name__ == '__main__':
  sys.exit(visualize.main())
