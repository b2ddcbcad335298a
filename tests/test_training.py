"""Tests of zfjax.train, zfjax.parallel and zfjax.checkpoints.

In-process, plus one subprocess with four simulated devices. Command-line runs are in
test_train_cli.py.

Tiers. The default tier keeps data-parallel equality (one device against four, on the
real-width digits net with dropout, step by step) and every check that compiles little.
Full tier only (`--full`; marked slow): 60 steps of training whose loss must fall well
below its start (a longer run than the rest together; the default tier's four-device test
sees the loss fall over its first steps), and the misspelt TFDS dataset, whose
suggestion loads TensorFlow Datasets' list of names.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zfjax.configs import digits
from zfjax import checkpoints
from zfjax import input_pipeline
from zfjax import parallel
from zfjax import configs
from zfjax import extras
from zfjax import models
from zfjax import train
from zfjax.train import fields
from zfjax.train import logs
from zfjax.train import steps
from zfjax.train import train_state

REPO = pathlib.Path(__file__).resolve().parents[1]


def smoke_config(**overrides):
  config = digits.get_config('smoke')
  config.update(overrides)
  return config


def build(config, mesh=None):
  """(mesh, model, optimizer, state, train_step) for a config."""
  mesh = mesh or parallel.create_mesh()
  info = input_pipeline.dataset_info(config)
  model = models.from_config(config, info.num_classes)
  optimizer = train_state.create_optimizer(config)
  state = train_state.create_train_state(config, model, optimizer, mesh, info.image_shape)
  return mesh, model, optimizer, state, steps.make_train_step(config, model, optimizer, mesh)


# ----------------------------------------------------------------------------- filters


def test_renormalize_filters_caps_rms_and_keeps_small_filters_exactly():
  big = np.full((3, 3, 2, 1), 0.5, np.float32)                 # RMS 0.5
  small = np.full((3, 3, 2, 1), 0.05, np.float32)              # RMS 0.05
  mixed = np.concatenate([big, small], axis=-1)
  params = {'conv1': {'kernel': jnp.asarray(mixed), 'bias': jnp.full((2,), 7.0)},
            'fc6': {'kernel': jnp.full((4, 3), 9.0), 'bias': jnp.zeros(3)}}
  out = train_state.renormalize_filters(params, 0.1)
  np.testing.assert_allclose(out['conv1']['kernel'][..., 0], 0.1, rtol=1e-6)
  np.testing.assert_array_equal(out['conv1']['kernel'][..., 1], small[..., 0])
  np.testing.assert_array_equal(out['conv1']['bias'], params['conv1']['bias'])
  np.testing.assert_array_equal(out['fc6']['kernel'], params['fc6']['kernel'])  # dense: no
  rms = train_state.filter_rms_per_layer(out)['conv1']
  np.testing.assert_allclose(rms, [0.1, 0.05], rtol=1e-6)
  assert train_state.renormalize_filters(params, 0.0) is params


@pytest.mark.slow  # float32 steps and filter clipping run in the default tier
def test_a_bfloat16_step_keeps_float32_params_and_caps_every_filter_rms():
  """One bfloat16 step keeps float32 params and caps every filter's RMS at the radius.

  One compilation for two checks: computed in bfloat16, the params stay float32; with
  He-normal filters (RMS 0.19-0.30) and learning rate 0.5, renormalization brings every
  conv filter's RMS down to the radius, 0.1.
  """
  config = smoke_config(dtype='bfloat16', init='he_normal', learning_rate=0.5,
                        conv_features=(4, 4, 4, 4, 4))
  mesh, _, _, state, train_step = build(config)
  batch = next(input_pipeline.train_batches(config))
  state, metrics = train_step(state, parallel.global_batch(batch, mesh))
  assert np.isfinite(float(metrics['loss']))
  assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {jnp.dtype('float32')}
  rms = train_state.filter_rms_per_layer(state.params)
  for name, values in rms.items():
    assert float(values.max()) <= 0.1 * (1 + 1e-5), name
  assert max(float(values.max()) for values in rms.values()) >= 0.1 * (1 - 1e-5)  # capped


# ----------------------------------------------------------------------------- training


@pytest.mark.slow
def test_loss_falls_on_digits():
  config = smoke_config(conv_features=(16, 32, 32, 32, 32), fc_features=(64, 64),
                        batch_size=32, dropout=0.0, learning_rate=1e-3)
  mesh, _, _, state, train_step = build(config)
  batches = input_pipeline.train_batches(config)
  losses = []
  for _ in range(60):
    state, metrics = train_step(state, parallel.global_batch(next(batches), mesh))
    losses.append(float(metrics['loss']))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5]), losses
  assert int(state.step) == 60


def test_weight_decay_applies_to_kernels_only():
  config = smoke_config(weight_decay=0.5, momentum=0.0, learning_rate=1.0)
  optimizer = train_state.create_optimizer(config)
  params = {'conv1': {'kernel': jnp.ones((1, 1, 1, 1)), 'bias': jnp.ones(1)}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = optimizer.update(zeros, optimizer.init(params), params)
  assert float(updates['conv1']['kernel'].squeeze()) == pytest.approx(-0.5)
  assert float(updates['conv1']['bias'][0]) == 0.0


def test_learning_rate_divided_after_patience_evaluations_without_improvement():
  config = smoke_config(lr_patience=2, lr_decay_factor=10.0)
  plateau = train_state.plateau_rule(config).init({})
  scales = []
  for error in (0.5, 0.4, 0.45, 0.41, 0.42, 0.3):
    plateau = train_state.update_plateau(config, plateau, error)
    scales.append(float(plateau.scale))
  np.testing.assert_allclose(scales, [1, 1, 1, 0.1, 0.1, 0.1], rtol=1e-6)
  fixed = train_state.update_plateau(smoke_config(lr_patience=0), plateau, 0.9)
  assert fixed is plateau


def test_dropout_differs_between_examples_and_steps():
  keys = steps._dropout_keys(0, 3, 0, 4)  # pylint: disable=protected-access
  more = steps._dropout_keys(0, 3, 2, 2)  # pylint: disable=protected-access
  data = jax.random.key_data
  np.testing.assert_array_equal(data(keys[2:]), data(more))
  assert len({tuple(np.asarray(data(k))) for k in keys}) == 4


# ----------------------------------------------------------------------------- evaluation


def _eval_batches(n=10, classes=3, crops=None, seed=0):
  rng = np.random.default_rng(seed)
  shape = (n, crops, 32, 32, 3) if crops else (n, 32, 32, 3)
  return {'image': rng.normal(0, 50, shape).astype(np.float32),
          'label': rng.integers(0, classes, n).astype(np.int32),
          'mask': np.arange(n) < n - 2}


def test_count_correct_ranks_and_masks():
  probs = jnp.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
  counts = steps.count_correct(probs, jnp.array([1, 2, 0]), jnp.array([True, True, False]))
  assert float(counts['top1_correct']) == 1 and float(counts['count']) == 2
  assert float(counts['top5_correct']) == 2  # three classes: everything is in the top 5


def test_evaluate_ten_crops_and_ensemble():
  config = smoke_config()
  mesh, model, optimizer, state, _ = build(config)
  other = train_state.create_train_state(smoke_config(seed=1), model, optimizer, mesh,
                                      (32, 32, 3))
  batch = _eval_batches(crops=10)
  members = [(model, state.params), (model, other.params)]
  result = steps.evaluate_ensemble(members, [batch], mesh)
  probs = np.mean([steps.probabilities(m, p, batch['image']) for m, p in members], axis=0)
  expected = np.argmax(probs, -1) == batch['label']
  assert result['count'] == 8
  assert result['top1_error'] == pytest.approx(1 - expected[:8].mean())
  single = steps.evaluate_ensemble(members[:1], [batch], mesh)
  same = steps.evaluate_ensemble(members[:1] * 2, [batch], mesh)
  assert single['loss'] == pytest.approx(same['loss'], rel=1e-5)
  # Ten identical crops score as the center crop alone.
  center = dict(batch, image=batch['image'][:, 0])
  tiled = dict(batch, image=np.repeat(batch['image'][:, :1], 10, axis=1))
  a = steps.evaluate_ensemble(members[:1], [center], mesh)
  b = steps.evaluate_ensemble(members[:1], [tiled], mesh)
  assert a['loss'] == pytest.approx(b['loss'], rel=1e-5)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize('overrides, message', [
    ({'batch_size': 0}, r'^config.batch_size must be positive, got 0$'),
    ({'eval_batch_size': -8}, r'^config.eval_batch_size must be positive, got -8$'),
    ({'num_train_steps': 0}, r'^config.num_train_steps must be positive, or -1 to train '),
    ({'num_train_steps': -1, 'num_epochs': -2}, r'^config.num_epochs must be zero or positive'),
    ({'num_train_steps': -1, 'num_epochs': 0}, r'^set num_epochs > 0 or num_train_steps > 0$'),
    ({'checkpoint_every_steps': 0}, r'^config.checkpoint_every_steps must be positive'),
    ({'learning_rate': -0.1}, r'^config.learning_rate must be positive, got -0.1$'),
    ({'momentum': 1.0}, r'^config.momentum must be in \[0, 1\), got 1.0$'),
    ({'dropout': 1.5}, r'^config.dropout must be in \[0, 1\), got 1.5$'),
    ({'weight_decay': -1.0}, r'^config.weight_decay must be zero or positive'),
    ({'lr_decay_factor': 1.0}, r'^config.lr_decay_factor must be above 1, got 1.0$'),
    ({'image_size': 64}, r'^config.image_size \(64\) must not exceed config.resize_size \(36\)'),
    ({'model': 'lenet'}, r"^unknown model 'lenet' \(config.model\); choose one of \["),
    ({'init': 'zeros'}, r"^unknown init 'zeros' \(config.init\)"),
    ({'dtype': 'float8'}, r"^unknown dtype 'float8' \(config.dtype\)"),
    ({'conv_features': (8, 8)}, r'conv_features must list 5 widths \(conv1..conv5\), got \(8, 8\)'),
    ({'fc_features': (16, 0)}, r'fc_features must be positive integers, got \(16, 0\)'),
    ({'remove_layers': ('conv9',)},
     r"^config.model 'small_zfnet' .*unknown layer\(s\) \['conv9'\]"),
    pytest.param({'dataset': 'mnistt'}, r"^config.dataset: unknown dataset 'mnistt': neither "
                 r"'digits' nor a TFDS dataset \(did you mean 'mnist'\?\)$",
                 marks=pytest.mark.slow),  # imports TFDS for its names: seconds
])
def test_bad_configs_fail_before_work(tmp_path, overrides, message, monkeypatch):
  monkeypatch.setattr(steps, 'make_train_step',
                      lambda *args, **kwargs: pytest.fail('a bad config reached compilation'))
  with pytest.raises(configs.ConfigError, match=message):
    train.train_and_evaluate(smoke_config(**overrides), tmp_path)
  assert not (tmp_path / 'checkpoints').exists()


def test_config_values_of_the_wrong_type_name_the_field(tmp_path):
  """A config file (not a flag: config_flags checks those) that sets a wrong type."""
  config = smoke_config()
  config.unlock()
  for field, value, message in (('batch_size', 8.0, 'an integer, got 8.0'),
                                ('learning_rate', '0.1', "a number, got '0.1'"),
                                ('log_every_steps', True, 'an integer, got True')):
    bad = config.copy_and_resolve_references()
    del bad[field]
    bad[field] = value
    with pytest.raises(configs.ConfigError, match=f'^config.{field} must be {message}$'):
      train.train_and_evaluate(bad, tmp_path)
  assert not (tmp_path / 'checkpoints').exists()


def test_total_and_epoch_steps():
  config = smoke_config(num_train_steps=-1, num_epochs=2, batch_size=100)
  info = input_pipeline.DatasetInfo(10, 1000, 100, (32, 32, 3))
  assert fields.total_steps(config, info) == 20
  assert fields.epoch_steps(config, info, (1, 2)) == (10, 20)


# ----------------------------------------------------------------------------- extras


@pytest.mark.slow  # test_install checks the core without the extras in the default tier
def test_the_training_layer_imports_without_its_extras():
  """`import zfjax.train` loads no TensorFlow, TensorBoard or scikit-learn.

  Nor do transfer, ensembles and their programs: each extra is imported where it is used.
  """
  script = ('import sys\n'
            'import zfjax.train, zfjax.train.transfer, zfjax.train.ensemble\n'
            'import zfjax.cli.train, zfjax.cli.transfer, zfjax.cli.ensemble\n'
            'print(sorted(m for m in ("tensorflow", "tensorflow_datasets", "tensorboard", '
            '"sklearn") if m in sys.modules))\n')
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                        cwd=REPO, env=dict(os.environ, JAX_PLATFORMS='cpu'), timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip() == '[]'


def test_metric_writer_without_tensorboard_names_the_extra(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorboard', None)  # `import tensorboard` now fails
  for name in [m for m in sys.modules if m.startswith('tensorboard.')]:
    monkeypatch.delitem(sys.modules, name)
  with pytest.raises(extras.MissingExtraError, match=r'^writing TensorBoard event files '
                     r'needs tensorboard, which is not installed: pip install "zfjax\[train\]"$'):
    logs.MetricWriter(tmp_path, enabled=True)
  logs.MetricWriter(tmp_path, enabled=False).write(1, {'loss': 1.0})  # process > 0: no files
  assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- checkpoints


def test_manager_keeps_latest_best_and_chosen_steps(tmp_path):
  manager = checkpoints.create_manager(tmp_path, keep=2, keep_steps=(2,), async_save=False)
  errors = {1: 0.9, 2: 0.8, 3: 0.3, 4: 0.5, 5: None, 6: 0.6, 7: 0.7}
  for step, error in errors.items():
    metrics = None if error is None else {'top1_error': error}
    checkpoints.save(manager, step, {'w': jnp.full((2,), step, jnp.float32)}, metrics=metrics)
  manager.wait_until_finished()
  assert sorted(manager.all_steps()) == [2, 3, 6, 7]  # chosen, best, latest two
  manager.close()
  assert checkpoints.find_checkpoint(tmp_path, 'best').name == '3'
  assert checkpoints.find_checkpoint(tmp_path).name == '7'


def test_restore_params_and_config(tmp_path):
  config = smoke_config()
  mesh, _, _, state, _ = build(config)
  manager = checkpoints.create_manager(tmp_path / 'checkpoints')
  checkpoints.save(manager, 5, state, config=config)
  manager.wait_until_finished()
  manager.close()
  for path in (tmp_path, tmp_path / 'checkpoints', tmp_path / 'checkpoints' / '5'):
    restored_config, params = checkpoints.restore_params(path)
    assert restored_config.model == 'small_zfnet'
    assert restored_config.conv_features == (8, 8, 8, 8, 8)
    jax.tree.map(np.testing.assert_array_equal, params, state.params)
  with pytest.raises(FileNotFoundError):
    checkpoints.restore_params(tmp_path / 'nothing here')
  del mesh


def test_half_written_checkpoint_is_ignored(tmp_path):
  manager = checkpoints.create_manager(tmp_path, async_save=False)
  checkpoints.save(manager, 3, {'w': jnp.ones(2)})
  manager.close()
  partial = tmp_path / '9.orbax-checkpoint-tmp'
  (partial / 'default').mkdir(parents=True)                  # a save killed midway
  manager = checkpoints.create_manager(tmp_path)
  assert manager.latest_step() == 3
  target = {'w': jax.ShapeDtypeStruct((2,), jnp.float32,
                                      sharding=parallel.replicated(parallel.create_mesh()))}
  np.testing.assert_array_equal(checkpoints.restore(manager, target)['w'], 1.0)
  manager.close()


# ----------------------------------------------------------------------------- devices

# One process with four CPU devices (XLA's flag must be set before JAX starts, hence a
# subprocess): the digits model at its real width (conv 32-64-96-96-64, fc 256-256),
# batch 64, dropout 0.25 on, trained from one initial state on one device and on four.
# Its loss falls fast in the first steps (5.4 -> 2.3: from a poor start to about chance,
# ln 10), each step moving some weight by 0.01 or more. The layouts add in different
# orders, so the runs part by float rounding: measured, the weights agree to 1e-7 through
# step 6, to 3e-5 at step 7, and drift apart about 10x a step after that. The test
# compares the first FOUR_DEVICE_STEPS, each step to 1e-6.
FOUR_DEVICE_STEPS = 5
FOUR_DEVICES = textwrap.dedent('''
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, {repo!r})
    from zfjax.configs import digits
    from zfjax import checkpoints, input_pipeline, models, parallel
    from zfjax.train import steps, train_state
    assert jax.device_count() == 4
    config = digits.get_config()
    info = input_pipeline.dataset_info(config)
    model = models.from_config(config, info.num_classes)
    optimizer = train_state.create_optimizer(config)
    batches = input_pipeline.train_batches(config)
    batches = [next(batches) for _ in range({steps})]
    mesh1, mesh4 = parallel.create_mesh(jax.devices()[:1]), parallel.create_mesh()
    initial = jax.device_get(
        train_state.create_train_state(config, model, optimizer, mesh1, info.image_shape))

    def max_diff(a, b):
      return max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
                 for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    def train(mesh):
      state = jax.device_put(initial, parallel.replicated(mesh))
      step = steps.make_train_step(config, model, optimizer, mesh)
      losses, params = [], []
      for batch in batches:
        state, metrics = step(state, parallel.global_batch(batch, mesh))
        losses.append(float(metrics['loss']))
        params.append(jax.device_get(state.params))
      return state, losses, params

    one, losses1, params1 = train(mesh1)
    four, losses4, params4 = train(mesh4)
    before = [initial.params] + params1[:-1]

    # Save from one device, restore onto four.
    manager = checkpoints.create_manager({directory!r})
    checkpoints.save(manager, {steps}, one)
    manager.wait_until_finished()
    target = train_state.abstract_train_state(config, model, optimizer, mesh4, info.image_shape)
    restored = checkpoints.restore(manager, target)
    manager.close()
    kernel = restored.params['conv1']['kernel']
    print(json.dumps({{
        'dropout': config.dropout,
        'widths': [int(initial.params[name]['kernel'].shape[-1]) for name in
                   ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7')],
        'losses1': losses1, 'losses4': losses4,
        'params_diff': [max_diff(a, b) for a, b in zip(params1, params4)],
        'update': [max_diff(a, b) for a, b in zip(params1, before)],
        'restored_equal': all(  # not max_diff: the plateau's best value is inf, inf - inf nan
            np.array_equal(np.asarray(x), np.asarray(y))
            for x, y in zip(jax.tree.leaves(one), jax.tree.leaves(restored))),
        'restored_devices': len(kernel.sharding.device_set),
        'replicated': kernel.sharding.is_fully_replicated,
        'tensorflow_imported': 'tensorflow' in sys.modules}}))
''')


def test_four_devices_match_one_and_restore_across_device_counts(tmp_path):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  script = FOUR_DEVICES.format(repo=str(REPO), steps=FOUR_DEVICE_STEPS,
                               directory=str(tmp_path / 'checkpoints'))
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                        env=env, cwd=REPO, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  losses1, losses4 = result['losses1'], result['losses4']
  assert result['widths'] == [32, 64, 96, 96, 64, 256, 256] and result['dropout'] > 0
  assert len(losses1) == FOUR_DEVICE_STEPS
  assert losses1[-1] < 0.6 * losses1[0], losses1  # it trains: the comparison means something
  assert min(result['update']) > 1e-3, result['update']  # every step moves the weights
  for step, (a, b, diff) in enumerate(zip(losses1, losses4, result['params_diff']), 1):
    rel = 1e-6 if step <= 3 else 1e-4  # see below: rounding, then a switch, diverge slowly
    assert b == pytest.approx(a, rel=rel, abs=0), f'step {step}: loss {b} on 4 devices, {a} on 1'
    # A sharding mistake (a missing or doubled mean) moves the weights by the learning
    # rate times a gradient, ~1e-3, from the first step on. Float32 rounding differs with
    # the per-device batch (the convolutions' matrix products sum in another order), and
    # once a max pool's near-tie picks another switch the difference grows step by step
    # (seen: 1e-8 at step 2, 1e-6 at step 3, 1e-4 at step 5). So the first three steps
    # are held to 1e-5, the later ones to a tenth of a step's update.
    bound = 1e-5 if step <= 3 else 0.1 * min(result['update'])
    assert diff < bound, f'step {step}: the weights differ by up to {diff}'
  assert result['restored_equal']
  assert result['restored_devices'] == 4 and result['replicated']
  assert not result['tensorflow_imported']  # the digits path runs where TF is absent
