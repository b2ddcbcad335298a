"""The README's promises: its notebook example runs, and CI runs its own commands."""

import pathlib
import re
import subprocess
import tomllib

import jax
import jax.numpy as jnp
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / 'README.md').read_text()


@pytest.mark.slow  # full-size ZFNet, 16 projections: test_deconv* check the same code
def test_notebook_example_runs_as_written():
  example = re.search(r'## Look inside a convnet.*?```python\n(.*?)```', README, re.S).group(1)
  namespace = {'images': 60.0 * jax.random.normal(jax.random.key(0), (1, 224, 224, 3))}
  exec(example, namespace)  # pylint: disable=exec-used
  proj = namespace['proj']
  assert proj.shape == (1, 16, 224, 224, 3) and bool(jnp.isfinite(proj).all())


def test_ci_runs_the_readme_blocks():
  blocks = {}
  for name in ('install', 'run', 'test', 'test-full'):
    out = subprocess.run(
        ['bash', '-c', f'source <(sed -n "/^readme_block()/,/^}}/p" .ci/run); '
                       f'readme_block {name}'],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout
    blocks[name] = out
  # the extras the next blocks need: [train] for the digits run, [test] for the tests
  assert 'pip install -e ".[train,test]"' in blocks['install']
  assert blocks['run'].strip() == 'python train.py --config configs/digits.py --workdir /tmp/zf'
  assert blocks['test'].strip() == 'python -m pytest -q -n 2'
  assert blocks['test-full'].strip() == 'python -m pytest -q -n 2 --full'


def test_the_install_command_names_extras_that_exist():
  """The README's pip install asks for extras pyproject.toml defines, [train] among them."""
  block = re.search(r'<!-- ci:install -->\n```bash\n(.*?)```', README, re.S).group(1)
  named = {extra for group in re.findall(r'pip install -e "\.\[([\w,]+)\]"', block)
           for extra in group.split(',')}
  pyproject = tomllib.loads((ROOT / 'pyproject.toml').read_text())
  defined = set(pyproject['tool']['setuptools']['dynamic']['optional-dependencies'])
  assert {'train', 'test'} <= named <= defined, (named, defined)
