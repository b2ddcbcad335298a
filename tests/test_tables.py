"""The paper's tables from hand-written results, ensemble and transfer JSON.

zfjax.report.results reads them, zfjax.report.tables renders them, and zfjax-tables
(`python -m zfjax.tables`) writes the Markdown; each cell is checked (ours and the
paper's on the right row).
"""

import json
import pathlib
import subprocess
import sys

import pytest

from zfjax.cli import tables as tables_cli
from zfjax.report import results
from zfjax.report import tables

REPO = pathlib.Path(__file__).resolve().parents[1]
IMAGENET = {'dataset': 'imagenet2012', 'eval_split': 'validation', 'image_size': 224,
            'conv_features': [], 'fc_features': [], 'remove_layers': [],
            'norm_before_pool': False}


def write(path, data, raw=False):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(data if raw else json.dumps(data))
  return path


def train_run(root, name, config, **errors):
  write(root / name / 'config.json', {**IMAGENET, **config})
  write(root / name / 'results.json', {'step': 100, **errors})
  (root / name / 'checkpoints' / '100').mkdir(parents=True)
  write(root / name / 'checkpoints' / '100' / 'junk.json', {'kind': 'transfer'})  # skipped
  return root / name


def member(model='zfnet', **fields):
  return {'workdir': 'w', 'step': 5, 'model': model, 'conv_features': [], 'fc_features': [],
          'remove_layers': [], 'norm_before_pool': False, 'image_size': 224, **fields}


def transfer_row(method, features, classifier, n, mean, std, splits=5, **extra):
  return {'method': method, 'features': features, 'classifier': classifier,
          'train_per_class': n, 'mean': mean, 'std': std, 'splits': [mean] * splits, **extra}


@pytest.fixture
def inputs(tmp_path):
  """A results tree of every kind of input.

  A zfnet baseline with ten crops, two ablations (one a paper row, one not), a digits run,
  a 6-net ensemble, a Caltech-101 and a digits transfer.
  """
  runs = tmp_path / 'runs'
  train_run(runs, 'zf', {'model': 'zfnet'}, top1_error=0.401, top5_error=0.182,
            ten_crop_top1_error=0.385, ten_crop_top5_error=0.171, train_top1_error=0.35)
  train_run(runs, 'alex_nofc', {'model': 'alexnet', 'remove_layers': ['fc7', 'fc6']},
            top1_error=0.452, top5_error=0.2249, train_top1_error=0.3)
  train_run(runs, 'zf1024', {'model': 'zfnet', 'fc_features': [1024, 1024]},
            top1_error=0.5, top5_error=0.25)
  train_run(runs, 'digits', {'dataset': 'digits', 'eval_split': 'test', 'model': 'small_zfnet',
                             'image_size': 32}, top1_error=0.02, top5_error=0.0,
            train_top1_error=0.01)
  write(runs / 'ens6.json', {
      'kind': 'ensemble', 'members': [member()] * 5 + [member('zfnet_wide')],
      'crops': 'center', 'step': 'latest', 'dataset': 'imagenet2012', 'split': 'validation',
      'top1_error': 0.37, 'top5_error': 0.151, 'count': 50000})
  protocol = {'train_per_class': [15, 30], 'test_per_class': 50, 'num_splits': 5, 'seed': 0,
              'crops': 'center', 'pooling': 'average-pooled 4x4'}
  caltech = tmp_path / 'c101' / 'transfer.json'
  write(caltech, {
      'kind': 'transfer', 'dataset': 'caltech101', 'source': '/runs/zf',
      'metric': 'mean_per_class_accuracy', 'protocol': protocol, 'rows': [
          transfer_row('frozen', 'fc7', 'softmax', 15, 0.80, 0.01),
          transfer_row('frozen', 'fc7', 'softmax', 30, 0.85, 0.005),
          transfer_row('scratch', None, 'softmax', 15, 0.2, 0.015),
          transfer_row('frozen', 'conv1', 'svm', 30, 0.4, 0.01),
          transfer_row('frozen', 'fc6', 'svm', 30, 0.8, 0.02),
          transfer_row('finetune', None, 'softmax', 30, 0.875, 0.0)]})
  digits = tmp_path / 'digits_transfer' / 'transfer.json'
  write(digits, {
      'kind': 'transfer', 'dataset': 'digits5-9', 'source': '/runs/digits',
      'metric': 'mean_per_class_accuracy', 'protocol': {**protocol, 'train_per_class': [10]},
      'rows': [transfer_row('frozen', 'fc7', 'softmax', 10, 0.9, 0.02, splits=3),
               transfer_row('frozen', 'conv1', 'svm', 20, 0.95, 0.0, splits=1)]})
  return {'runs': runs, 'caltech': caltech, 'digits': digits}


def parse(markdown):
  """{table title: [{header: cell}]} from the rendered Markdown."""
  out, title, header = {}, None, None
  for line in markdown.splitlines():
    if line.startswith('## '):
      title, header = line[3:], None
      out[title] = []
    elif line.startswith('|') and title:
      cells = [c.strip() for c in line.strip('|').split(' | ')]
      if header is None:
        header = cells
      elif not set(line) <= set('|- '):
        out[title].append(dict(zip(header, cells)))
  return out


def rendered(inputs):
  collected = results.collect([inputs['runs']], [inputs['caltech'], inputs['digits']])
  return parse(tables.render(collected))


def row(table, column, value):
  found = [r for r in table if r[column] == value]
  assert len(found) == 1, (value, [r[column] for r in table])
  return found[0]


def test_table2_single_nets_and_ensembles(inputs):
  table = rendered(inputs)['Table 2: ImageNet 2012 classification error']
  zf = row(table, 'Table 2 row', '1 convnet as per Fig. 3')
  assert (zf['val top-1 (ours)'], zf['val top-1 (paper)']) == ('38.5', '38.4')  # ten crops
  assert (zf['val top-5 (ours)'], zf['val top-5 (paper)']) == ('17.1', '16.5')
  assert (zf['crops'], zf['split'], zf['test top-5 (paper)']) == ('ten', 'validation', '—')
  assert zf['run'].endswith('runs/zf')
  six = row(table, 'Table 2 row', '6 convnets, (a) & (b) combined')
  assert (six['val top-1 (ours)'], six['val top-1 (paper)'], six['val top-5 (ours)'],
          six['val top-5 (paper)'], six['test top-5 (paper)'], six['crops']) == (
              '37.0', '36.0', '15.1', '14.7', '14.8', 'center')
  five = row(table, 'Table 2 row', '5 convnets as per Fig. 3 - (a)')  # the paper's alone
  assert (five['val top-1 (ours)'], five['val top-1 (paper)'], five['run']) == (
      '—', '36.7', '—')
  assert len(table) == 5  # the paper's five rows; ablations are Table 3's


def test_table3_rows_from_the_config_and_other(inputs):
  table = rendered(inputs)['Table 3: ablations (ImageNet 2012)']
  base = row(table, 'Table 3 row', 'ZFNet: Our model (as per Fig. 3) (zfnet)')
  assert [base[k] for k in ('train top-1 (ours)', 'train top-1 (paper)', 'val top-1 (ours)',
                            'val top-1 (paper)', 'val top-5 (ours)', 'val top-5 (paper)')] == [
      '35.0', '33.1', '38.5', '38.4', '17.1', '16.5']
  ablation = row(table, 'Table 3 row', 'AlexNet: Removed layers 6,7 (alexnet-no-fc67)')
  assert [ablation[k] for k in ('train top-1 (ours)', 'train top-1 (paper)',
                                'val top-1 (ours)', 'val top-1 (paper)', 'val top-5 (ours)',
                                'val top-5 (paper)', 'crops')] == [
      '30.0', '27.4', '45.2', '44.8', '22.5', '22.4', 'center']
  other = row(table, 'Table 3 row', 'other: zfnet, fc 1024/1024')
  assert (other['val top-1 (ours)'], other['val top-1 (paper)'],
          other['train top-1 (ours)']) == ('50.0', '—', '—')
  empty = row(table, 'Table 3 row', 'AlexNet: Removed layers 3,4 (alexnet-no-conv34)')
  assert (empty['val top-1 (ours)'], empty['val top-1 (paper)']) == ('—', '45.4')
  assert len(table) == 13  # 12 paper rows + 1 other


def test_other_datasets_claim_no_paper_row(inputs):
  out = rendered(inputs)
  table = out['Other datasets (not in the paper)']
  digits = row(table, 'dataset', 'digits')
  assert (digits['val top-1'], digits['train top-1'], digits['split'], digits['what']) == (
      '2.0', '1.0', 'test', '1 net')
  assert digits['model'] == 'small_zfnet, 32px'
  assert not any('digits' in r['run'] for t in ('Table 2: ImageNet 2012 classification error',
                                                 'Table 3: ablations (ImageNet 2012)')
                 for r in out[t])


def test_caltech101_table4(inputs):
  table = rendered(inputs)['Table 4: Caltech-101']
  ours = row(table, 'method', 'pretrained, frozen fc7 + softmax')
  assert (ours['15/class (ours)'], ours['15/class (paper)'], ours['30/class (ours)'],
          ours['30/class (paper)']) == (
              '80.0 ± 1.0', '83.8 ± 0.5', '85.0 ± 0.5', '86.5 ± 0.5')
  scratch = row(table, 'method', 'from scratch (no pretraining)')
  assert (scratch['15/class (ours)'], scratch['15/class (paper)'], scratch['30/class (ours)'],
          scratch['30/class (paper)']) == ('20.0 ± 1.5', '22.8', '—', '46.5')
  finetune = row(table, 'method', 'pretrained, fine-tuned end to end')
  assert (finetune['30/class (ours)'], finetune['30/class (paper)']) == ('87.5 ± 0.0', '—')
  assert len(table) == 3  # the per-layer probes are Table 7's


def test_table7_per_layer(inputs):
  table = rendered(inputs)['Table 7: features of each layer']
  conv1 = row(table, 'classifier (layer)', 'SVM (1: conv1)')
  assert (conv1['Cal-101 30/class (ours)'], conv1['Cal-101 (paper)'],
          conv1['Cal-256 60/class (ours)'], conv1['Cal-256 (paper)']) == (
              '40.0 ± 1.0', '44.8', '—', '24.6')
  fc7 = row(table, 'classifier (layer)', 'Softmax (7: fc7)')
  assert (fc7['Cal-101 30/class (ours)'], fc7['Cal-101 (paper)']) == ('85.0 ± 0.5', '85.4')
  fc6 = row(table, 'classifier (layer)', 'SVM (6: fc6)')  # ours only, between 5 and 7
  assert (fc6['Cal-101 30/class (ours)'], fc6['Cal-101 (paper)']) == ('80.0 ± 2.0', '—')
  assert [r['classifier (layer)'] for r in table] == [
      'SVM (1: conv1)', 'SVM (2: conv2)', 'SVM (3: conv3)', 'SVM (4: conv4)', 'SVM (5: conv5)',
      'SVM (6: fc6)', 'SVM (7: fc7)', 'Softmax (5: conv5)', 'Softmax (7: fc7)']


def test_digits_analog(inputs):
  out = rendered(inputs)
  table = out['Digits analog and other transfer datasets: digits5-9']
  assert table == [{'method': 'pretrained, frozen fc7 + softmax',
                    '10/class (ours)': '90.0 ± 2.0', '20/class (ours)': '—'},
                   {'method': 'pretrained, frozen conv1 + svm', '10/class (ours)': '—',
                    '20/class (ours)': '95.0'}]
  assert 'Table 5: Caltech-256' not in out and 'Table 6: PASCAL VOC 2012' not in out


def test_voc_mean_ap_and_per_class(tmp_path):
  path = write(tmp_path / 'voc' / 'transfer.json', {
      'kind': 'transfer', 'dataset': 'voc2012', 'source': 's', 'metric': 'mean_ap',
      'protocol': {'train_per_class': None, 'num_splits': 1}, 'rows': [
          transfer_row('frozen', 'fc7', 'softmax', None, 0.7, 0.0, splits=1,
                       per_class_ap={'aeroplane': 0.91, 'bicycle': 0.5}),
          transfer_row('frozen', 'fc6', 'softmax', None, 0.6, 0.0, splits=1)]})
  out = parse(tables.render(results.collect([], [path])))
  table = out['Table 6: PASCAL VOC 2012']
  fc7 = row(table, 'method', 'pretrained, frozen fc7 + softmax')
  assert (fc7['mean AP (ours)'], fc7['mean AP (paper)']) == ('70.0', '79.0')
  assert row(table, 'method', 'pretrained, frozen fc6 + softmax')['mean AP (ours)'] == '60.0'
  per_class = out['Table 6 (per class): PASCAL VOC 2012 average precision']
  assert row(per_class, 'class', 'aeroplane')[f'pretrained, frozen fc7 + softmax ({path})'] == (
      '91.0')


def test_cli_writes_the_markdown(inputs, tmp_path):
  out = tmp_path / 'md' / 'results.md'
  command = [sys.executable, '-m', 'zfjax.tables', '--workdirs', str(inputs['runs']),
             str(inputs['caltech'].parent), '--results', str(inputs['digits']),
             '--out', str(out)]
  proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert 'wrote' in proc.stdout and '5 runs, 2 transfers' in proc.stdout
  assert parse(out.read_text()) == rendered(inputs)
  imports = subprocess.run([sys.executable, '-c', "import sys, zfjax.report.tables; "
                            "print('jax' in sys.modules)"], cwd=REPO, capture_output=True,
                           text=True)
  assert imports.stdout.strip() == 'False'  # the Markdown library: no JAX needed


@pytest.mark.parametrize('make, message', [
    (lambda d: write(d / 'bad.json', {'kind': 'ensemble'}), "bad.json: missing 'members'"),
    (lambda d: write(d / 'broken.json', '{"kind": ', raw=True), 'broken.json: not valid JSON'),
    (lambda d: write(d / 'r' / 'results.json', {'top1_error': 0.5, 'top5_error': 0.2}),
     'results.json: no config.json beside it'),
    (lambda d: write(d / 'x.json', {'kind': 'transfer', 'dataset': 'caltech101',
                                    'rows': [{'method': 'frozen', 'mean': 83.8}]}),
     'x.json row 0: mean should be a fraction in [0, 1], found 83.8'),
    (lambda d: write(d / 'other.json', {'hello': 1}), 'other.json: not a results file'),
    (lambda d: d / 'nothing.json', 'nothing.json: no such file'),
])
def test_bad_inputs_name_the_file_in_one_line(tmp_path, capsys, make, message):
  path = make(tmp_path)
  status = tables_cli.main(['--results', str(path), '--out', str(tmp_path / 'o.md')])
  err = capsys.readouterr().err
  assert status == 2 and message in err and err.count('\n') == 1, err
  assert not (tmp_path / 'o.md').exists()


def test_workdir_without_results_is_an_error(tmp_path, capsys):
  (tmp_path / 'empty').mkdir()
  assert tables_cli.main(['--workdirs', str(tmp_path / 'empty'), '--out', 'o.md']) == 2
  assert 'empty: no results.json, ensemble or transfer JSON' in capsys.readouterr().err
  assert tables_cli.main(['--workdirs', str(tmp_path / 'nope'), '--out', 'o.md']) == 2
  assert 'nope: no such directory' in capsys.readouterr().err
  assert tables_cli.main(['--out', 'o.md']) == 2
  assert 'give --workdirs or --results' in capsys.readouterr().err
  assert tables_cli.main(['--results', str(tmp_path / 'x.json')]) == 2
  assert '--out is required' in capsys.readouterr().err


def test_variant_from_config_fields():
  assert results.variant({'model': 'zfnet_wide'}) == 'zfnet-wide'
  assert results.variant({'model': 'zfnet', 'conv_features': [96, 256, 512, 1024, 512],
                         'fc_features': [8192, 8192]}) == 'zfnet-wide-fc8192'
  # Widths of removed layers do not matter; order of removal does not either.
  assert results.variant({'model': 'alexnet', 'fc_features': (2048, 2048),
                         'remove_layers': ('fc7', 'fc6')}) == 'alexnet-no-fc67'
  assert results.variant({'model': 'zfnet', 'norm_before_pool': True}) is None
  assert results.variant({'model': 'small_zfnet'}) is None
  assert results.ensemble_key(['zfnet', None, 'zfnet']) == '2 x zfnet + 1 x other'
