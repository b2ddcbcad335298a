"""The paper's Tables 2-7 in Markdown, our numbers beside the paper's.

    text = tables.render(results.collect(workdirs, result_files))
    zfjax-tables --workdirs /data/runs /tmp/c101 --results ens5.json --out results.md

The inputs are read by `zfjax.report.results`; the paper's numbers are in
`zfjax.report.paper_numbers`. Tables:
- Table 2 (ImageNet 2012 val top-1 / top-5 error, single nets and ensembles) and Table 3
  (ablations: train top-1, val top-1, val top-5). A run's row comes from its config's
  model, conv_features, fc_features and remove_layers (`results.variant`: the names of
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

import dataclasses
from typing import Mapping, Optional, Sequence

from zfjax.report import paper_numbers
from zfjax.report import results

IMAGENET = 'imagenet2012'
TRANSFER_TITLES = {
    'caltech101': 'Table 4: Caltech-101',
    'caltech256': 'Table 5: Caltech-256',
    'voc2012': 'Table 6: PASCAL VOC 2012',
}
DASH = '—'
METRICS = {'mean_per_class_accuracy': 'mean per-class accuracy', 'mean_ap': 'mean AP'}


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


def table2(runs: Sequence[results.Run]) -> Table:
  """ImageNet 2012 val errors of single nets (alexnet, zfnet, zfnet-wide) and ensembles."""
  runs = _imagenet(runs)
  rows, placed = [], set()
  for key, label, top1, top5, test5 in paper_numbers.TABLE2:
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
          'ensembles average the members\' softmax (zfjax.train.ensemble). Paper: val = the '
          'validation set, test = the ILSVRC test server (no labels here, so no ours).'],
      ['Table 2 row', 'val top-1 (ours)', 'val top-1 (paper)', 'val top-5 (ours)',
       'val top-5 (paper)', 'test top-5 (paper)', 'crops', 'split', 'run'], rows)


def _table2_row(label, run, top1, top5, test5) -> list:
  ours = [DASH] * 2 if run is None else [pct(run.top1), pct(run.top5)]
  where = [DASH] * 3 if run is None else [run.crops, run.split, run.source]
  return [label, ours[0], paper(top1), ours[1], paper(top5), paper(test5), *where]


def table3(runs: Sequence[results.Run]) -> Table:
  """The ablations: one row per paper row (with every run of it), then "other" runs."""
  singles = [r for r in _imagenet(runs) if r.kind == 'train']
  rows = []
  for key, label, train1, top1, top5 in paper_numbers.TABLE3:
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


def other_datasets(runs: Sequence[results.Run]) -> Optional[Table]:
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


def _in_table7(transfer_: results.Transfer, row: Mapping) -> bool:
  """Whether Table 7 shows a row (and Tables 4-5 then leave it out).

  Table 7's rows: frozen layers other than the paper's fc7 + softmax head, at Table 7's
  training-set size.
  """
  return (transfer_.dataset in paper_numbers.TABLE7_SIZES and row['method'] == 'frozen'
          and _group(row) != ('frozen', 'fc7', 'softmax')
          and row.get('train_per_class') == paper_numbers.TABLE7_SIZES[transfer_.dataset])


def transfer_table(dataset: str, transfers: Sequence[results.Transfer]) -> Optional[Table]:
  """Table 4, 5 or 6: one column pair (ours, paper) per training-set size."""
  mine = [t for t in transfers if t.dataset == dataset]
  if not mine:
    return None
  reference = paper_numbers.TRANSFER[dataset]
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


def table7(transfers: Sequence[results.Transfer]) -> Optional[Table]:
  """Frozen features layer by layer, Caltech-101 at 30 and Caltech-256 at 60 per class."""
  frozen = {}  # (classifier, number, features) -> {dataset: [(cell, source)]}
  for t in transfers:
    size = paper_numbers.TABLE7_SIZES.get(t.dataset)
    for row in t.data['rows']:
      features = row.get('features')
      if (size is None or row['method'] != 'frozen' or row.get('train_per_class') != size
          or features not in _LAYER_NUMBERS):
        continue
      key = (row.get('classifier') or DASH, _LAYER_NUMBERS[features], features)
      frozen.setdefault(key, {}).setdefault(t.dataset, []).append((mean_std(row), t.source))
  if not frozen:
    return None
  reference = {(c, n): (a, b) for c, n, a, b in paper_numbers.TABLE7}
  default_features = {n: f for f, n in _LAYER_NUMBERS.items() if f != 'pool5'}
  keys = {(c, n, default_features[n]) for c, n, _, _ in paper_numbers.TABLE7} | set(frozen)
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


def voc_per_class(transfers: Sequence[results.Transfer]) -> Optional[Table]:
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


def other_transfers(transfers: Sequence[results.Transfer]) -> list[Table]:
  """Transfers to datasets the paper does not use (the offline digits 0-4 -> 5-9).

  Laid out as Tables 4-7 are: one row per method (frozen layer + classifier, finetune,
  scratch), one column per training-set size.
  """
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


def tables(collected: results.Collected) -> list[Table]:
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


def render(collected: results.Collected) -> str:
  """The Markdown document: a heading, then every table."""
  parts = ['# Zeiler & Fergus 2014: our results beside the paper\'s', '',
           'Generated by `python -m zfjax.tables`. Paper numbers: arXiv 1311.2901 v3.', '']
  found = tables(collected)
  if not found:
    parts.append('No results.')
  return '\n'.join(parts) + '\n' + '\n'.join(t.markdown() for t in found)
