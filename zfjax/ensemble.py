r"""Ensembles of trained nets (the paper's Table 2): the softmax averaged over members.

    python -m zfjax.ensemble --workdirs /data/zf0 /data/zf1 /data/zf2 /data/zf3 /data/zf4 \
        --crops ten --out /data/ensemble5.json
    result = ensemble.evaluate_workdirs([a, b], crops='center', step='latest')

Each member is a train.py workdir (or a checkpoints/ or step directory): its params and
the config that trained them are restored (`checkpoints.restore_params`) and its model
rebuilt (`models.from_config`), so members may differ in architecture (the paper's
6-net ensemble is five ZFNets and the wide model (b)). They must agree on what they are
evaluated on: dataset, evaluation split, input and resize sizes, number of classes (and
for digits the train/test split). The whole evaluation split is read once with the first
member's config (its eval_batch_size unless `batch_size` is given) and each image's
class probabilities are the mean of the members' softmax outputs (with crops='ten',
each member's ten crops are averaged first). Errors are fractions.

The JSON written (and returned):
    {"kind": "ensemble", "members": [{"workdir", "checkpoint", "step", "model",
     "conv_features", "fc_features", "remove_layers", "norm_before_pool", "image_size",
     "num_classes"}, ...], "crops", "step" (as asked: 'latest', 'best' or a number),
     "dataset", "split", "top1_error", "top5_error", "loss", "count"}
zfjax.tables puts it in Table 2 (imagenet2012) or in its other-datasets table.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
from typing import Any, NamedTuple, Optional, Sequence, Union

from zfjax import checkpoints
from zfjax import input_pipeline
from zfjax import models
from zfjax import parallel
from zfjax import training

# Config fields that say which layers a member has (recorded in the JSON; zfjax.tables
# identifies the paper's rows from them).
ARCHITECTURE_FIELDS = ('model', 'conv_features', 'fc_features', 'remove_layers',
                       'norm_before_pool', 'image_size')
# Config fields that decide which images, preprocessed how, a member is evaluated on.
DATA_FIELDS = ('dataset', 'image_size', 'resize_size', 'digits_test_fraction',
               'digits_classes')


class EnsembleError(ValueError):
  """Members that cannot be evaluated together, saying which and why."""


class Member(NamedTuple):
  """One trained net of an ensemble."""
  workdir: str
  checkpoint: pathlib.Path
  config: Any  # ml_collections.ConfigDict
  model: models.ConvNet
  params: Any
  num_classes: int

  @property
  def step(self) -> int:
    return int(self.checkpoint.name)


def num_classes(params) -> int:
  """The output width of the last dense layer (fc8 in every paper model and ablation)."""
  dense = [name for name in params if re.fullmatch(r'fc\d+', name)]
  if not dense:
    raise EnsembleError(f'no fc layer among the params {sorted(params)}')
  last = max(dense, key=lambda name: int(name[2:]))
  return int(params[last]['bias'].shape[0])


def load_member(workdir, step: Union[int, str] = 'latest') -> Member:
  """A member from a workdir, checkpoints/ directory or step directory."""
  directory = checkpoints.find_checkpoint(workdir, step)
  config, params = checkpoints.restore_params(directory)
  if config is None:
    raise EnsembleError(f'{workdir}: its checkpoint stores no config and there is no '
                        'config.json beside it: cannot rebuild the model')
  classes = num_classes(params)
  return Member(str(workdir), directory, config, models.from_config(config, classes),
                params, classes)


def eval_split(config) -> str:
  """The split a config evaluates on (input_pipeline's default when it names none)."""
  return config.get('eval_split') or (
      'test' if config.dataset == input_pipeline.DIGITS else 'validation')


def data_signature(config, split: Optional[str] = None, classes: Optional[int] = None) -> dict:
  """What decides the evaluation images and labels of a config: DATA_FIELDS, the split
  (default: the config's eval split), the digits train/test seed, the class count."""
  signature = {field: config.get(field) for field in DATA_FIELDS}
  signature['split'] = split or eval_split(config)
  if config.dataset == input_pipeline.DIGITS:  # input_pipeline: split_seed defaults to seed
    signature['split_seed'] = config.get('split_seed', config.seed)
  signature['num_classes'] = classes
  return signature


def check_members(members: Sequence[Member], split: Optional[str] = None) -> None:
  """EnsembleError naming two members that would be evaluated on different data."""
  if not members:
    raise EnsembleError('an ensemble needs at least one workdir')
  first = members[0]
  reference = data_signature(first.config, split, first.num_classes)
  for member in members[1:]:
    signature = data_signature(member.config, split, member.num_classes)
    for field, value in reference.items():
      if signature[field] != value:
        raise EnsembleError(
            f'{first.workdir} and {member.workdir} differ in {field} ({value!r} vs '
            f'{signature[field]!r}): ensemble members must be evaluated on the same images')


def describe(member: Member) -> dict:
  """The JSON record of a member: where it came from and its layers."""
  record = {'workdir': member.workdir, 'checkpoint': str(member.checkpoint),
            'step': member.step}
  for field in ARCHITECTURE_FIELDS:
    value = member.config.get(field)
    record[field] = list(value) if isinstance(value, tuple) else value
  record['num_classes'] = member.num_classes
  return record


def evaluate_workdirs(workdirs: Sequence, crops: str = 'center',
                      step: Union[int, str] = 'latest', split: Optional[str] = None,
                      batch_size: Optional[int] = None) -> dict:
  """Errors of the ensemble of the nets trained in `workdirs` over the whole evaluation
  split (default: the members' eval split), as the module docstring's JSON. `step`:
  'latest', 'best' or a step number, for every member."""
  if crops not in input_pipeline.CROPS:
    raise EnsembleError(f'crops must be one of {input_pipeline.CROPS}, got {crops!r}')
  members = [load_member(workdir, step) for workdir in workdirs]
  check_members(members, split)
  config = members[0].config
  split = split or eval_split(config)
  mesh = parallel.create_mesh()
  if batch_size is not None:
    config = config.copy_and_resolve_references()
    config.eval_batch_size = batch_size
  try:
    parallel.check_batch_size(config.eval_batch_size, mesh, 'eval_batch_size')
  except ValueError as e:
    raise EnsembleError(f'{e}; pass --batch-size') from None
  batches = input_pipeline.eval_batches(config, crops=crops, split=split)
  metrics = training.evaluate_ensemble([(m.model, m.params) for m in members], batches, mesh)
  return {'kind': 'ensemble', 'members': [describe(m) for m in members], 'crops': crops,
          'step': step, 'dataset': config.dataset, 'split': split,
          'top1_error': metrics['top1_error'], 'top5_error': metrics['top5_error'],
          'loss': metrics['loss'], 'count': metrics['count']}


# -------------------------------------------------------------------------------- CLI


def parse_step(value: str) -> Union[int, str]:
  """'latest', 'best' or a step number (argparse type)."""
  if value in ('latest', 'best'):
    return value
  try:
    return int(value)
  except ValueError:
    raise argparse.ArgumentTypeError(f"step must be 'latest', 'best' or a number, "
                                     f'got {value!r}') from None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m zfjax.ensemble', description=__doc__.split(
      '\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdirs', nargs='+', required=True,
                      help='train.py workdirs (or checkpoint directories), one per member')
  parser.add_argument('--crops', choices=input_pipeline.CROPS, default='center',
                      help="'center' or the paper's 'ten' crops (default center)")
  parser.add_argument('--step', type=parse_step, default='latest',
                      help="each member's checkpoint: 'latest' (default), 'best' or a number")
  parser.add_argument('--split', default=None, help="default: the members' eval split")
  parser.add_argument('--batch-size', type=int, default=None,
                      help="global evaluation batch (default: the first member's)")
  parser.add_argument('--out', required=True, help='the JSON file to write')
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    result = evaluate_workdirs(args.workdirs, args.crops, args.step, args.split,
                               args.batch_size)
  except (ValueError, FileNotFoundError, input_pipeline.DatasetUnavailableError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + '\n')
  print(f'ensemble of {len(result["members"])} on {result["dataset"]} {result["split"]} '
        f'({result["crops"]} crops, {result["count"]} images): top-1 error '
        f'{100 * result["top1_error"]:.1f}%, top-5 error {100 * result["top5_error"]:.1f}%; '
        f'wrote {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
