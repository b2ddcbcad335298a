"""Results files of training, ensembles and transfers, read and checked for the tables.

    found = results.collect(['/data/runs'], ['ens5.json'])  # found.runs, found.transfers
    results.variant(config)                                 # e.g. 'zfnet-wide' or None

Inputs, found under each workdir (recursively; checkpoints/ is skipped) or named:
- results.json of a train.py workdir, with the config.json beside it: one net.
- a JSON with "kind": "ensemble" (zfjax.train.ensemble): several nets' averaged softmax.
- a JSON with "kind": "transfer" (zfjax.train.transfer's transfer.json): rows of
  {method, features, classifier, train_per_class, mean, std, splits}.
Other JSON files (configs, figures' numbers) are passed over when scanning. A file that is
missing or not what it should be raises ResultsError, one line naming it.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pathlib
from typing import Any, Iterable, Mapping, Optional, Sequence

from zfjax import architecture

_FAMILIES = {'zfnet': ('zfnet', architecture.ZFNET_MAPS),
             'zfnet_wide': ('zfnet', architecture.WIDE_MAPS),
             'alexnet': ('alexnet', architecture.ZFNET_MAPS)}


class ResultsError(ValueError):
  """An input file that is missing or not what it should be, naming it."""


# ------------------------------------------------------------------------ identification


def _layers(family: str, maps, units, removed) -> tuple:
  """A hashable description of a net's layers; widths of removed layers dropped."""
  removed = set(removed)
  maps = tuple(None if f'conv{i + 1}' in removed else m for i, m in enumerate(maps))
  units = tuple(None if f'fc{i + 6}' in removed else u for i, u in enumerate(units))
  return family, maps, units, tuple(sorted(removed))


_VARIANT_OF = {_layers(*layers): name for name, layers in architecture.VARIANTS.items()}


def variant(fields: Mapping[str, Any]) -> Optional[str]:
  """The Table 3 row (a configs/ablations.py name) a config's fields describe, or None.

  The fields: model, conv_features, fc_features, remove_layers, norm_before_pool,
  image_size. None when they describe none of the paper's nets.
  """
  model = fields.get('model')
  if (model not in _FAMILIES or fields.get('norm_before_pool')
      or (fields.get('image_size') or 224) != 224):
    return None
  family, default_maps = _FAMILIES[model]
  maps = tuple(fields.get('conv_features') or default_maps)
  units = tuple(fields.get('fc_features') or architecture.FC_UNITS)
  if len(maps) != 5 or len(units) != 2:
    return None
  return _VARIANT_OF.get(_layers(family, maps, units, fields.get('remove_layers') or ()))


def describe_model(fields: Mapping[str, Any]) -> str:
  """The model and its non-default settings, e.g. 'zfnet, fc 1024/1024'."""
  parts = [str(fields.get('model'))]
  for field, label in (('conv_features', 'maps'), ('fc_features', 'fc')):
    if fields.get(field):
      parts.append(f'{label} ' + '/'.join(str(v) for v in fields[field]))
  if fields.get('remove_layers'):
    parts.append('without ' + ','.join(fields['remove_layers']))
  if fields.get('norm_before_pool'):
    parts.append('norm before pool')
  if fields.get('image_size') not in (None, 224):
    parts.append(f'{fields["image_size"]}px')
  return ', '.join(parts)


def ensemble_key(member_variants: Sequence[Optional[str]]) -> str:
  """'5 x zfnet + 1 x zfnet-wide' (Table 2's row keys); unknown members count as other."""
  counts = collections.Counter(v or 'other' for v in member_variants)
  order = list(architecture.VARIANTS) + ['other']
  return ' + '.join(f'{counts[v]} x {v}' for v in order if counts[v])


# ------------------------------------------------------------------------ inputs


@dataclasses.dataclass(frozen=True)
class Run:
  """One evaluated net or ensemble: errors are fractions, None where not measured."""
  source: str
  kind: str                       # 'train' | 'ensemble'
  dataset: str
  split: str
  key: Optional[str]              # Table 3 variant (train) or ensemble_key (ensemble)
  model: str                      # describe_model, or the ensemble's members
  crops: str
  top1: float
  top5: float
  train_top1: Optional[float] = None
  step: Any = None
  members: int = 1


@dataclasses.dataclass(frozen=True)
class Transfer:
  """One transfer.json."""
  source: str
  dataset: str                    # normalized: 'caltech101', 'voc2012', ...
  data: dict


@dataclasses.dataclass
class Collected:
  """Everything the inputs hold: Runs (nets and ensembles) and Transfers."""
  runs: list
  transfers: list


def read_json(path: pathlib.Path) -> Any:
  """A JSON file's value; ResultsError naming the file if it is missing or malformed."""
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise ResultsError(f'{path}: no such file') from None
  except json.JSONDecodeError as e:
    raise ResultsError(f'{path}: not valid JSON ({e.msg} at line {e.lineno})') from None
  except (OSError, UnicodeDecodeError) as e:
    raise ResultsError(f'{path}: cannot be read ({e})') from None


def _require(path, record: Mapping, *keys: str) -> None:
  if not isinstance(record, Mapping):
    raise ResultsError(f'{path}: expected a JSON object, found {type(record).__name__}')
  missing = [k for k in keys if k not in record]
  if missing:
    raise ResultsError(f'{path}: missing {", ".join(map(repr, missing))}')


def _fraction(path, record: Mapping, key: str) -> Optional[float]:
  value = record.get(key)
  if value is None:
    return None
  if not isinstance(value, (int, float)) or not 0 <= value <= 1:
    raise ResultsError(f'{path}: {key} should be a fraction in [0, 1], found {value!r}')
  return float(value)


def _default_split(dataset: str) -> str:
  return 'test' if dataset == 'digits' else 'validation'


def _dataset(name: str) -> str:
  """Dataset names as the tables key them: TFDS versions dropped, 'voc/2012' -> 'voc2012'."""
  return str(name).split(':')[0].replace('/', '').lower()


def train_run(path: pathlib.Path, results: Mapping) -> Run:
  """A train.py workdir's results.json with its config.json."""
  _require(path, results, 'top1_error', 'top5_error')
  config_path = path.parent / 'config.json'
  if not config_path.is_file():
    raise ResultsError(f'{path}: no config.json beside it (needed to tell which model it is)')
  config = read_json(config_path)
  _require(config_path, config, 'dataset', 'model')
  ten = results.get('ten_crop_top1_error') is not None
  prefix = 'ten_crop_' if ten else ''
  return Run(source=str(path.parent), kind='train', dataset=_dataset(config['dataset']),
             split=config.get('eval_split') or _default_split(config['dataset']),
             key=variant(config), model=describe_model(config),
             crops='ten' if ten else 'center',
             top1=_fraction(path, results, f'{prefix}top1_error'),
             top5=_fraction(path, results, f'{prefix}top5_error'),
             train_top1=_fraction(path, results, 'train_top1_error'),
             step=results.get('step'))


def ensemble_run(path: pathlib.Path, data: Mapping) -> Run:
  """A zfjax.train.ensemble JSON."""
  _require(path, data, 'members', 'top1_error', 'top5_error', 'dataset')
  members = data['members']
  if not isinstance(members, list) or not all(isinstance(m, Mapping) for m in members):
    raise ResultsError(f'{path}: members should be a list of objects')
  key = ensemble_key([variant(m) for m in members])
  models = collections.Counter(map(describe_model, members))
  return Run(source=str(path), kind='ensemble', dataset=_dataset(data['dataset']),
             split=data.get('split') or _default_split(data['dataset']), key=key,
             model=key if all(variant(m) for m in members) else ' + '.join(
                 f'{n} x {model}' for model, n in models.items()),
             crops=data.get('crops', 'center'), top1=_fraction(path, data, 'top1_error'),
             top5=_fraction(path, data, 'top5_error'), step=data.get('step'),
             members=len(members))


def transfer_record(path: pathlib.Path, data: Mapping) -> Transfer:
  """A zfjax.train.transfer JSON, its rows checked."""
  _require(path, data, 'dataset', 'rows')
  if not isinstance(data['rows'], list):
    raise ResultsError(f'{path}: rows should be a list')
  for i, row in enumerate(data['rows']):
    _require(f'{path} row {i}', row, 'method', 'mean')
    _fraction(f'{path} row {i}', row, 'mean')
  return Transfer(str(path), _dataset(data['dataset']), dict(data))


def read_results(path, *, named: bool = True) -> list:
  """The Run or Transfer a JSON file holds, in a list.

  [] for other JSON when not `named` (found by scanning); a named file must be one of ours.
  """
  path = pathlib.Path(path)
  data = read_json(path)
  kind = data.get('kind') if isinstance(data, dict) else None
  if kind == 'ensemble':
    return [ensemble_run(path, data)]
  if kind == 'transfer':
    return [transfer_record(path, data)]
  if path.name == 'results.json' or (named and kind is None and isinstance(data, dict)
                                     and 'top1_error' in data):
    return [train_run(path, data)]
  if named:
    raise ResultsError(f'{path}: not a results file (a train.py results.json, or JSON with '
                      f'"kind": "ensemble" or "transfer"; found kind {kind!r})')
  return []


def find(directory) -> list[pathlib.Path]:
  """The JSON files under `directory` (recursively, checkpoints/ left out), sorted."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise ResultsError(f'{directory}: no such directory')
  found = []
  for root, dirs, files in os.walk(directory):
    dirs[:] = sorted(d for d in dirs if d != 'checkpoints' and not d.startswith('.'))
    found += [pathlib.Path(root) / f for f in sorted(files)
              if f.endswith('.json') and f not in ('config.json', 'features.json')]
  return found


def collect(workdirs: Iterable = (), result_files: Iterable = ()) -> Collected:
  """Every run and transfer in the workdirs (scanned) and the result files (named)."""
  seen, items = set(), []
  sources = [(p, False) for d in workdirs for p in _nonempty(find(d), d)]
  sources += [(pathlib.Path(p), True) for p in result_files]
  for path, named in sources:
    resolved = path.resolve()
    if resolved in seen:
      continue
    seen.add(resolved)
    items += read_results(path, named=named)
  return Collected([x for x in items if isinstance(x, Run)],
                   [x for x in items if isinstance(x, Transfer)])


def _nonempty(paths: list, directory) -> list:
  if not any(p.name == 'results.json' or _has_kind(p) for p in paths):
    raise ResultsError(f'{directory}: no results.json, ensemble or transfer JSON in it')
  return paths


def _has_kind(path: pathlib.Path) -> bool:
  data = read_json(path)
  return isinstance(data, dict) and data.get('kind') in ('ensemble', 'transfer')
