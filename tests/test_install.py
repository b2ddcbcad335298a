"""Installs by need: the core runs without the extras, and a missing extra says which.

- The core (`pip install zfjax`) in a process that cannot import TensorFlow, TFDS,
  TensorBoard, scikit-learn, scikit-image, torch or safetensors (an import hook refuses
  them): the analysis modules, the figures and the command lines' package import, a
  small deconvnet projection runs, and `loading.load` opens a checkpoint written there.
- In that process, asking for the digits or a TFDS dataset (zfjax-train), or importing a
  .pth or .safetensors file (zfjax-interop), exits with status 2 and one line naming the
  extra: `pip install "zfjax[train]"` or `"zfjax[interop]"`.
- pyproject.toml: the requirements split as the README says, and every console script
  names a module and function that exist.
- Full tier: a wheel built from the source holds every subpackage, module and config;
  installed from it (not editable), `python -m zfjax.train` runs from another directory.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / 'pyproject.toml').read_text())
EXTRAS = {'train': ('tensorflow', 'tensorflow_datasets', 'tensorboard', 'sklearn', 'skimage'),
          'interop': ('torch', 'safetensors')}
BLOCKED = EXTRAS['train'] + EXTRAS['interop']

# Run first in every blocked process: the extras' modules become "not installed". The
# path finder is wrapped so that it finds none of them (importlib.util.find_spec gives
# None, as libraries that probe for TensorFlow expect; an import raises
# ModuleNotFoundError), whatever this environment holds.
BLOCKER = textwrap.dedent(f'''\
    import importlib.machinery, sys
    BLOCKED = {BLOCKED!r}

    class HideExtras:
      @staticmethod
      def find_spec(name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
          return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)

      @staticmethod
      def invalidate_caches():
        importlib.machinery.PathFinder.invalidate_caches()

    sys.meta_path[:] = [HideExtras if finder is importlib.machinery.PathFinder else finder
                        for finder in sys.meta_path]

    def assert_none_imported():
      loaded = sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED)
      assert not loaded, f'imported despite the block: {{loaded}}'
    ''')


def run_blocked(code: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
  """Runs `code` in a new Python process whose imports of the extras fail."""
  return subprocess.run([sys.executable, '-c', BLOCKER + textwrap.dedent(code)], cwd=cwd,
                        capture_output=True, text=True, timeout=600, check=False)


def test_the_blocker_refuses_the_extras(tmp_path):
  """The hook works (a test that could not fail would prove nothing)."""
  result = run_blocked('''
      import importlib.util
      assert HideExtras in sys.meta_path
      for name in BLOCKED:
        assert importlib.util.find_spec(name) is None, name
        try:
          __import__(name)
        except ModuleNotFoundError as error:
          assert error.name == name, error
        else:
          raise AssertionError(f'{name} was imported')
      import numpy
      assert_none_imported()
      ''', tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]


def test_the_core_works_without_the_extras(tmp_path):
  """Analyses, figures and a checkpoint of the digits model, with no extra installed."""
  result = run_blocked(f'''
      import numpy as np
      import jax.numpy as jnp
      from zfjax import (architecture, checkpoints, correspondence, deconv, input_pipeline,
                         interop, invariance, loading, models, occlusion, preprocess,
                         reference, topk)
      from zfjax import cli, report
      from zfjax.configs import digits

      config = digits.get_config('smoke')
      shapes = checkpoints.param_shapes(models.spec_from_config(config, 10), (32, 32, 3))
      rng = np.random.default_rng(0)
      params = {{layer: {{name: rng.normal(0, 0.1, s.shape).astype(np.float32)
                          for name, s in pair.items()}} for layer, pair in shapes.items()}}
      interop.write_checkpoint({str(tmp_path / 'work')!r}, params, config)

      net = loading.load({str(tmp_path / 'work')!r})
      assert net.num_classes == 10 and net.step == 0 and net.normalization == 'paper'
      assert net.mean.shape == (36, 36, 3)
      assert any('not available here' in note for note in net.notes), net.notes
      x = net.input(np.linspace(0, 255, 40 * 50 * 3).reshape(40, 50, 3).astype(np.uint8))
      assert x.shape == (32, 32, 3)
      projection = deconv.project(net.model, net.variables, jnp.asarray(x)[None], 'conv2',
                                  jnp.arange(2))
      assert projection.shape == (1, 2, 32, 32, 3) and bool(jnp.isfinite(projection).all())
      assert float(jnp.abs(projection).max()) > 0
      assert_none_imported()
      print('core ok')
      ''', tmp_path)
  assert result.returncode == 0, result.stderr[-5000:]
  assert result.stdout.strip().endswith('core ok')


def assert_names_the_extra(result: subprocess.CompletedProcess, extra: str, what: str,
                           module: str):
  """Exit status 2, no traceback, and one line `error: ...` ending in the pip command."""
  assert result.returncode == 2, result.stderr[-5000:]
  assert 'Traceback' not in result.stderr, result.stderr[-5000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1, result.stderr[-5000:]
  assert errors[0] == result.stderr.strip().splitlines()[-1]
  assert errors[0].startswith(f'error: {what} needs {module}, '), errors[0]
  assert errors[0].endswith(f'which is not installed: pip install "zfjax[{extra}]"'), errors[0]


@pytest.mark.parametrize('config, what, module', [
    ('configs/digits.py:smoke', 'the digits dataset', 'sklearn'),
    ('configs/zfnet.py:smoke', 'reading TFDS datasets', 'tensorflow'),
])
def test_a_dataset_without_the_train_extra_names_it(config, what, module, tmp_path):
  """zfjax-train (from another directory: the packaged config) on the digits or ImageNet."""
  result = run_blocked(f'''
      from zfjax.cli import train
      status = train.main(['--config', {config!r}, '--workdir', {str(tmp_path / 'w')!r}])
      assert_none_imported()
      sys.exit(status)
      ''', tmp_path)
  assert_names_the_extra(result, 'train', what, module)


@pytest.mark.parametrize('name, module', [('zfnet.pth', 'torch'),
                                          ('zfnet.safetensors', 'safetensors')])
def test_weights_without_the_interop_extra_name_it(name, module, tmp_path):
  """python -m zfjax.interop import FILE: torch reads .pth, safetensors the other."""
  (tmp_path / name).write_bytes(b'\x00' * 64)
  result = run_blocked(f'''
      import runpy
      sys.argv = ['zfjax-interop', 'import', {str(tmp_path / name)!r}, '--arch', 'zfnet',
                  '--out', {str(tmp_path / 'out')!r}]
      runpy.run_module('zfjax.interop', run_name='__main__')
      ''', tmp_path)
  assert_names_the_extra(result, 'interop', f'reading {tmp_path / name}', module)
  assert not (tmp_path / 'out').exists()


# ---------------------------------------------------------------------------- pyproject


def requirement_names(path: pathlib.Path) -> set:
  """The distribution names a requirements file lists (lowercase, '-' for '_')."""
  names = set()
  for line in path.read_text().splitlines():
    line = line.split('#')[0].strip()
    if line:
      name = line.split(';')[0]
      for mark in '<>=!~[ ':
        name = name.split(mark)[0]
      names.add(name.lower().replace('_', '-'))
  return names


def test_the_requirements_split_by_need():
  dynamic = PYPROJECT['tool']['setuptools']['dynamic']
  files = {extra: spec['file'] for extra, spec in dynamic['optional-dependencies'].items()}
  assert dynamic['dependencies']['file'] == ['requirements.txt']
  assert files['train'] == ['requirements-train.txt']
  assert files['interop'] == ['requirements-interop.txt']
  assert set(files['test']) == {'requirements-test.txt', 'requirements-train.txt',
                                'requirements-interop.txt'}  # one extra for a developer
  core = requirement_names(ROOT / 'requirements.txt')
  assert {'jax', 'flax', 'optax', 'orbax-checkpoint', 'ml-collections', 'absl-py', 'numpy',
          'pillow', 'matplotlib'} <= core
  heavy = {'tensorflow', 'tensorflow-cpu', 'tensorflow-datasets', 'tensorboard',
           'scikit-learn', 'scikit-image', 'torch', 'safetensors'}
  assert not core & heavy, core & heavy
  train = requirement_names(ROOT / 'requirements-train.txt')
  assert {'tensorflow', 'tensorflow-cpu', 'tensorflow-datasets', 'tensorboard',
          'scikit-learn', 'scikit-image', 'importlib-resources'} <= train
  assert requirement_names(ROOT / 'requirements-interop.txt') == {'torch', 'safetensors'}


def test_console_scripts_name_functions_that_exist():
  """Each [project.scripts] entry imports and is a function (skipping none)."""
  import importlib  # pylint: disable=import-outside-toplevel
  scripts = PYPROJECT['project']['scripts']
  assert set(scripts) == {'zfjax-train', 'zfjax-visualize', 'zfjax-transfer', 'zfjax-ensemble',
                          'zfjax-tables', 'zfjax-interop', 'zfjax-reference'}
  for script, target in scripts.items():
    module_name, _, function = target.partition(':')
    assert module_name.startswith('zfjax.cli.') and function == 'main', script
    module = importlib.import_module(module_name)
    assert callable(getattr(module, function, None)), f'{script}: {target} does not exist'


@pytest.mark.slow
def test_a_wheel_holds_every_subpackage_and_config(tmp_path):
  """`pip wheel` of a copy of the source (no network, no build isolation)."""
  source = tmp_path / 'source'
  ignore = shutil.ignore_patterns('__pycache__', '*.pyc')
  shutil.copytree(ROOT / 'zfjax', source / 'zfjax', ignore=ignore)
  for path in ['pyproject.toml', 'README.md', *ROOT.glob('requirements*.txt')]:
    shutil.copy(ROOT / path, source)
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                  '--no-index', '-q', '-w', str(tmp_path / 'dist'), str(source)],
                 check=True, capture_output=True, text=True, timeout=600)
  wheel, = (tmp_path / 'dist').glob('zfjax-*.whl')
  with zipfile.ZipFile(wheel) as archive:
    names = set(archive.namelist())
    metadata = archive.read(next(n for n in names if n.endswith('.dist-info/METADATA')))
    entry_points = archive.read(next(n for n in names if n.endswith('entry_points.txt')))
  modules = {str(p.relative_to(source)) for p in (source / 'zfjax').rglob('*.py')}
  assert modules <= names, sorted(modules - names)
  packages = {str(p.parent.relative_to(source)) for p in (source / 'zfjax').rglob('__init__.py')}
  assert {'zfjax', 'zfjax/cli', 'zfjax/configs', 'zfjax/train', 'zfjax/report'} <= packages
  assert {'zfjax/configs/digits.py', 'zfjax/configs/zfnet.py',
          'zfjax/configs/ablations.py'} <= names
  requires = [line for line in metadata.decode().splitlines()
              if line.startswith('Requires-Dist:') and 'extra ==' not in line]
  assert requires and not any(name in line for line in requires
                              for name in ('tensorflow', 'torch', 'scikit', 'tensorboard'))
  for script in PYPROJECT['project']['scripts']:
    assert f'{script} = ' in entry_points.decode()
  installed = tmp_path / 'installed'  # a non-editable install of the wheel
  subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-index', '-q',
                  '--target', str(installed), str(wheel)],
                 check=True, capture_output=True, text=True, timeout=600)
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  env = {**os.environ, 'PYTHONPATH': str(installed)}
  where = subprocess.run([sys.executable, '-c', 'import zfjax.cli; print(zfjax.cli.__file__)'],
                         cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
  assert where.stdout.startswith(str(installed)), where.stdout  # not the source tree
  run = subprocess.run([sys.executable, '-m', 'zfjax.train', '--config',
                        'configs/digits.py:smoke', '--workdir', str(tmp_path / 'w')],
                       cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600,
                       check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  assert json.loads((tmp_path / 'w' / 'results.json').read_text())['step'] == 4
