r"""Evaluates an ensemble of trained nets (the paper's Table 2) and writes its JSON.

    zfjax-ensemble --workdirs /data/zf0 /data/zf1 /data/zf2 /data/zf3 /data/zf4 \
        --crops ten --out /data/ensemble5.json
    python -m zfjax.ensemble --workdirs /data/zf0 --workdirs /data/zf1 --step best --out e.json

The members are the paths after --workdirs (several after one flag, or one per flag):
train.py workdirs, checkpoints/ or step directories. Each image's class probabilities
are the mean of the members' softmax over the whole evaluation split; the JSON written
is described in docs/training.md ("Ensembles").
"""

from __future__ import annotations

import json
import pathlib
from typing import Optional, Sequence

from absl import flags

from zfjax import cli
from zfjax import input_pipeline
from zfjax.train import ensemble


def define(argv: list) -> flags.FlagValues:
  """The flags of zfjax-ensemble."""
  del argv
  flag_values = flags.FlagValues()
  flags.DEFINE_multi_string('workdirs', None, 'train.py workdirs (or checkpoint directories), '
                            'one per member; the paths after the flag are members too.',
                            flag_values=flag_values)
  flags.DEFINE_enum('crops', 'center', input_pipeline.CROPS,
                    "'center' or the paper's 'ten' crops.", flag_values=flag_values)
  flags.DEFINE_string('step', 'latest', "Each member's checkpoint: 'latest', 'best' or a "
                      'step number.', flag_values=flag_values)
  flags.DEFINE_string('split', None, "The split to evaluate (default: the members' eval "
                      'split).', flag_values=flag_values)
  flags.DEFINE_integer('batch_size', None, "Global evaluation batch (default: the first "
                       "member's eval_batch_size).", flag_values=flag_values)
  flags.DEFINE_alias('batch-size', 'batch_size', flag_values=flag_values)
  flags.DEFINE_string('out', None, 'The JSON file to write.', flag_values=flag_values)
  return flag_values


def body(flag_values: flags.FlagValues, args: list) -> int:
  """Evaluates the members named by --workdirs and the paths after it; writes --out."""
  workdirs = [*(flag_values.workdirs or ()), *args]
  if not workdirs:
    raise cli.UserError('name the members: --workdirs DIR [DIR ...]')
  step = cli.parse_step(flag_values.step)
  result = ensemble.evaluate_workdirs(workdirs, flag_values.crops, step, flag_values.split,
                                      flag_values.batch_size)
  out = pathlib.Path(flag_values.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + '\n')
  print(ensemble.summary(result, out))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """zfjax-ensemble: see the module doc."""
  return cli.run('zfjax-ensemble', __doc__, define, body, argv, required=('out',),
                 user_errors=(ensemble.EnsembleError,))
