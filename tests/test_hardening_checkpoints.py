"""Damaged and foreign checkpoints: every failure is one CheckpointError line.

The line names the checkpoint directory and what is wrong, from `checkpoints.restore`
(training's resume) and `checkpoints.restore_params` (the analyses); `restore_latest`
falls back to the newest step that restores. The states are the digits smoke config's
TrainState (a small_zfnet 8-wide, fc 16) filled with random numbers: nothing is trained,
so this runs in seconds.

Orbax writes a step as <step>/_CHECKPOINT_METADATA (the step's metadata and our config)
and <step>/default/ (_METADATA, the tree of array shapes and dtypes; the arrays in an
OCDBT database whose data files are default/ocdbt.process_0/d/<hash>); the tests delete
or truncate those files.

Tiers: every test runs in the default tier (nothing here trains or compiles much); none is
marked slow.
"""

import logging
import pathlib
import re
import shutil

import jax
import numpy as np
import pytest
from testing_models import load_visualize

from zfjax.configs import digits
from zfjax import checkpoints, models, parallel
from zfjax.train import train_state

REPO = pathlib.Path(__file__).resolve().parents[1]
IMAGE_SHAPE = (32, 32, 3)


def smoke_config(**overrides):
  config = digits.get_config('smoke')
  config.update(overrides)
  return config


def state_shapes(config):
  model = models.from_config(config, 10)
  optimizer = train_state.create_optimizer(config)
  return jax.eval_shape(lambda: train_state.init_train_state(config, model, optimizer,
                                                             IMAGE_SHAPE))


def random_state(shapes, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: np.asarray(rng.standard_normal(s.shape), s.dtype), shapes)


def target(shapes):
  return checkpoints.abstract(shapes, parallel.replicated(parallel.create_mesh()))


@pytest.fixture(scope='module')
def tiny():
  """(config, random TrainState, abstract TrainState) of the smoke config's model."""
  config = smoke_config()
  shapes = state_shapes(config)
  return config, random_state(shapes), target(shapes)


@pytest.fixture(scope='module')
def template(tiny, tmp_path_factory):
  """A workdir with complete checkpoints of steps 2 and 4 (config in their metadata)."""
  config, state, _ = tiny
  workdir = tmp_path_factory.mktemp('template')
  manager = checkpoints.create_manager(workdir / 'checkpoints', async_save=False)
  for step in (2, 4):
    checkpoints.save(manager, step, state.replace(step=np.int32(step)), config=config)
  manager.wait_until_finished()
  manager.close()
  return workdir


@pytest.fixture
def workdir(template, tmp_path):
  """A fresh copy of the template workdir, to damage."""
  return pathlib.Path(shutil.copytree(template, tmp_path / 'work'))


def data_files(step_dir):
  """The array data files of one step (default/ocdbt.process_0/d/*), largest first."""
  files = list((step_dir / 'default').glob('ocdbt.process_*/d/*'))
  assert files, f'no array data files under {step_dir}'
  return sorted(files, key=lambda p: -p.stat().st_size)


def delete_array_file(step_dir):
  data_files(step_dir)[0].unlink()


def truncate_array_file(step_dir):
  with open(data_files(step_dir)[0], 'r+b') as f:
    f.truncate(50)


def delete_array_files(step_dir):
  for path in data_files(step_dir):
    path.unlink()


def truncate_array_files(step_dir):
  for path in data_files(step_dir):
    with open(path, 'r+b') as f:
      f.truncate(50)


def delete_array_metadata(step_dir):
  (step_dir / 'default' / '_METADATA').unlink()


def garble_array_metadata(step_dir):
  (step_dir / 'default' / '_METADATA').write_text('{"tree_metadata": [1, 2')


def delete_arrays(step_dir):
  shutil.rmtree(step_dir / 'default')


UNREADABLE = (r'is damaged: (params|opt_state)/\S+ (\(and \d+ more arrays\) )?cannot be read '
              r'\(.+\); a file under default/ was deleted, truncated or changed$')
DAMAGE = {  # how a step is damaged -> what the message says
    'deleted array files': (delete_array_files, UNREADABLE),
    'truncated array files': (truncate_array_files, UNREADABLE),
    'deleted _METADATA': (delete_array_metadata, r'is incomplete: it has no '
                          r'default/_METADATA \(its list of arrays\)$'),
    'garbled _METADATA': (garble_array_metadata, r'is damaged: _METADATA is not readable JSON'),
    'deleted OCDBT manifest': (lambda d: (d / 'default' / 'manifest.ocdbt').unlink(),
                               r'is damaged: its array store \(default/manifest.ocdbt, '
                               r'default/d/\) lacks all 39 arrays$'),
    'deleted OCDBT index': (lambda d: shutil.rmtree(d / 'default' / 'd'),
                            r'is damaged: its array store \(default/manifest.ocdbt, '
                            r'default/d/\) cannot be read'),
    'deleted default/': (delete_arrays, r'is incomplete: it has no default/ directory'),
}


def assert_one_line(error, directory, pattern):
  message = str(error.value)
  assert '\n' not in message, message
  assert message.startswith(f'checkpoint {directory} '), message
  assert re.search(pattern, message), message


def open_manager(workdir):
  return checkpoints.create_manager(workdir / 'checkpoints', async_save=False)


# ----------------------------------------------------------------------------- damage


@pytest.mark.parametrize('damage', list(DAMAGE))
def test_damaged_checkpoint_is_one_line_naming_it(damage, workdir, tiny):
  tamper, pattern = DAMAGE[damage]
  step_dir = workdir / 'checkpoints' / '4'
  tamper(step_dir)
  manager = open_manager(workdir)
  try:
    with pytest.raises(checkpoints.CheckpointError) as error:
      checkpoints.restore(manager, tiny[2], 4)
    assert_one_line(error, step_dir, pattern)
  finally:
    manager.close()
  with pytest.raises(checkpoints.CheckpointError) as error:
    checkpoints.restore_params(workdir, 4)
  assert_one_line(error, step_dir, pattern)
  # the other step is untouched and still restores
  _, params = checkpoints.restore_params(workdir, 2)
  np.testing.assert_array_equal(params['conv1']['kernel'], tiny[1].params['conv1']['kernel'])


def test_damaged_step_metadata(workdir):
  step_dir = workdir / 'checkpoints' / '4'
  (step_dir / '_CHECKPOINT_METADATA').write_text('garbage')
  with pytest.raises(checkpoints.CheckpointError) as error:
    checkpoints.restore_params(step_dir)
  assert_one_line(error, step_dir, r'is damaged: _CHECKPOINT_METADATA is not readable JSON')
  (step_dir / '_CHECKPOINT_METADATA').unlink()
  with pytest.raises(checkpoints.CheckpointError) as error:
    checkpoints.restore_params(step_dir)
  assert_one_line(error, step_dir, r'is incomplete: it has no _CHECKPOINT_METADATA file')


# --------------------------------------------------------------- another architecture


def test_restore_into_another_architecture_names_the_array(workdir):
  manager = open_manager(workdir)
  step_dir = workdir / 'checkpoints' / '4'
  try:
    narrower = target(state_shapes(smoke_config(conv_features=(4, 8, 8, 8, 8))))
    with pytest.raises(checkpoints.CheckpointError) as error:
      checkpoints.restore(manager, narrower, 4)
    assert str(error.value) == (f'checkpoint {step_dir} does not fit the model: '
                                'params/conv1/bias has shape (8,), the model expects (4,)')
    shallower = target(state_shapes(smoke_config(fc_features=(16,))))  # no fc8
    with pytest.raises(checkpoints.CheckpointError) as error:
      checkpoints.restore(manager, shallower, 4)
    assert_one_line(error, step_dir, r'does not fit the model: it holds .*params/fc8/bias.*'
                    r'which the model lacks')
    deeper = target(state_shapes(smoke_config(fc_features=(16, 16, 16))))  # adds fc9
    with pytest.raises(checkpoints.CheckpointError) as error:
      checkpoints.restore(manager, deeper, 4)
    assert_one_line(error, step_dir, r'does not fit the model: it has no .*fc9')
  finally:
    manager.close()


def test_restore_params_checks_the_config_model(tmp_path, tiny):
  """restore_params refuses params of another width and a config.json of another model.

  Params saved under a config of another width, and a workdir config.json of another
  model: both refused, naming the array.
  """
  _, state, _ = tiny
  other = smoke_config(conv_features=(4, 8, 8, 8, 8))
  manager = checkpoints.create_manager(tmp_path / 'a' / 'checkpoints', async_save=False)
  checkpoints.save(manager, 3, {'params': state.params}, config=other)
  manager.wait_until_finished()
  manager.close()
  with pytest.raises(checkpoints.CheckpointError) as error:
    checkpoints.restore_params(tmp_path / 'a')
  assert str(error.value) == (
      f'checkpoint {tmp_path / "a" / "checkpoints" / "3"} does not fit the model of its '
      'config (small_zfnet): params/conv1/bias has shape (8,), the model expects (4,)')
  # no config in the metadata: the workdir's config.json is the one checked
  manager = checkpoints.create_manager(tmp_path / 'b' / 'checkpoints', async_save=False)
  checkpoints.save(manager, 3, {'params': state.params})
  manager.wait_until_finished()
  manager.close()
  (tmp_path / 'b' / 'config.json').write_text(smoke_config(fc_features=(32, 16)).to_json())
  with pytest.raises(checkpoints.CheckpointError, match=r'params/fc6/bias has shape \(16,\), '
                     r'the model expects \(32,\)'):
    checkpoints.restore_params(tmp_path / 'b')
  (tmp_path / 'b' / 'config.json').write_text('[1, 2]')
  with pytest.raises(checkpoints.CheckpointError, match='its config is list'):
    checkpoints.restore_params(tmp_path / 'b')
  # a checkpoint without params
  manager = checkpoints.create_manager(tmp_path / 'c', async_save=False)
  checkpoints.save(manager, 1, {'w': np.ones(2, np.float32)})
  manager.wait_until_finished()
  manager.close()
  with pytest.raises(checkpoints.CheckpointError, match=r"has no params \(it holds \['w'\]\)"):
    checkpoints.restore_params(tmp_path / 'c')


# ----------------------------------------------------------------------------- resume


def test_restore_latest_falls_back_to_the_previous_step(workdir, tiny, caplog):
  caplog.set_level(logging.WARNING, logger='absl')
  _, state, abstract_state = tiny
  truncate_array_file(workdir / 'checkpoints' / '4')
  manager = open_manager(workdir)
  try:
    step, restored = checkpoints.restore_latest(manager, abstract_state)
    assert step == 2 and int(restored.step) == 2
    jax.tree.map(np.testing.assert_array_equal, restored.params, state.params)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith('skipping the checkpoint of step 4: checkpoint ') and
               'is damaged' in m for m in warnings), warnings
    # the damaged step is kept, renamed out of the way, and training can save it again
    assert (workdir / 'checkpoints' / f'4{checkpoints.UNRESTORABLE}').is_dir()
    assert list(manager.all_steps()) == [2]
    checkpoints.save(manager, 4, restored.replace(step=np.int32(4)))
    manager.wait_until_finished()
    assert sorted(manager.all_steps()) == [2, 4]
  finally:
    manager.close()


def test_restore_latest_when_nothing_restores(workdir, tiny, tmp_path):
  _, _, abstract_state = tiny
  manager = open_manager(workdir)
  try:
    other = target(state_shapes(smoke_config(conv_features=(4, 8, 8, 8, 8))))
    with pytest.raises(checkpoints.CheckpointError) as error:
      checkpoints.restore_latest(manager, other)
    message = str(error.value)
    assert message.startswith(f'no checkpoint in {workdir / "checkpoints"} can be restored: ')
    assert message.count('does not fit the model') == 2 and '\n' not in message
    assert sorted(manager.all_steps()) == [2, 4]  # nothing renamed when nothing restores
  finally:
    manager.close()
  for step in (2, 4):
    delete_array_file(workdir / 'checkpoints' / str(step))
  manager = open_manager(workdir)
  try:
    with pytest.raises(checkpoints.CheckpointError, match=r'/4 is damaged.*; checkpoint '
                       r'\S+/2 is damaged'):
      checkpoints.restore_latest(manager, abstract_state)
  finally:
    manager.close()
  empty = checkpoints.create_manager(tmp_path / 'empty', async_save=False)
  try:
    assert checkpoints.restore_latest(empty, abstract_state) == (0, None)
  finally:
    empty.close()


# -------------------------------------------------------------------------------- CLIs


def test_visualize_and_export_print_one_line(workdir, capsys, tmp_path):
  # every data file: the CLIs restore params only, and which file holds them varies by run
  truncate_array_files(workdir / 'checkpoints' / '4')
  visualize = load_visualize()
  assert visualize.main(['filters', '--workdir', str(workdir), '--out',
                         str(tmp_path / 'figures')]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith(f'error: checkpoint {workdir / "checkpoints" / "4"} is damaged'), err
  assert len(err.splitlines()) == 1, err
  from zfjax.cli import interop as interop_cli  # pylint: disable=import-outside-toplevel
  assert interop_cli.main(['export', str(workdir), '--out',
                           str(tmp_path / 'x.safetensors')]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith(f'error: checkpoint {workdir / "checkpoints" / "4"} is damaged')
