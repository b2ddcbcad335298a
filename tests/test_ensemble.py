"""zfjax.train.ensemble and zfjax-ensemble: softmax-averaged ensembles (Table 2).

On two tiny digits runs (configs/digits.py:smoke, seeds 0 and 1). The full tier adds the
command line's successful run and the same net twice (each a further compile of the
evaluation).
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from zfjax.configs import digits
from zfjax import checkpoints, input_pipeline, loading, models
from zfjax.cli import ensemble as ensemble_cli
from zfjax.train import ensemble, steps

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_same_net_twice_scores_as_the_single_net(digits_smoke_run):
  workdir = digits_smoke_run(0)
  single = json.loads((workdir / 'results.json').read_text())
  result = ensemble.evaluate_workdirs([workdir, workdir])
  assert result['top1_error'] == single['top1_error']
  assert result['top5_error'] == single['top5_error']
  assert result['count'] == single['count'] == 360
  assert (result['kind'], result['dataset'], result['split'], result['crops'],
          result['step']) == ('ensemble', 'digits', 'test', 'center', 'latest')
  member = result['members'][0]
  assert member['step'] == 4 and member['model'] == 'small_zfnet'
  assert member['conv_features'] == [8, 8, 8, 8, 8] and member['num_classes'] == 10


@pytest.mark.slow  # full tier (the default one: test_training's in-memory ensemble)
def test_two_nets_average_their_softmax(digits_smoke_run):
  workdirs = [digits_smoke_run(0), digits_smoke_run(1)]
  result = ensemble.evaluate_workdirs(workdirs, step=2)
  # By hand: every test image at once, each net's softmax, their mean.
  data = input_pipeline.load_digits(size=36)
  images, labels = input_pipeline.center_crop_batch(data.test_images, 32), data.test_labels
  probs = []
  for workdir in workdirs:
    restored_config, params = checkpoints.restore_params(workdir, step=2)
    model = models.from_config(restored_config, 10)
    probs.append(np.asarray(steps.probabilities(model, params, images)))
  mean = np.mean(probs, axis=0)
  assert result['count'] == len(labels) == 360
  assert result['top1_error'] == pytest.approx(np.mean(mean.argmax(-1) != labels), abs=1e-9)
  assert [m['step'] for m in result['members']] == [2, 2]
  assert result['step'] == 2


def _member(name, **fields):
  config = digits.get_config('smoke')
  config.update(fields)
  net = loading.Loaded(config, None, None, 10, 'paper', None, pathlib.Path(name, '4'), 4)
  return ensemble.Member(name, net)


@pytest.mark.parametrize('fields, message', [
    ({'image_size': 28}, 'image_size'),
    ({'eval_split': 'train'}, 'split'),
    ({'split_seed': 3}, 'split_seed'),
    ({'dataset': 'imagenet2012'}, 'dataset'),
])
def test_members_must_see_the_same_images(fields, message):
  members = [_member('runA'), _member('runB'), _member('runC', **fields)]
  with pytest.raises(ensemble.EnsembleError, match=f'runA and runC differ in {message}'):
    ensemble.check_members(members)
  ensemble.check_members(members[:2])
  ensemble.check_members([_member('runA'), _member('runB', seed=7)])  # seeds may differ


@pytest.mark.slow
def test_cli_writes_the_json(digits_smoke_run, tmp_path):
  workdirs = [str(digits_smoke_run(0)), str(digits_smoke_run(1))]
  out = tmp_path / 'ensemble.json'
  proc = subprocess.run([sys.executable, '-m', 'zfjax.ensemble', '--workdirs', *workdirs,
                         '--step', 'best', '--out', str(out)], cwd=REPO, text=True,
                        capture_output=True, timeout=300,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 0, proc.stderr[-3000:]
  written = json.loads(out.read_text())
  assert written == ensemble.evaluate_workdirs(workdirs, step='best')
  assert written['step'] == 'best' and [m['workdir'] for m in written['members']] == workdirs
  assert 'ensemble of 2 on digits test' in proc.stdout


@pytest.mark.parametrize('argv, message', [
    (['--workdirs', 'MISSING'], 'MISSING does not exist'),
    (['--workdirs', 'RUN', 'MISSING'], 'MISSING does not exist'),  # the paths after it count
    (['--workdirs', 'RUN', '--step', '3'], 'no checkpoint of step 3'),
    (['--workdirs', 'RUN', '--step', 'newest'], "--step must be 'latest', 'best' or a step"),
    (['--workdirs', 'RUN', '--batch-size', '0'], 'eval_batch_size 0 must be a positive'),
    (['--workdirs', 'RUN', '--batch_size', '0'], 'eval_batch_size 0 must be a positive'),
    (['--workdirs', 'RUN', '--crops', 'five'], 'flag --crops=five: value should be one of'),
    ([], 'name the members: --workdirs DIR'),
])
def test_cli_errors_are_one_line(argv, message, digits_smoke_run, tmp_path, capsys):
  argv = [str(digits_smoke_run(0)) if a == 'RUN' else str(tmp_path / a) if a == 'MISSING'
          else a for a in argv]
  assert ensemble_cli.main([*argv, '--out', str(tmp_path / 'e.json')]) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and message in err and err.count('\n') == 1
  assert not (tmp_path / 'e.json').exists()


@pytest.mark.slow  # a subprocess through the shim; the CLI itself runs in-process above
def test_python_m_zfjax_ensemble_runs_the_program(tmp_path):
  """The shim zfjax/ensemble.py keeps the README's `python -m zfjax.ensemble` working."""
  proc = subprocess.run([sys.executable, '-m', 'zfjax.ensemble', '--workdirs',
                         str(tmp_path / 'none'), '--out', str(tmp_path / 'e.json')], cwd=REPO,
                        text=True, capture_output=True, timeout=300,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [f'error: {tmp_path / "none"} does not exist']
