"""Tests of transfer learning (zfjax.train.transfer and its pieces) and zfjax-transfer.

The split sampler, the metrics, the heads against scikit-learn, frozen layers, features,
the source's mean image, and the protocol end to end on digits, mock Caltech-101 and VOC,
and an image folder.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zfjax.configs import transfer_digits
from zfjax import extras, input_pipeline, models, preprocess, train
from zfjax.cli import transfer as transfer_cli
from zfjax.train import finetune, probes, steps, transfer, transfer_data

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def source_dir(tmp_path_factory):
  """A tiny digits net trained for a few steps on the digits 0-4 only."""
  workdir = tmp_path_factory.mktemp('source')
  train.train_and_evaluate(transfer_digits.get_config('smoke').source_config, workdir)
  return workdir


@pytest.fixture(scope='module')
def source(source_dir):
  return transfer.load_source(source_dir)


def smoke_config(**fields):
  config = transfer_digits.get_config('smoke')
  config.update(fields)
  return config


# ----------------------------------------------------------------------------- splits


def test_sample_split_draws_n_per_class_disjoint_and_seeded():
  labels = np.repeat(np.arange(4), [10, 7, 30, 3])
  train, test = transfer_data.sample_split(labels, 2, 5, seed=(0, 2, 1))
  assert np.bincount(labels[train]).tolist() == [2, 2, 2, 2]
  assert np.bincount(labels[test]).tolist() == [5, 5, 5, 1]  # class 3: only 1 left
  assert not set(train) & set(test)
  again = transfer_data.sample_split(labels, 2, 5, seed=(0, 2, 1))
  assert all(np.array_equal(a, b) for a, b in zip((train, test), again))
  other = transfer_data.sample_split(labels, 2, 5, seed=(0, 2, 2))
  assert not np.array_equal(train, other[0])
  _, rest = transfer_data.sample_split(labels, 2, None, seed=0)
  assert len(rest) == len(labels) - 8


def test_sample_split_refuses_a_class_without_test_images():
  with pytest.raises(transfer.TransferError, match='class 1 has 2 images'):
    transfer_data.sample_split(np.array([0, 0, 0, 1, 1]), 2, None, seed=0)


# ----------------------------------------------------------------------------- metrics


def test_mean_per_class_accuracy_weights_classes_equally():
  labels = np.array([0, 0, 0, 0, 1])
  predictions = np.array([0, 0, 0, 0, 0])
  assert probes.mean_per_class_accuracy(predictions, labels) == pytest.approx(0.5)
  assert probes.mean_per_class_accuracy(labels, labels) == 1.0


def test_average_precision_by_hand():
  scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.3, 0.2], [0.1, 0.9]])
  targets = np.array([[1, 0], [0, 0], [1, 0], [0, 1]])
  ap = probes.average_precision(scores, targets)
  # class 0 ranked: hit, miss, hit -> (1/1 + 2/3) / 2; class 1: its positive ranks first.
  np.testing.assert_allclose(ap, [(1 + 2 / 3) / 2, 1.0])
  assert np.isnan(probes.average_precision(scores, np.zeros((4, 2)))).all()


# ----------------------------------------------------------------------------- heads


def test_fit_softmax_equals_scikit_learn_logistic_regression():
  from sklearn import linear_model
  rng = np.random.default_rng(0)
  x = rng.normal(size=(90, 6)).astype(np.float32)
  y = np.argmax(x[:, :3] + 0.5 * rng.normal(size=(90, 3)), axis=1)
  l2 = 0.01
  head = probes.fit_softmax(x, y, 3, l2=l2, steps=200)
  # mean CE + l2 |W|^2  ==  (C * sum CE + |W|^2 / 2) / (C N) with C = 1 / (2 l2 N).
  reference = linear_model.LogisticRegression(C=1 / (2 * l2 * len(y)), tol=1e-10,
                                              max_iter=10_000).fit(x, y)
  ours = jax.nn.softmax(probes.softmax_scores(head, x))
  np.testing.assert_allclose(ours, reference.predict_proba(x), atol=2e-4)
  np.testing.assert_allclose(head['kernel'], reference.coef_.T - reference.coef_.T.mean(1,
                             keepdims=True), atol=2e-3)


def test_svm_probe_scores_every_class():
  rng = np.random.default_rng(1)
  x = np.concatenate([rng.normal(size=(20, 4)) + 4 * np.eye(4)[c] for c in range(3)])
  y = np.repeat(np.arange(3), 20)
  scores = probes.probe(x[::2], y[::2], x[1::2], 'svm', 3, smoke_config())
  assert scores.shape == (30, 3)
  assert probes.mean_per_class_accuracy(np.argmax(scores, 1), y[1::2]) == 1.0


# ----------------------------------------------------------------------------- networks


@pytest.mark.slow  # the full tier (training a head on real digits)
def test_frozen_layers_stay_bitwise_and_the_head_learns_real_digits(source):
  images, labels = input_pipeline.digits_pool((5, 6, 7, 8, 9), source.resize_size)
  data = transfer_data.TransferData('digits', input_pipeline.center_crop_batch(images, 32), labels,
                               tuple('56789'), source.input_mean)
  model, params = finetune.new_head_params(source, 5, seed=0, pretrained=True)
  frozen = [name for name in params if name != 'fc8']
  before = jax.device_get(params)
  inputs = data.model_input(np.arange(100))

  def loss(p):  # inference-mode loss on the training images
    logits = model.apply({'params': p}, inputs)
    return float(jnp.mean(steps.cross_entropy(logits, labels[:100])))

  trained, losses = finetune.train_network(model, params, inputs, labels[:100], steps=30,
                                           batch_size=32, learning_rate=0.1, freeze=frozen)
  for name in frozen:
    for leaf in ('kernel', 'bias'):
      assert np.array_equal(np.asarray(trained[name][leaf]), before[name][leaf]), name
  assert not np.array_equal(np.asarray(trained['fc8']['kernel']), before['fc8']['kernel'])
  assert len(losses) == 30
  assert loss(trained) < loss(params) - 0.1
  with pytest.raises(transfer.TransferError, match='unknown layer'):
    finetune.train_network(model, params, data.model_input([0]), labels[:1], steps=1,
                           batch_size=1, learning_rate=0.1, freeze=('conv9',))


def test_new_head_keeps_the_source_layers_or_starts_afresh(source):
  _, pretrained = finetune.new_head_params(source, 7, seed=0, pretrained=True)
  _, scratch = finetune.new_head_params(source, 7, seed=0, pretrained=False)
  assert pretrained['fc8']['kernel'].shape == (16, 7)
  assert np.array_equal(pretrained['conv3']['kernel'], source.params['conv3']['kernel'])
  assert not np.array_equal(scratch['conv3']['kernel'], source.params['conv3']['kernel'])


# ----------------------------------------------------------------------------- features


def test_pooled_features_average_grid_cells():
  x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
  out = probes.pooled(x, 2)
  expected = np.asarray(x).reshape(2, 2, 2, 2, 2, 3).mean(axis=(2, 4)).reshape(2, -1)
  np.testing.assert_allclose(out, expected)
  assert probes.pooled(jnp.ones((2, 5)), 2).shape == (2, 5)


def test_extract_features_equal_one_big_forward_pass(source):
  images, labels = input_pipeline.digits_pool((5, 6), source.resize_size)
  data = transfer_data.TransferData('d', input_pipeline.center_crop_batch(images[:23], 32),
                               labels[:23], ('5', '6'), source.input_mean)
  features = probes.extract_features(source, data, ('conv2', 'fc7'), grid=2, batch_size=8)
  direct = models.activations(source.model, {'params': source.params},
                              data.model_input(np.arange(23)), ('conv2', 'fc7'))
  np.testing.assert_allclose(features['fc7'], direct['fc7'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(features['conv2'], probes.pooled(direct['conv2'], 2),
                             rtol=1e-5, atol=1e-6)
  assert features['conv2'].shape == (23, 2 * 2 * 8)


# ----------------------------------------------------------------------------- protocol


@pytest.mark.slow  # about 20 s: every method and probe, two splits
def test_digits_protocol_end_to_end_and_feature_cache(source_dir, tmp_path):
  config = smoke_config(source=str(source_dir))
  result = transfer.run(config, tmp_path)
  assert json.loads((tmp_path / 'transfer.json').read_text()) == result
  assert result['dataset'] == 'digits5-9' and result['metric'] == 'mean_per_class_accuracy'
  assert result['num_classes'] == 5
  kinds = {(r['method'], r['features'], r['classifier'], r['train_per_class'])
           for r in result['rows']}
  for n in (1, 5):
    assert {('frozen', 'fc7', 'softmax', n), ('frozen', 'conv1', 'svm', n),
            ('frozen', 'fc7', 'svm', n), ('finetune', None, 'softmax', n),
            ('scratch', None, 'softmax', n)} <= kinds
  for row in result['rows']:
    assert len(row['splits']) == 2 and 0 <= row['mean'] <= 1
    assert row['mean'] == pytest.approx(np.mean(row['splits']))
  assert (tmp_path / 'features.npz').is_file()
  stamp = (tmp_path / 'features.npz').stat().st_mtime_ns
  again = transfer.run(smoke_config(source=str(source_dir), methods=('frozen',)), tmp_path)
  assert (tmp_path / 'features.npz').stat().st_mtime_ns == stamp  # read from the cache
  frozen = [r for r in result['rows'] if r['method'] == 'frozen']
  assert again['rows'] == frozen


def test_config_errors_name_the_field(source_dir, tmp_path):
  cases = [({'methods': ('frozen', 'distill')}, 'unknown method'),
           ({'probe_classifiers': ('knn',)}, 'unknown classifier'),
           ({'num_splits': 0}, r'^config.num_splits must be at least 1, got 0$'),
           ({'train_per_class': (0,)}, 'train_per_class'),
           ({'network_steps': -5}, r'^config.network_steps must be positive, got -5$'),
           ({'svm_c': 0.0}, r'^config.svm_c must be positive, got 0.0$'),
           ({'momentum': 1.0}, r'^config.momentum must be in \[0, 1\), got 1.0$'),
           ({'test_per_class': -1}, r'^config.test_per_class must be zero'),
           ({'probe_layers': ('conv9',)}, 'conv9')]
  for fields, message in cases:
    with pytest.raises(transfer.TransferError, match=message):
      transfer.run(smoke_config(source=str(source_dir), **fields), tmp_path)
  with pytest.raises(FileNotFoundError, match='missing does not exist'):
    transfer.run(smoke_config(source=str(tmp_path / 'missing')), tmp_path)


def test_cli_reports_a_bad_source_in_one_line(tmp_path, capsys):
  status = transfer_cli.main(['--config', 'configs/transfer_digits.py:smoke',
                              '--workdir', str(tmp_path), f'--config.source={tmp_path}/none'])
  assert status == 2
  err = capsys.readouterr().err
  assert err == f'error: {tmp_path}/none does not exist\n'
  status = transfer_cli.main(['--config', 'configs/transfer_digits.py:smoke',
                              '--workdir', str(tmp_path), '--config.num_splitz=2'])
  assert status == 2
  assert capsys.readouterr().err.strip() == (
      'error: the config has no field \'num_splitz\' (did you mean "num_splits" instead of '
      '"num_splitz"?); --config.NAME=VALUE sets existing fields only')


@pytest.mark.slow  # a subprocess through the shim; the CLI itself runs in-process above
def test_python_m_zfjax_transfer_runs_the_program(tmp_path):
  """The shim zfjax/transfer.py keeps the README's `python -m zfjax.transfer` working."""
  proc = subprocess.run([sys.executable, '-m', 'zfjax.transfer', '--config',
                         'configs/transfer_digits.py:smoke', '--workdir', str(tmp_path),
                         '--config.num_splits=0'], cwd=REPO, text=True, capture_output=True,
                        timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      'error: config.num_splits must be at least 1, got 0']


# ----------------------------------------------------------------------------- source


def test_source_mean_image_choices(source_dir, tmp_path, monkeypatch):
  """'' is the source dataset's own mean image, strictly; the others set it."""
  own = transfer.load_source(source_dir)
  expected = input_pipeline.mean_image(own.config)
  np.testing.assert_array_equal(own.mean, expected)
  assert own.normalization == preprocess.PAPER and own.mean.shape == (36, 36, 3)
  channels = transfer.load_source(source_dir, source_mean='imagenet_channels')
  np.testing.assert_array_equal(channels.mean[3, 5], np.float32(preprocess.IMAGENET_MEAN_255))
  path = tmp_path / 'mean.npy'
  np.save(path, np.full((36, 36, 3), 7.0, np.float32))
  assert (transfer.load_source(source_dir, source_mean=str(path)).mean == 7.0).all()
  np.save(path, np.zeros((8, 8, 3), np.float32))
  with pytest.raises(transfer.TransferError, match=r'has shape \(8, 8, 3\)'):
    transfer.load_source(source_dir, source_mean=str(path))

  def unavailable(config):
    raise input_pipeline.DatasetUnavailableError('the files are not here\nsecond line')

  monkeypatch.setattr(input_pipeline, 'mean_image', unavailable)
  with pytest.raises(transfer.TransferError, match=(
      r"^the mean image of the source's dataset 'digits' is not available here "
      r'\(DatasetUnavailableError: the files are not here\); set '
      r'--config.source_mean=imagenet_channels or to a .npy file of the mean image$')):
    transfer.load_source(source_dir)
  assert (transfer.load_source(source_dir, source_mean='imagenet_channels').mean > 100).all()


def test_imagenet_normalized_sources_are_fed_as_torchvision_feeds_them():
  images = np.full((2, 4, 4, 3), 255, np.uint8)
  data = transfer_data.TransferData('d', images, np.array([0, 1]), ('a', 'b'),
                                    np.zeros((4, 4, 3), np.float32),
                                    normalization=preprocess.IMAGENET)
  expected = (1 - np.float32(preprocess.IMAGENET_MEAN)) / np.float32(preprocess.IMAGENET_STD)
  np.testing.assert_allclose(data.model_input([1])[0, 2, 3], expected, rtol=1e-6)


def test_the_svm_without_scikit_learn_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, 'sklearn.svm', None)  # `import sklearn.svm` now fails
  with pytest.raises(extras.MissingExtraError, match=r'pip install "zfjax\[train\]"'):
    probes.fit_svm(np.zeros((4, 2)), np.array([0, 1, 0, 1]))


def test_image_folder_with_an_excluded_class(source, tmp_path):
  from PIL import Image
  rng = np.random.default_rng(0)
  root = tmp_path / '256_ObjectCategories'
  for c, name in enumerate(('001.ak47', '002.bat', '257.clutter')):
    (root / name).mkdir(parents=True)
    for i in range(3 + c):
      size = (int(rng.integers(20, 60)), int(rng.integers(20, 60)))
      pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
      Image.fromarray(pixels if i else pixels[..., 0]).save(root / name / f'{i}.jpg')
  config = smoke_config(dataset='folder', folder=str(root), dataset_name='caltech256',
                        exclude_classes=('257.clutter',))
  data = transfer_data.load_dataset(config, source)
  assert data.name == 'caltech256' and data.class_names == ('001.ak47', '002.bat')
  assert data.images.shape == (7, 32, 32, 3) and data.images.dtype == np.uint8
  assert np.bincount(data.labels).tolist() == [3, 4]
  with pytest.raises(input_pipeline.DatasetUnavailableError, match='256_ObjectCategories'):
    transfer_data.load_dataset(smoke_config(dataset='folder', folder=str(tmp_path / 'nope')),
                               source)


def fake_voc(self, split, decoders=None, read_config=None, **kwargs):
  """A stand-in for voc/2012's reader (mock_data cannot generate its 'objects').

  'train' has 40 encoded random images, 'validation' 30; image i carries labels i % 20
  and (3 i + 1) % 20.
  """
  del self, decoders, read_config, kwargs
  import tensorflow as tf
  count = {'train': 40, 'validation': 30}[split]

  def generate():
    rng = np.random.default_rng(count)
    for i in range(count):
      image = rng.integers(0, 256, size=(20 + i, 30, 3), dtype=np.uint8)
      yield {'image': tf.io.encode_jpeg(image).numpy(),
             'labels': np.unique([i % 20, (3 * i + 1) % 20]).astype(np.int64)}

  return tf.data.Dataset.from_generator(generate, output_signature={
      'image': tf.TensorSpec((), tf.string), 'labels': tf.TensorSpec((None,), tf.int64)})


@pytest.mark.slow  # full tier (TFDS's mock data: test_train_imagenet_mock in the default one)
def test_mock_caltech101_and_voc(source_dir, tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  source = transfer.load_source(source_dir)
  with tfds.testing.mock_data(num_examples=300):
    config = smoke_config(dataset='caltech101', data_dir=str(tmp_path / 'data'))
    data = transfer_data.load_dataset(config, source)
  assert data.images.shape[1:] == (32, 32, 3) and data.images.dtype == np.uint8
  assert len(data.images) == len(data.labels) == 300  # mock_data: 300 for 'train+test'
  assert data.num_classes == 102 and len(data.class_names) == 102
  assert 0 <= data.labels.min() and data.labels.max() < 102
  with tfds.testing.mock_data(as_dataset_fn=fake_voc):
    voc = transfer.run(smoke_config(source=str(source_dir), dataset='voc/2012',
                                    methods=('frozen',), probe_layers=('fc7',),
                                    data_dir=str(tmp_path / 'data')), tmp_path / 'voc')
  assert voc['dataset'] == 'voc2012' and voc['metric'] == 'mean_ap'
  assert voc['num_images'] == 70 and voc['num_classes'] == 20
  assert voc['protocol']['num_splits'] == 1 and voc['protocol']['train_per_class'] is None
  (row,) = voc['rows']  # no SVM on label sets
  assert (row['method'], row['features'], row['classifier']) == ('frozen', 'fc7', 'softmax')
  assert len(row['per_class_ap']) == 20 and 0 < row['mean'] <= 1
  assert row['mean'] == pytest.approx(np.mean(list(row['per_class_ap'].values())))
