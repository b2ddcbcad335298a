"""Tests of zfjax.training, zfjax.parallel and zfjax.checkpoints (in-process, plus one
subprocess with four simulated devices). Command-line runs are in test_train_cli.py."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import digits
from zfjax import checkpoints
from zfjax import input_pipeline
from zfjax import parallel
from zfjax import training

REPO = pathlib.Path(__file__).resolve().parents[1]


def smoke_config(**overrides):
  config = digits.get_config('smoke')
  config.update(overrides)
  return config


def build(config, mesh=None):
  """(mesh, model, optimizer, state, train_step) for a config."""
  mesh = mesh or parallel.create_mesh()
  info = input_pipeline.dataset_info(config)
  model = training.create_model(config, info.num_classes)
  optimizer = training.create_optimizer(config)
  state = training.create_train_state(config, model, optimizer, mesh, info.image_shape)
  return mesh, model, optimizer, state, training.make_train_step(config, model, optimizer, mesh)


# ----------------------------------------------------------------------------- filters


def test_renormalize_filters_caps_rms_and_keeps_small_filters_exactly():
  big = np.full((3, 3, 2, 1), 0.5, np.float32)                 # RMS 0.5
  small = np.full((3, 3, 2, 1), 0.05, np.float32)              # RMS 0.05
  mixed = np.concatenate([big, small], axis=-1)
  params = {'conv1': {'kernel': jnp.asarray(mixed), 'bias': jnp.full((2,), 7.0)},
            'fc6': {'kernel': jnp.full((4, 3), 9.0), 'bias': jnp.zeros(3)}}
  out = training.renormalize_filters(params, 0.1)
  np.testing.assert_allclose(out['conv1']['kernel'][..., 0], 0.1, rtol=1e-6)
  np.testing.assert_array_equal(out['conv1']['kernel'][..., 1], small[..., 0])
  np.testing.assert_array_equal(out['conv1']['bias'], params['conv1']['bias'])
  np.testing.assert_array_equal(out['fc6']['kernel'], params['fc6']['kernel'])  # dense: no
  rms = training.filter_rms(out)['conv1']
  np.testing.assert_allclose(rms, [0.1, 0.05], rtol=1e-6)
  assert training.renormalize_filters(params, 0.0) is params


def test_every_conv_filter_rms_at_most_radius_after_a_step():
  config = smoke_config(init='he_normal', learning_rate=0.5, conv_features=(4, 4, 4, 4, 4))
  mesh, _, _, state, train_step = build(config)
  batch = next(input_pipeline.train_batches(config))
  state, _ = train_step(state, parallel.global_batch(batch, mesh))
  for name, rms in training.filter_rms(state.params).items():
    assert float(rms.max()) <= 0.1 * (1 + 1e-5), name


# ----------------------------------------------------------------------------- training


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


def test_bfloat16_step_keeps_float32_params():
  config = smoke_config(dtype='bfloat16')
  mesh, _, _, state, train_step = build(config)
  state, metrics = train_step(state, parallel.global_batch(
      next(input_pipeline.train_batches(config)), mesh))
  assert np.isfinite(float(metrics['loss']))
  assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {jnp.dtype('float32')}


def test_weight_decay_applies_to_kernels_only():
  config = smoke_config(weight_decay=0.5, momentum=0.0, learning_rate=1.0)
  optimizer = training.create_optimizer(config)
  params = {'conv1': {'kernel': jnp.ones((1, 1, 1, 1)), 'bias': jnp.ones(1)}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = optimizer.update(zeros, optimizer.init(params), params)
  assert float(updates['conv1']['kernel'].squeeze()) == pytest.approx(-0.5)
  assert float(updates['conv1']['bias'][0]) == 0.0


def test_learning_rate_divided_after_patience_evaluations_without_improvement():
  config = smoke_config(lr_patience=2, lr_decay_factor=10.0)
  plateau = training.plateau_rule(config).init({})
  scales = []
  for error in (0.5, 0.4, 0.45, 0.41, 0.42, 0.3):
    plateau = training.update_plateau(config, plateau, error)
    scales.append(float(plateau.scale))
  np.testing.assert_allclose(scales, [1, 1, 1, 0.1, 0.1, 0.1], rtol=1e-6)
  fixed = training.update_plateau(smoke_config(lr_patience=0), plateau, 0.9)
  assert fixed is plateau


def test_dropout_differs_between_examples_and_steps():
  keys = training._dropout_keys(0, 3, 0, 4)  # pylint: disable=protected-access
  more = training._dropout_keys(0, 3, 2, 2)  # pylint: disable=protected-access
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
  counts = training.count_correct(probs, jnp.array([1, 2, 0]), jnp.array([True, True, False]))
  assert float(counts['top1_correct']) == 1 and float(counts['count']) == 2
  assert float(counts['top5_correct']) == 2  # three classes: everything is in the top 5


def test_evaluate_ten_crops_and_ensemble():
  config = smoke_config()
  mesh, model, optimizer, state, _ = build(config)
  other = training.create_train_state(smoke_config(seed=1), model, optimizer, mesh,
                                      (32, 32, 3))
  batch = _eval_batches(crops=10)
  members = [(model, state.params), (model, other.params)]
  result = training.evaluate_ensemble(members, [batch], mesh)
  probs = np.mean([training.probabilities(m, p, batch['image']) for m, p in members], axis=0)
  expected = np.argmax(probs, -1) == batch['label']
  assert result['count'] == 8
  assert result['top1_error'] == pytest.approx(1 - expected[:8].mean())
  single = training.evaluate_ensemble(members[:1], [batch], mesh)
  same = training.evaluate_ensemble(members[:1] * 2, [batch], mesh)
  assert single['loss'] == pytest.approx(same['loss'], rel=1e-5)
  # Ten identical crops score as the center crop alone.
  center = dict(batch, image=batch['image'][:, 0])
  tiled = dict(batch, image=np.repeat(batch['image'][:, :1], 10, axis=1))
  a = training.evaluate_ensemble(members[:1], [center], mesh)
  b = training.evaluate_ensemble(members[:1], [tiled], mesh)
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
    ({'remove_layers': ('conv9',)}, r"^config.model 'small_zfnet' .*unknown layer\(s\) \['conv9'\]"),
    ({'dataset': 'mnistt'}, r"^config.dataset: unknown dataset 'mnistt': neither 'digits' nor a "
                            r"TFDS dataset \(did you mean 'mnist'\?\)$"),
])
def test_bad_configs_fail_before_work(tmp_path, overrides, message, monkeypatch):
  monkeypatch.setattr(training, 'make_train_step',
                      lambda *args, **kwargs: pytest.fail('a bad config reached compilation'))
  with pytest.raises(training.ConfigError, match=message):
    training.train_and_evaluate(smoke_config(**overrides), tmp_path)
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
    with pytest.raises(training.ConfigError, match=f'^config.{field} must be {message}$'):
      training.train_and_evaluate(bad, tmp_path)
  assert not (tmp_path / 'checkpoints').exists()


def test_total_and_epoch_steps():
  config = smoke_config(num_train_steps=-1, num_epochs=2, batch_size=100)
  info = input_pipeline.DatasetInfo(10, 1000, 100, (32, 32, 3))
  assert training.total_steps(config, info) == 20
  assert training.epoch_steps(config, info, (1, 2)) == (10, 20)


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

FOUR_DEVICES = textwrap.dedent('''
    import json, sys, tempfile
    import jax, numpy as np
    sys.path.insert(0, {repo!r})
    from configs import digits
    from zfjax import checkpoints, input_pipeline, parallel, training
    assert jax.device_count() == 4
    config = digits.get_config('smoke')
    config.batch_size = 8
    info = input_pipeline.dataset_info(config)
    model = training.create_model(config, info.num_classes)
    optimizer = training.create_optimizer(config)
    batches = [next(input_pipeline.train_batches(config, start_step=s)) for s in range(3)]

    def train(mesh):
      state = training.create_train_state(config, model, optimizer, mesh, info.image_shape)
      step = training.make_train_step(config, model, optimizer, mesh)
      losses = []
      for batch in batches:
        state, metrics = step(state, parallel.global_batch(batch, mesh))
        losses.append(float(metrics['loss']))
      return state, losses

    one, losses1 = train(parallel.create_mesh(jax.devices()[:1]))
    four, losses4 = train(parallel.create_mesh())
    params_diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
                      zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)))

    # Save from one device, restore onto four.
    directory = tempfile.mkdtemp()
    manager = checkpoints.create_manager(directory)
    checkpoints.save(manager, 3, one)
    manager.wait_until_finished()
    mesh4 = parallel.create_mesh()
    target = training.abstract_train_state(config, model, optimizer, mesh4, info.image_shape)
    restored = checkpoints.restore(manager, target)
    manager.close()
    kernel = restored.params['conv1']['kernel']
    restore_diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
                       zip(jax.tree.leaves(one), jax.tree.leaves(restored)))
    print(json.dumps({{'losses1': losses1, 'losses4': losses4, 'params_diff': params_diff,
                      'restore_diff': restore_diff,
                      'restored_devices': len(kernel.sharding.device_set),
                      'replicated': kernel.sharding.is_fully_replicated,
                      'tensorflow_imported': 'tensorflow' in sys.modules}}))
''')


def test_four_devices_match_one_and_restore_across_device_counts():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', FOUR_DEVICES.format(repo=str(REPO))],
                        capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  np.testing.assert_allclose(result['losses4'], result['losses1'], rtol=1e-5)
  assert result['params_diff'] < 1e-5
  assert result['restore_diff'] == 0.0
  assert result['restored_devices'] == 4 and result['replicated']
  assert not result['tensorflow_imported']  # the digits path runs where TF is absent
