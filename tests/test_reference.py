"""Golden reference outputs (zfjax.reference) and their independent PyTorch check.

- A freshly generated small file passes tools/check_reference_torch.py (torch, numpy
  and the standard library only), and a corrupted one fails it.
- The checked-in tests/data/reference_small.npz equals what zfjax computes now: a guard
  against silent numerical drift (a JAX or XLA upgrade, a refactor). If a change is meant
  to alter the numbers, regenerate it with
  `python -m zfjax.reference --small --out tests/data/reference_small.npz` and say why.
- The metadata documents the layout of every array.

The small file is generated once, in-process through the command line's main
(zfjax.cli.reference); the full file (224x224, about 20 s, through `python -m
zfjax.reference`) is the full tier's.
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from zfjax import architecture, reference
from zfjax.cli import reference as cli_reference

ROOT = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = ROOT / 'tests' / 'data' / 'reference_small.npz'
CHECKER = ROOT / 'tools' / 'check_reference_torch.py'
DRIFT_RTOL = 1e-5
VERSION_FIELDS = ('zfjax_version', 'jax_version')


def run_checker(path):
  return subprocess.run([sys.executable, str(CHECKER), str(path)], cwd=ROOT,
                        capture_output=True, text=True, check=False)


@pytest.fixture(scope='module')
def fresh_file(tmp_path_factory):
  path = tmp_path_factory.mktemp('reference') / 'small.npz'
  assert cli_reference.main(['--small', '--out', str(path)]) == 0
  return path


@pytest.fixture(scope='module')
def regenerated(fresh_file):
  return reference.load(fresh_file)


@pytest.fixture(scope='module')
def golden():
  return reference.load(GOLDEN)


@pytest.mark.slow  # full tier; the checked-in golden file is checked in the default one
def test_fresh_file_passes_the_torch_check(fresh_file):
  result = run_checker(fresh_file)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'PASS' in result.stdout.splitlines()[-1]
  arrays, _ = reference.load(fresh_file)
  assert all(name in result.stdout for name in arrays)  # one row per array


@pytest.mark.slow  # full tier (a fresh file takes ~30 s); the golden file's check stays
def test_torch_check_fails_on_a_wrong_file(fresh_file, tmp_path):
  arrays, metadata = reference.load(fresh_file)
  projection = arrays['deconv/guided/conv5']
  projection[0, 0, 10, 10, 0] += 1e-3 * np.abs(projection).max()
  arrays['occlusion/top_class'][0, 0] += 1
  arrays['metadata'] = np.asarray(json.dumps(metadata))
  wrong = tmp_path / 'wrong.npz'
  reference.save(arrays, wrong)
  result = run_checker(wrong)
  assert result.returncode == 1, result.stdout + result.stderr
  failed = [line.split()[0] for line in result.stdout.splitlines() if 'FAIL' in line[-10:]]
  assert failed == ['deconv/guided/conv5', 'occlusion/top_class']
  assert result.stdout.splitlines()[-1].startswith('FAIL')


def test_golden_file_matches_zfjax_now(golden, regenerated):
  stored, stored_metadata = golden
  fresh, fresh_metadata = regenerated
  assert sorted(stored) == sorted(fresh)
  for name, value in stored.items():
    assert value.dtype == fresh[name].dtype and value.shape == fresh[name].shape, name
    if np.issubdtype(value.dtype, np.integer) or name.startswith(('params/', 'images')):
      np.testing.assert_array_equal(fresh[name], value, err_msg=name)
    else:
      error = np.abs(fresh[name].astype(np.float64) - value).max()
      assert error <= DRIFT_RTOL * np.abs(value).max(), (name, error)
  strip = lambda m: {k: v for k, v in m.items() if k not in VERSION_FIELDS}
  assert strip(stored_metadata) == strip(fresh_metadata)


def test_metadata_documents_the_layout(golden):
  arrays, metadata = golden
  assert metadata['format'] == reference.FORMAT
  assert metadata['format_version'] == reference.FORMAT_VERSION
  assert metadata['variant'] == 'small' and metadata['seed'] == 0
  assert set(metadata['arrays']) == set(arrays) | {'metadata'}
  for key in ('images', 'maps', 'conv_kernel', 'dense_kernel', 'flatten', 'conv', 'pool',
              'norm', 'switch_ties', 'seed', 'deconvnet', 'guided', 'backprop', 'occlusion'):
    assert metadata['layout'][key], key
  assert 'HWIO' in metadata['layout']['conv_kernel']
  assert 'HWC' in metadata['layout']['flatten']
  assert 'first maximum in row-major order' in metadata['layout']['switch_ties']
  assert metadata['rules'] == ['deconvnet', 'guided', 'backprop']
  # The spec in the metadata is the model's, layer for layer.
  assert metadata['spec'] == reference.spec_records(reference.SMALL.spec())
  shapes = architecture.shapes(reference.SMALL.spec(), (64, 64, 3))
  for name, shape in shapes.items():
    assert arrays[f'activations/{name}'].shape == (1, *shape)
  occlusion = metadata['occlusion']
  assert arrays['occlusion/prob'].shape == tuple(occlusion['positions'])
  assert (occlusion['patch'], occlusion['stride'], occlusion['fill']) == (16, 16, 0.0)
  assert GOLDEN.stat().st_size < 600_000


def test_cli_mistakes_are_one_line_and_write_nothing(tmp_path, capsys):
  """A bad --images or a missing --out: exit status 2, one line on stderr, no file."""
  out = tmp_path / 'x.npz'
  assert cli_reference.main(['--small', '--images', '0', '--out', str(out)]) == 2
  assert capsys.readouterr().err == 'error: --images must be at least 1, got 0\n'
  assert cli_reference.main(['--small']) == 2
  assert capsys.readouterr().err.startswith('error: --out is required')
  assert cli_reference.main(['--small', '--out', str(out), 'extra']) == 2
  assert 'unexpected arguments' in capsys.readouterr().err
  assert not out.exists()


@pytest.mark.slow
def test_full_file_is_under_20_mb_and_passes_the_torch_check(tmp_path):
  """The file other frameworks check against: full ZFNet conv geometry at 224x224."""
  path = tmp_path / 'ref.npz'
  subprocess.run([sys.executable, '-m', 'zfjax.reference', '--out', str(path)], cwd=ROOT,
                 check=True, capture_output=True, text=True)
  assert path.stat().st_size < 20 * 2**20
  arrays, _ = reference.load(path)
  assert arrays['activations/conv1'].shape[1:] == (110, 110, 96)
  assert arrays['deconv/deconvnet/conv5'].shape[-3:] == (224, 224, 3)
  result = run_checker(path)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'PASS' in result.stdout.splitlines()[-1]
