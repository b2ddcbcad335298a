r"""Transfer learning (Sec. 5.2, Tables 4-7): a trained net's features on another dataset.

    zfjax-transfer --config configs/transfer_digits.py --workdir /tmp/zf_transfer
    python -m zfjax.transfer --config configs/transfer_caltech101.py --workdir /data/c101 \
        --config.source=/data/zf

Writes WORKDIR/transfer.json (and the cached features) and prints its table. The methods,
the protocol and the config fields: docs/transfer.md.
"""

from __future__ import annotations

from typing import Optional, Sequence

from absl import flags
from ml_collections import config_flags

from zfjax import cli
from zfjax.train import transfer


def define(argv: list) -> flags.FlagValues:
  """The flags of zfjax-transfer."""
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'Transfer config file.',
                                  flag_values=flag_values, lock_config=True, sys_argv=argv)
  flags.DEFINE_string('workdir', None, 'Output directory (transfer.json, cached features, '
                      'the source net when the config trains one).', flag_values=flag_values)
  return flag_values


def body(flag_values: flags.FlagValues, args: list) -> int:
  """Runs the config's transfer protocol and prints its table."""
  if args:
    raise cli.UserError(f'unexpected arguments: {args}')
  result = transfer.run(flag_values.config, flag_values.workdir)
  print(transfer.summary(result))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """zfjax-transfer: see the module doc."""
  return cli.run('zfjax-transfer', __doc__, define, body, argv, required=('config', 'workdir'),
                 user_errors=(transfer.TransferError,))
