"""Figures of the paper's analyses from a trained net (zfjax.cli.visualize; `zfjax-visualize`).

    python visualize.py all --workdir /tmp/zf --out /tmp/zf/figures
    python visualize.py occlusion --checkpoint CKPT --images cat.jpg --patch 32 --stride 8

`python visualize.py --help` lists the subcommands, `python visualize.py top9 --help` the
flags of one. The figures themselves are the library's: `zfjax.report` (docs/figures.md).
"""

import sys

from zfjax.cli import visualize

main = visualize.main  # what this program runs; tests load this file and call it

if __name__ == '__main__':
  sys.exit(main())
