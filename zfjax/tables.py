r"""The paper's Tables 2-7 in Markdown, our numbers beside the paper's.

    python -m zfjax.tables --workdirs /data/runs /tmp/c101 --results ens5.json --out results.md
    text = tables.render(tables.collect(workdirs, results))

Inputs, found under each --workdirs directory (recursively; checkpoints/ is skipped) or
named with --results:
- results.json of a train.py workdir, with the config.json beside it: one net.
- a JSON with "kind": "ensemble" (zfjax.ensemble): several nets' averaged softmax.
- a JSON with "kind": "transfer" (zfjax.transfer's transfer.json): rows of
  {method, features, classifier, train_per_class, mean, std, splits}.
Other JSON files (configs, figures' numbers) are passed over.

Tables:
- Table 2 (ImageNet 2012 val top-1 / top-5 error, single nets and ensembles) and Table 3
  (ablations: train top-1, val top-1, val top-5). A run's row comes from its config's
  model, conv_features, fc_features and remove_layers (`variant`: the names of
  configs/ablations.py); runs matching no paper row are listed as "other". Our val errors
  are the paper's 10 crops where the run has them (ten_crop_eval), else the center crop
  (the crops column says which); train top-1 is the center crop on the training split.
- Tables 4-6 (Caltech-101, Caltech-256, PASCAL VOC 2012): the paper's "ours" is method
  frozen, features fc7, classifier softmax; "from scratch" is method scratch. Mean
  per-class accuracy (VOC: mean AP) in %, mean ± std over splits.
- Table 7: frozen features of each layer (conv1..conv5 are layers 1-5, pool5 is 5 too,
  fc6 and fc7 are 6 and 7) with a linear SVM or softmax, Caltech-101 at 30 and Caltech-256
  at 60 training images per class (at those sizes Tables 4-5 keep only fc7 + softmax).
- Runs on other datasets (e.g. digits) and transfers to other datasets (the offline
  digits 0-4 -> 5-9 analog) get tables of their own, with no paper column.
Errors in %, one decimal; "—" where there is no number.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import pathlib
import sys
from typing import Any, Iterable, Mapping, Optional, Sequence

from zfjax import architecture

# ------------------------------------------------------------------------ the paper
# Zeiler & Fergus 2014 (arXiv 1311.2901 v3), Tables 2-7, in %.

PAPER = {
    # Table 2: ImageNet 2012 error: (row key, the paper's label, val top-1, val top-5,
    # test top-5). Keys: a Table 3 variant (one net) or 'N x variant + ...' (ensembles).
    'table2': (
        ('alexnet', 'Our replication of Krizhevsky et al., 1 convnet', 40.5, 18.1, None),
        ('zfnet', '1 convnet as per Fig. 3', 38.4, 16.5, None),
        ('5 x zfnet', '5 convnets as per Fig. 3 - (a)', 36.7, 15.3, 15.3),
        ('zfnet-wide', '1 convnet as per Fig. 3 but with layers 3,4,5: 512,1024,512 maps '
         '- (b)', 37.5, 16.0, 16.1),
        ('5 x zfnet + 1 x zfnet-wide', '6 convnets, (a) & (b) combined', 36.0, 14.7, 14.8),
    ),
    # Table 3: (variant, the paper's label, train top-1, val top-1, val top-5).
    'table3': (
        ('alexnet', 'Our replication of Krizhevsky et al., 1 convnet', 35.1, 40.5, 18.1),
        ('alexnet-no-conv34', 'Removed layers 3,4', 41.8, 45.4, 22.1),
        ('alexnet-no-fc7', 'Removed layer 7', 27.4, 40.0, 18.4),
        ('alexnet-no-fc67', 'Removed layers 6,7', 27.4, 44.8, 22.4),
        ('alexnet-no-conv34-fc67', 'Removed layers 3,4,6,7', 71.1, 71.3, 50.1),
        ('alexnet-fc2048', 'Adjust layers 6,7: 2048 units', 40.3, 41.7, 18.8),
        ('alexnet-fc8192', 'Adjust layers 6,7: 8192 units', 26.8, 40.0, 18.1),
        ('zfnet', 'Our model (as per Fig. 3)', 33.1, 38.4, 16.5),
        ('zfnet-fc2048', 'Adjust layers 6,7: 2048 units', 38.2, 40.2, 17.6),
        ('zfnet-fc8192', 'Adjust layers 6,7: 8192 units', 22.0, 38.8, 17.0),
        ('zfnet-wide', 'Adjust layers 3,4,5: 512,1024,512 maps', 18.8, 37.5, 16.0),
        ('zfnet-wide-fc8192', 'Adjust layers 6,7: 8192 units and layers 3,4,5: '
         '512,1024,512 maps', 10.0, 38.3, 16.9),
    ),
    # Tables 4-6: {(method, features, classifier): {train images per class: (mean, std)}};
    # VOC has fixed splits (train_per_class None). std None: not quoted.
    'caltech101': {
        ('frozen', 'fc7', 'softmax'): {15: (83.8, 0.5), 30: (86.5, 0.5)},
        ('scratch', None, None): {15: (22.8, None), 30: (46.5, None)},
    },
    'caltech256': {
        ('frozen', 'fc7', 'softmax'): {15: (65.7, None), 30: (70.6, None), 45: (72.7, None),
                                       60: (74.2, None)},
        ('scratch', None, None): {15: (9.0, None), 30: (22.5, None), 45: (31.2, None),
                                  60: (38.8, None)},
    },
    'voc2012': {('frozen', 'fc7', 'softmax'): {None: (79.0, None)}},
    # Table 7: (classifier, layer 1-7, Caltech-101 at 30/class, Caltech-256 at 60/class).
    'table7': (
        ('svm', 1, 44.8, 24.6), ('svm', 2, 66.2, 39.6), ('svm', 3, 72.3, 46.0),
        ('svm', 4, 76.6, 51.3), ('svm', 5, 86.2, 65.6), ('svm', 7, 85.5, 71.7),
        ('softmax', 5, 82.9, 65.7), ('softmax', 7, 85.4, 72.6),
    ),
}

IMAGENET = 'imagenet2012'
TABLE7_SIZES = {'caltech101': 30, 'caltech256': 60}
TRANSFER_TITLES = {
    'caltech101': 'Table 4: Caltech-101',
    'caltech256': 'Table 5: Caltech-256',
    'voc2012': 'Table 6: PASCAL VOC 2012',
}
DASH = '—'
METRICS = {'mean_per_class_accuracy': 'mean per-class accuracy', 'mean_ap': 'mean AP'}

_FAMILIES = {'zfnet': ('zfnet', architecture.ZFNET_MAPS),
             'zfnet_wide': ('zfnet', architecture.WIDE_MAPS),
             'alexnet': ('alexnet', architecture.ZFNET_MAPS)}


class TablesError(ValueError):
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
  """The Table 3 row (a configs/ablations.py name) whose layers a config's fields (model,
  conv_features, fc_features, remove_layers, norm_before_pool, image_size) describe, or
  None when it is none of the paper's."""
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
  """A JSON file's value; TablesError naming the file if it is missing or malformed."""
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise TablesError(f'{path}: no such file') from None
  except json.JSONDecodeError as e:
    raise TablesError(f'{path}: not valid JSON ({e.msg} at line {e.lineno})') from None
  except (OSError, UnicodeDecodeError) as e:
    raise TablesError(f'{path}: cannot be read ({e})') from None


def _require(path, record: Mapping, *keys: str) -> None:
  if not isinstance(record, Mapping):
    raise TablesError(f'{path}: expected a JSON object, found {type(record).__name__}')
  missing = [k for k in keys if k not in record]
  if missing:
    raise TablesError(f'{path}: missing {", ".join(map(repr, missing))}')


def _fraction(path, record: Mapping, key: str) -> Optional[float]:
  value = record.get(key)
  if value is None:
    return None
  if not isinstance(value, (int, float)) or not 0 <= value <= 1:
    raise TablesError(f'{path}: {key} should be a fraction in [0, 1], found {value!r}')
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
    raise TablesError(f'{path}: no config.json beside it (needed to tell which model it is)')
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
  """A zfjax.ensemble JSON."""
  _require(path, data, 'members', 'top1_error', 'top5_error', 'dataset')
  members = data['members']
  if not isinstance(members, list) or not all(isinstance(m, Mapping) for m in members):
    raise TablesError(f'{path}: members should be a list of objects')
  key = ensemble_key([variant(m) for m in members])
  models = collections.Counter(map(describe_model, members))
  return Run(source=str(path), kind='ensemble', dataset=_dataset(data['dataset']),
             split=data.get('split') or _default_split(data['dataset']), key=key,
             model=key if all(variant(m) for m in members) else ' + '.join(
                 f'{n} x {model}' for model, n in models.items()),
             crops=data.get('crops', 'center'), top1=_fraction(path, data, 'top1_error'),
             top5=_fraction(path, data, 'top5_error'), step=data.get('step'),
             members=len(members))


def transfer(path: pathlib.Path, data: Mapping) -> Transfer:
  """A zfjax.transfer JSON, its rows checked."""
  _require(path, data, 'dataset', 'rows')
  if not isinstance(data['rows'], list):
    raise TablesError(f'{path}: rows should be a list')
  for i, row in enumerate(data['rows']):
    _require(f'{path} row {i}', row, 'method', 'mean')
    _fraction(f'{path} row {i}', row, 'mean')
  return Transfer(str(path), _dataset(data['dataset']), dict(data))


def load(path, *, named: bool = True) -> list:
  """The Run or Transfer a JSON file holds ([] for other JSON when not `named`, i.e.
  found by scanning; a named file must be one of ours)."""
  path = pathlib.Path(path)
  data = read_json(path)
  kind = data.get('kind') if isinstance(data, dict) else None
  if kind == 'ensemble':
    return [ensemble_run(path, data)]
  if kind == 'transfer':
    return [transfer(path, data)]
  if path.name == 'results.json' or (named and kind is None and isinstance(data, dict)
                                     and 'top1_error' in data):
    return [train_run(path, data)]
  if named:
    raise TablesError(f'{path}: not a results file (a train.py results.json, or JSON with '
                      f'"kind": "ensemble" or "transfer"; found kind {kind!r})')
  return []


def find(directory) -> list[pathlib.Path]:
  """The JSON files under `directory` (recursively, checkpoints/ left out), sorted."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise TablesError(f'{directory}: no such directory')
  found = []
  for root, dirs, files in os.walk(directory):
    dirs[:] = sorted(d for d in dirs if d != 'checkpoints' and not d.startswith('.'))
    found += [pathlib.Path(root) / f for f in sorted(files)
              if f.endswith('.json') and f not in ('config.json', 'features.json')]
  return found


def collect(workdirs: Iterable = (), results: Iterable = ()) -> Collected:
  """Every run and transfer in the workdirs (scanned) and results files (named)."""
  seen, items = set(), []
  sources = [(p, False) for d in workdirs for p in _nonempty(find(d), d)]
  sources += [(pathlib.Path(p), True) for p in results]
  for path, named in sources:
    resolved = path.resolve()
    if resolved in seen:
      continue
    seen.add(resolved)
    items += load(path, named=named)
  return Collected([x for x in items if isinstance(x, Run)],
                   [x for x in items if isinstance(x, Transfer)])


def _nonempty(paths: list, directory) -> list:
  if not any(p.name == 'results.json' or _has_kind(p) for p in paths):
    raise TablesError(f'{directory}: no results.json, ensemble or transfer JSON in it')
  return paths


def _has_kind(path: pathlib.Path) -> bool:
  data = read_json(path)
  return isinstance(data, dict) and data.get('kind') in ('ensemble', 'transfer')


# ------------------------------------------------------------------------ formatting


def pct(value: Optional[float]) -> str:
  """A fraction as a percentage with one decimal; '—' for None."""
  return DASH if value is None else f'{100 * value:.1f}'


def paper(value: Optional[float]) -> str:
  """A paper number (already in %) with one decimal; '—' for None."""
  return DASH if value is None else f'{value:.1f}'


def mean_std(row: Mapping) -> str:
  """'83.8 ± 0.5' (mean ± std over splits, in %); the mean alone for one split."""
  splits = row.get('splits') or []
  std = row.get('std')
  if std is None and len(splits) > 1:
    mean = sum(splits) / len(splits)
    std = (sum((s - mean) ** 2 for s in splits) / len(splits)) ** 0.5
  if std is None or len(splits) == 1:
    return pct(row['mean'])
  return f'{pct(row["mean"])} ± {pct(std)}'


def paper_mean_std(value) -> str:
  """A paper (mean, std or None) pair as '83.8 ± 0.5' or '22.8'; '—' for None."""
  if value is None:
    return DASH
  mean, std = value
  return paper(mean) if std is None else f'{paper(mean)} ± {paper(std)}'


@dataclasses.dataclass
class Table:
  """A Markdown table with a heading and notes saying what its numbers are."""
  title: str
  notes: list
  header: list
  rows: list

  def markdown(self) -> str:
    lines = [f'## {self.title}', '']
    lines += self.notes
    if self.notes:
      lines.append('')
    lines.append('| ' + ' | '.join(self.header) + ' |')
    lines.append('|' + '|'.join(' --- ' for _ in self.header) + '|')
    lines += ['| ' + ' | '.join(_cell(c) for c in row) + ' |' for row in self.rows]
    return '\n'.join(lines) + '\n'


def _cell(value) -> str:
  return str(value).replace('|', '\\|').replace('\n', ' ')


# ------------------------------------------------------------------------ tables


def _imagenet(runs):
  return [r for r in runs if r.dataset == IMAGENET]


def table2(runs: Sequence[Run]) -> Table:
  """ImageNet 2012 val errors of single nets (alexnet, zfnet, zfnet-wide) and ensembles."""
  runs = _imagenet(runs)
  rows, placed = [], set()
  for key, label, top1, top5, test5 in PAPER['table2']:
    ours = [r for r in runs if r.key == key and (r.kind == 'ensemble') == (' x ' in key)]
    placed.update(map(id, ours))
    for run in ours or [None]:
      rows.append(_table2_row(label, run, top1, top5, test5))
  for run in runs:
    if run.kind == 'ensemble' and id(run) not in placed:
      rows.append(_table2_row(f'other: ensemble of {run.members} ({run.model})', run,
                              None, None, None))
  return Table(
      'Table 2: ImageNet 2012 classification error', [
          'Dataset: ImageNet 2012 (TFDS imagenet2012), error in %. Ours: on each run\'s '
          'evaluation split (column split; validation = the 50,000 ILSVRC-2012 val images) '
          'with the paper\'s 10 crops where measured, else the center crop (column crops); '
          'ensembles average the members\' softmax (zfjax.ensemble). Paper: val = the '
          'validation set, test = the ILSVRC test server (no labels here, so no ours).'],
      ['Table 2 row', 'val top-1 (ours)', 'val top-1 (paper)', 'val top-5 (ours)',
       'val top-5 (paper)', 'test top-5 (paper)', 'crops', 'split', 'run'], rows)


def _table2_row(label, run, top1, top5, test5) -> list:
  ours = [DASH] * 2 if run is None else [pct(run.top1), pct(run.top5)]
  where = [DASH] * 3 if run is None else [run.crops, run.split, run.source]
  return [label, ours[0], paper(top1), ours[1], paper(top5), paper(test5), *where]


def table3(runs: Sequence[Run]) -> Table:
  """The ablations: one row per paper row (with every run of it), then "other" runs."""
  singles = [r for r in _imagenet(runs) if r.kind == 'train']
  rows = []
  for key, label, train1, top1, top5 in PAPER['table3']:
    family = 'AlexNet' if key.startswith('alexnet') else 'ZFNet'
    for run in [r for r in singles if r.key == key] or [None]:
      rows.append(_table3_row(f'{family}: {label} ({key})', run, train1, top1, top5))
  for run in singles:
    if run.key is None:
      rows.append(_table3_row(f'other: {run.model}', run, None, None, None))
  return Table(
      'Table 3: ablations (ImageNet 2012)', [
          'Dataset: ImageNet 2012, error in %. Row from the run\'s config (model, '
          'conv_features, fc_features, remove_layers; configs/ablations.py names in '
          'parentheses). Ours: val on the evaluation split with 10 crops where measured, '
          'else the center crop (column crops); train top-1 on the training split with the '
          'center crop, once after training (train_error_eval). Paper: train and val '
          'top-1, val top-5.'],
      ['Table 3 row', 'train top-1 (ours)', 'train top-1 (paper)', 'val top-1 (ours)',
       'val top-1 (paper)', 'val top-5 (ours)', 'val top-5 (paper)', 'crops', 'split',
       'run'], rows)


def _table3_row(label, run, train1, top1, top5) -> list:
  if run is None:
    ours, where = [DASH] * 3, [DASH] * 3
  else:
    ours = [pct(run.train_top1), pct(run.top1), pct(run.top5)]
    where = [run.crops, run.split, run.source]
  return [label, ours[0], paper(train1), ours[1], paper(top1), ours[2], paper(top5), *where]


def other_datasets(runs: Sequence[Run]) -> Optional[Table]:
  """Nets and ensembles on datasets other than ImageNet: no paper numbers to compare."""
  others = [r for r in runs if r.dataset != IMAGENET]
  if not others:
    return None
  rows = [[r.dataset, '1 net' if r.kind == 'train' else f'ensemble of {r.members}',
           r.model, pct(r.train_top1), pct(r.top1), pct(r.top5), r.crops, r.split,
           DASH if r.step is None else r.step, r.source] for r in others]
  return Table(
      'Other datasets (not in the paper)', [
          'Error in %, ours only: the paper has no numbers for these datasets. Val on each '
          'run\'s evaluation split (column split), train top-1 on its training split '
          '(center crop).'],
      ['dataset', 'what', 'model', 'train top-1', 'val top-1', 'val top-5', 'crops', 'split',
       'step', 'run'], rows)


def _group(row: Mapping) -> tuple:
  """(method, features, classifier); networks trained whole (scratch) have no features."""
  if row['method'] == 'scratch':
    return 'scratch', None, None
  return row['method'], row.get('features'), row.get('classifier')


def _group_label(group: tuple) -> str:
  method, features, classifier = group
  if method == 'scratch':
    return 'from scratch (no pretraining)'
  if method == 'frozen':
    return f'pretrained, frozen {features} + {classifier}'
  if method == 'finetune':
    return 'pretrained, fine-tuned end to end'
  return f'{method}' + (f' ({classifier})' if classifier else '')


def _in_table7(transfer_: Transfer, row: Mapping) -> bool:
  """Per-layer rows Table 7 shows (and Tables 4-5 then leave out): frozen layers other
  than the paper's fc7 + softmax head, at Table 7's training-set size."""
  return (transfer_.dataset in TABLE7_SIZES and row['method'] == 'frozen'
          and _group(row) != ('frozen', 'fc7', 'softmax')
          and row.get('train_per_class') == TABLE7_SIZES[transfer_.dataset])


def transfer_table(dataset: str, transfers: Sequence[Transfer]) -> Optional[Table]:
  """Table 4, 5 or 6: one column pair (ours, paper) per training-set size."""
  mine = [t for t in transfers if t.dataset == dataset]
  if not mine:
    return None
  reference = PAPER[dataset]
  sizes = {n for values in reference.values() for n in values}
  sizes |= {row.get('train_per_class') for t in mine for row in t.data['rows']
            if not _in_table7(t, row)}
  sizes = sorted(sizes, key=_size_order)
  groups = list(reference)
  groups += [g for g in dict.fromkeys(_group(row) for t in mine for row in t.data['rows']
                                      if not _in_table7(t, row)) if g not in groups]
  rows = []
  for group in groups:
    found = False
    for t in mine:
      cells = {row.get('train_per_class'): mean_std(row) for row in t.data['rows']
               if _group(row) == group and not _in_table7(t, row)}
      if cells:
        found = True
        rows.append(_transfer_row(group, sizes, cells, reference.get(group, {}), t.source))
    if not found:
      rows.append(_transfer_row(group, sizes, {}, reference.get(group, {}), DASH))
  metric = METRICS['mean_ap' if dataset == 'voc2012' else 'mean_per_class_accuracy']
  header = ['method']
  for n in sizes:
    what = metric if n is None else f'{n}/class'
    header += [f'{what} (ours)', f'{what} (paper)']
  notes = [f'{metric.capitalize()} in %, mean ± std over splits (one split: the value). '
           f'Paper: {_paper_protocol(dataset)}. Ours, per file:']
  notes += [f'- {t.source}: {_protocol(t.data)}' for t in mine]
  table = Table(TRANSFER_TITLES[dataset], notes, header + ['run'], rows)
  return table


def _size_order(n: Optional[int]) -> int:
  return -1 if n is None else n  # None: fixed splits (VOC)


def _transfer_row(group, sizes, cells, reference, source) -> list:
  row = [_group_label(group)]
  for n in sizes:
    row += [cells.get(n, DASH), paper_mean_std(reference.get(n))]
  return row + [source]


def _paper_protocol(dataset: str) -> str:
  return {
      'caltech101': 'ImageNet-pretrained ZFNet, layers 1-7 fixed, new softmax on fc7; 15 or '
                    '30 training images per class, up to 50 test images per class, 5 random '
                    'splits',
      'caltech256': 'the same, 15/30/45/60 training images per class, 5 splits',
      'voc2012': '20-way softmax on fc7 trained on train+val, mean AP on the test set',
  }[dataset]


def _protocol(data: Mapping) -> str:
  """One line from a transfer JSON's protocol and source."""
  protocol = data.get('protocol') or {}
  parts = [f'source {data.get("source", DASH)}', f'metric {data.get("metric", DASH)}']
  parts += [f'{key} {data[key]}' for key in ('num_images', 'num_classes') if key in data]
  parts += [f'{key} {protocol[key]}' for key in ('train_per_class', 'test_per_class',
                                                 'num_splits', 'seed', 'crops', 'pooling')
            if key in protocol]
  return '; '.join(parts)


_LAYER_NUMBERS = {'conv1': 1, 'conv2': 2, 'conv3': 3, 'conv4': 4, 'conv5': 5, 'pool5': 5,
                  'fc6': 6, 'fc7': 7}


def _layer_label(classifier: str, number: int, features: str) -> str:
  name = 'SVM' if classifier == 'svm' else classifier.capitalize()
  return f'{name} ({number}: {features})'


def table7(transfers: Sequence[Transfer]) -> Optional[Table]:
  """Frozen features layer by layer, Caltech-101 at 30 and Caltech-256 at 60 per class."""
  frozen = {}  # (classifier, number, features) -> {dataset: [(cell, source)]}
  for t in transfers:
    size = TABLE7_SIZES.get(t.dataset)
    for row in t.data['rows']:
      features = row.get('features')
      if (size is None or row['method'] != 'frozen' or row.get('train_per_class') != size
          or features not in _LAYER_NUMBERS):
        continue
      key = (row.get('classifier') or DASH, _LAYER_NUMBERS[features], features)
      frozen.setdefault(key, {}).setdefault(t.dataset, []).append((mean_std(row), t.source))
  if not frozen:
    return None
  reference = {(c, n): (a, b) for c, n, a, b in PAPER['table7']}
  default_features = {n: f for f, n in _LAYER_NUMBERS.items() if f != 'pool5'}
  keys = {(c, n, default_features[n]) for c, n, _, _ in PAPER['table7']} | set(frozen)
  keys = sorted(keys, key=lambda k: (k[0] != 'svm', k[0], k[1], k[2] != default_features[k[1]],
                                     k[2]))  # the paper's order: SVMs, then by layer
  rows = []
  for classifier, number, features in keys:
    ours = frozen.get((classifier, number, features), {})
    a, b = reference.get((classifier, number), (None, None))
    sources = dict.fromkeys(s for cells in ours.values() for _, s in cells)
    rows.append([_layer_label(classifier, number, features),
                 ' / '.join(c for c, _ in ours.get('caltech101', [])) or DASH, paper(a),
                 ' / '.join(c for c, _ in ours.get('caltech256', [])) or DASH, paper(b),
                 ', '.join(sources) or DASH])
  return Table(
      'Table 7: features of each layer', [
          'Mean per-class accuracy in %, mean ± std over splits: a linear SVM or softmax on '
          'the frozen features of one layer (layers 1-5: conv1..conv5 or pool5, 6: fc6, '
          '7: fc7; conv maps pooled as each file\'s protocol says). Caltech-101 with 30 and '
          'Caltech-256 with 60 training images per class, as in the paper.'],
      ['classifier (layer)', 'Cal-101 30/class (ours)', 'Cal-101 (paper)',
       'Cal-256 60/class (ours)', 'Cal-256 (paper)', 'run'], rows)


def voc_per_class(transfers: Sequence[Transfer]) -> Optional[Table]:
  """Our per-class average precision on VOC 2012 (PAPER.md quotes only the mean)."""
  columns = [(f'{_group_label(_group(row))} ({t.source})', row['per_class_ap'])
             for t in transfers if t.dataset == 'voc2012' for row in t.data['rows']
             if isinstance(row.get('per_class_ap'), Mapping)]
  if not columns:
    return None
  classes = list(dict.fromkeys(c for _, ap in columns for c in ap))
  rows = [[c, *(pct(ap.get(c)) for _, ap in columns)] for c in classes]
  return Table('Table 6 (per class): PASCAL VOC 2012 average precision',
               ['AP in %, ours only.'], ['class', *(label for label, _ in columns)], rows)


def other_transfers(transfers: Sequence[Transfer]) -> list[Table]:
  """Transfers to datasets the paper does not use (the offline digits 0-4 -> 5-9), laid
  out as Tables 4-7 are: one row per method (frozen layer + classifier, finetune, scratch),
  one column per training-set size."""
  tables = []
  for t in transfers:
    if t.dataset in TRANSFER_TITLES:
      continue
    metric = t.data.get('metric', 'mean_per_class_accuracy')
    metric = METRICS.get(metric, metric)
    sizes = sorted({row.get('train_per_class') for row in t.data['rows']}, key=_size_order)
    groups = list(dict.fromkeys(_group(row) for row in t.data['rows']))
    cells = {(_group(row), row.get('train_per_class')): mean_std(row) for row in t.data['rows']}
    rows = [[_group_label(g), *(cells.get((g, n), DASH) for n in sizes)] for g in groups]
    header = ['method'] + [f'{metric} (ours)' if n is None else f'{n}/class (ours)'
                           for n in sizes]
    tables.append(Table(
        f'Digits analog and other transfer datasets: {t.data["dataset"]}', [
            f'Not in the paper (no paper column): the analog of its Tables 4-7 on '
            f'{t.data["dataset"]}. {metric.capitalize()} in %, mean ± std over splits.',
            f'- {t.source}: {_protocol(t.data)}'], header, rows))
  return tables


def tables(collected: Collected) -> list[Table]:
  """Every table the inputs fill, in the paper's order."""
  out = []
  runs, transfers = collected.runs, collected.transfers
  if _imagenet(runs):
    out += [table2(runs), table3(runs)]
  out.append(other_datasets(runs))
  out += [transfer_table(d, transfers) for d in TRANSFER_TITLES]
  out += [voc_per_class(transfers), table7(transfers)]
  out += other_transfers(transfers)
  return [t for t in out if t is not None]


def render(collected: Collected) -> str:
  """The Markdown document: a heading, then every table."""
  parts = ['# Zeiler & Fergus 2014: our results beside the paper\'s', '',
           'Generated by `python -m zfjax.tables`. Paper numbers: arXiv 1311.2901 v3.', '']
  found = tables(collected)
  if not found:
    parts.append('No results.')
  return '\n'.join(parts) + '\n' + '\n'.join(t.markdown() for t in found)


# ------------------------------------------------------------------------ CLI


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m zfjax.tables', description=__doc__.split(
      '\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdirs', nargs='*', default=[],
                      help='directories searched (recursively) for results JSON')
  parser.add_argument('--results', nargs='*', default=[],
                      help='results JSON files: results.json, ensemble or transfer JSON')
  parser.add_argument('--out', required=True, help='the Markdown file to write')
  args = parser.parse_args(argv)
  if not args.workdirs and not args.results:
    parser.error('give --workdirs or --results')
  return args


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    collected = collect(args.workdirs, args.results)
  except TablesError as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(render(collected))
  print(f'wrote {out}: {len(collected.runs)} runs, {len(collected.transfers)} transfers')
  return 0


if __name__ == '__main__':
  sys.exit(main())
