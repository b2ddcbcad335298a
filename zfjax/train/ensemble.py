r"""Ensembles of trained nets (the paper's Table 2): the softmax averaged over members.

    zfjax-ensemble --workdirs /data/zf0 /data/zf1 /data/zf2 --crops ten --out ens.json
    python -m zfjax.ensemble --workdirs /data/zf0 /data/zf1 --out /data/ensemble2.json
    result = ensemble.evaluate_workdirs([a, b], crops='center', step='latest')

Each member is a trained net that `zfjax.loading.load` restores (a train.py workdir, a
checkpoints/ or step directory), so members may differ in architecture (the paper's 6-net
ensemble is five ZFNets and the wide model (b)); they must be evaluated on the same
images. docs/training.md ("Ensembles") gives the rules and the JSON written.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

from zfjax import input_pipeline
from zfjax import loading
from zfjax import models
from zfjax import parallel
from zfjax.train import steps

# Config fields that say which layers a member has (recorded in the JSON; the tables
# identify the paper's rows from them).
ARCHITECTURE_FIELDS = ('model', 'conv_features', 'fc_features', 'remove_layers',
                       'norm_before_pool', 'image_size')
# Config fields that decide which images, preprocessed how, a member is evaluated on.
DATA_FIELDS = ('dataset', 'image_size', 'resize_size', 'digits_test_fraction',
               'digits_classes')


class EnsembleError(ValueError):
  """Members that cannot be evaluated together, saying which and why."""


class Member(NamedTuple):
  """One trained net of an ensemble: the path it was named by, and the net loaded from it."""
  workdir: str
  net: loading.Loaded


def load_member(workdir, step: Union[int, str] = 'latest') -> Member:
  """The member at `workdir` (any path `loading.load` takes), at `step`."""
  return Member(str(workdir), loading.load(workdir, step))


def data_signature(config, split: Optional[str] = None, classes: Optional[int] = None) -> dict:
  """What decides the evaluation images and labels of a config.

  DATA_FIELDS, the split (default: the config's eval split), the digits train/test seed
  and the class count.
  """
  signature = {field: config.get(field) for field in DATA_FIELDS}
  signature['split'] = split or input_pipeline.eval_split(config)
  if config.dataset == input_pipeline.DIGITS:  # the split seed defaults to the seed
    signature['split_seed'] = config.get('split_seed', config.seed)
  signature['num_classes'] = classes
  return signature


def check_members(members: Sequence[Member], split: Optional[str] = None) -> None:
  """EnsembleError naming two members that would be evaluated on different data."""
  if not members:
    raise EnsembleError('an ensemble needs at least one workdir')
  first = members[0]
  reference = data_signature(first.net.config, split, first.net.num_classes)
  for member in members[1:]:
    signature = data_signature(member.net.config, split, member.net.num_classes)
    for field, value in reference.items():
      if signature[field] != value:
        raise EnsembleError(
            f'{first.workdir} and {member.workdir} differ in {field} ({value!r} vs '
            f'{signature[field]!r}): ensemble members must be evaluated on the same images')


def describe(member: Member) -> dict:
  """The JSON record of a member: where it came from and its layers."""
  net = member.net
  record = {'workdir': member.workdir, 'checkpoint': str(net.checkpoint), 'step': net.step}
  for field in ARCHITECTURE_FIELDS:
    value = net.config.get(field)
    record[field] = list(value) if isinstance(value, tuple) else value
  record['num_classes'] = net.num_classes
  return record


def evaluate_workdirs(workdirs: Sequence, crops: str = 'center',
                      step: Union[int, str] = 'latest', split: Optional[str] = None,
                      batch_size: Optional[int] = None) -> dict:
  """Errors of the ensemble of the nets in `workdirs` over a whole evaluation split.

  The split defaults to the members' eval split; `step` ('latest', 'best' or a step
  number) applies to every member; `batch_size` defaults to the first member's
  eval_batch_size. Returns the record docs/training.md describes, errors as fractions.
  """
  if crops not in input_pipeline.CROPS:
    raise EnsembleError(f'crops must be one of {input_pipeline.CROPS}, got {crops!r}')
  members = [load_member(workdir, step) for workdir in workdirs]
  check_members(members, split)
  config = members[0].net.config
  split = split or input_pipeline.eval_split(config)
  mesh = parallel.create_mesh()
  if batch_size is not None:
    config = config.copy_and_resolve_references()
    config.eval_batch_size = batch_size
  try:
    parallel.check_batch_size(config.eval_batch_size, mesh, 'eval_batch_size')
  except ValueError as e:
    raise EnsembleError(f'{e}; pass --batch_size') from None
  batches = input_pipeline.eval_batches(config, crops=crops, split=split)
  # Each member in the dtype it was trained and evaluated in (loading's model is float32),
  # so an ensemble of one scores as the run's own results.json.
  nets = [(models.from_config(m.net.config, m.net.num_classes), m.net.params) for m in members]
  metrics = steps.evaluate_ensemble(nets, batches, mesh)
  return {'kind': 'ensemble', 'members': [describe(m) for m in members], 'crops': crops,
          'step': step, 'dataset': config.dataset, 'split': split,
          'top1_error': metrics['top1_error'], 'top5_error': metrics['top5_error'],
          'loss': metrics['loss'], 'count': metrics['count']}


def summary(result: dict, out) -> str:
  """One line on an ensemble's result, for the console."""
  return (f'ensemble of {len(result["members"])} on {result["dataset"]} {result["split"]} '
          f'({result["crops"]} crops, {result["count"]} images): top-1 error '
          f'{100 * result["top1_error"]:.1f}%, top-5 error {100 * result["top5_error"]:.1f}%; '
          f'wrote {out}')
