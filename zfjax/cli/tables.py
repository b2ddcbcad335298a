"""The paper's Tables 2-7 in Markdown from results files, our numbers beside the paper's.

    zfjax-tables --workdirs /data/runs /tmp/c101 --results ens5.json --out results.md
    python -m zfjax.tables --workdirs /tmp/zf_transfer --out transfer.md

--workdirs are searched (recursively, checkpoints/ left out) for a train.py results.json
(with its config.json), ensemble JSON (zfjax.train.ensemble) and transfer JSON
(zfjax.train.transfer); --results names such files. The tables are zfjax.report.tables'; a
file that is missing or not one of these exits with status 2 and one line naming it.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Optional, Sequence

from absl import flags

from zfjax import cli
from zfjax.report import results
from zfjax.report import tables

LIST_FLAGS = ('workdirs', 'results')  # --workdirs a b: lists, as before


def define(argv: list) -> flags.FlagValues:
  """The flags of zfjax-tables."""
  del argv
  fv = flags.FlagValues()
  flags.DEFINE_multi_string('workdirs', [], 'directories searched (recursively) for results '
                            'JSON', flag_values=fv)
  flags.DEFINE_multi_string('results', [], 'results JSON files: results.json, ensemble or '
                            'transfer JSON', flag_values=fv)
  flags.DEFINE_string('out', None, 'the Markdown file to write', flag_values=fv)
  return fv


def body(fv: flags.FlagValues, args: list) -> int:
  """Reads every results file, writes the Markdown."""
  if args:
    raise cli.UserError(f'unexpected arguments {args} (files go after --workdirs or '
                        '--results)')
  if not fv.workdirs and not fv.results:
    raise cli.UserError('give --workdirs or --results (zfjax-tables --help lists the flags)')
  collected = results.collect(fv.workdirs, fv.results)
  out = pathlib.Path(fv.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(tables.render(collected))
  print(f'wrote {out}: {len(collected.runs)} runs, {len(collected.transfers)} transfers')
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """zfjax-tables: see the module doc."""
  argv = cli.spread_lists(sys.argv[1:] if argv is None else argv, LIST_FLAGS)
  return cli.run('zfjax-tables', __doc__, define, body, argv, required=('out',),
                 user_errors=(results.ResultsError,))
