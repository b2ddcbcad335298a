"""Tests of zfjax.input_pipeline: the digits path in NumPy, TFDS under mock_data."""

import itertools
import os
import re
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from zfjax import digits_data, image_batches, tfds_data
from zfjax import input_pipeline as ip

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digits_config(**overrides) -> ml_collections.ConfigDict:
  """A small digits config with every field the pipeline reads."""
  fields = dict(dataset='digits', seed=0, batch_size=64, eval_batch_size=100, image_size=32,
                resize_size=36, random_flip=False, digits_test_fraction=0.2,
                digits_classes=(), eval_split='test')
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def take(iterator, n):
  return list(itertools.islice(iterator, n))


# ----------------------------------------------------------------------------- digits


def test_digits_info_and_split_sizes():
  config = digits_config()
  info = ip.dataset_info(config)
  assert info == ip.DatasetInfo(10, 1437, 360, (32, 32, 3))
  data = digits_data.config_digits(config)
  assert len(data.train_labels) + len(data.test_labels) == 1797
  # stratified: every class in both splits, in proportion
  assert np.all(np.bincount(data.test_labels) >= 35)


def test_digits_split_disjoint_and_complete():
  """The two splits partition the 1,797 originals, and hold their preprocessed images."""
  from sklearn import datasets
  data = digits_data.config_digits(digits_config())
  index = np.concatenate([data.train_index, data.test_index])
  assert sorted(index) == list(range(1797))
  originals = datasets.load_digits()
  expected = image_batches.resize_bilinear(originals.images[index] * (255 / 16), 36)
  images = np.concatenate([data.train_images, data.test_images]) + data.mean_image
  np.testing.assert_allclose(images, np.repeat(expected[..., None], 3, -1), atol=1e-3)
  labels = np.concatenate([data.train_labels, data.test_labels])
  np.testing.assert_array_equal(labels, originals.target[index])
  # fixed by the split seed; another seed, another split
  other = digits_data.config_digits(digits_config(split_seed=1))
  assert not np.array_equal(other.test_index, data.test_index)
  same = digits_data.config_digits(digits_config(seed=5, split_seed=0))
  np.testing.assert_array_equal(same.test_index, data.test_index)


def test_digits_preprocessing_values():
  data = digits_data.config_digits(digits_config())
  assert data.train_images.dtype == np.float32
  np.testing.assert_allclose(data.train_images.mean(axis=0), 0, atol=1e-3)  # per pixel
  assert 0 <= data.mean_image.min() and data.mean_image.max() <= 255
  np.testing.assert_array_equal(data.mean_image[..., 0], data.mean_image[..., 2])  # gray
  raw = data.train_images + data.mean_image
  assert raw.min() >= -1e-3 and raw.max() <= 255 + 1e-3 and raw.max() > 200


def test_resize_matches_jax_linear():
  import jax
  x = np.random.default_rng(0).random((3, 8, 8))
  ours = image_batches.resize_bilinear(x, 36)
  theirs = np.asarray(jax.image.resize(x.astype(np.float32), (3, 36, 36), 'linear'))
  np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_digits_train_batch_shapes_and_labels():
  config = digits_config()
  batches = take(ip.train_batches(config, process_index=0, process_count=1), 3)
  for batch in batches:
    assert batch['image'].shape == (64, 32, 32, 3) and batch['image'].dtype == np.float32
    assert batch['label'].shape == (64,) and batch['label'].dtype == np.int32
    assert batch['label'].min() >= 0 and batch['label'].max() < 10
  assert not np.array_equal(batches[0]['label'], batches[1]['label'])


def test_digits_train_crops_are_subimages():
  """Every training image is a 32x32 window of its 36x36 source, unflipped for digits."""
  config = digits_config()
  data = digits_data.config_digits(config)
  batch = digits_data.digits_global_batch(config, 3)
  rows = digits_data.stream_rows(config.seed, 1437, 3 * 64, 64)
  offsets = set()
  for image, source in zip(batch['image'], data.train_images[rows]):
    found = [(i, j) for i in range(5) for j in range(5)
             if np.array_equal(source[i:i + 32, j:j + 32], image)]
    assert found
    offsets.update(found)
  assert len(offsets) > 5  # random offsets, not one fixed window
  np.testing.assert_array_equal(batch['label'], data.train_labels[rows])


def test_digits_random_flip():
  config = digits_config(random_flip=True)
  data = digits_data.config_digits(config)
  batch = digits_data.digits_global_batch(config, 0)
  rows = digits_data.stream_rows(config.seed, 1437, 0, 64)
  flipped = 0
  for image, source in zip(batch['image'], data.train_images[rows]):
    windows = [source[i:i + 32, j:j + 32] for i in range(5) for j in range(5)]
    plain = any(np.array_equal(w, image) for w in windows)
    mirror = any(np.array_equal(w[:, ::-1], image) for w in windows)
    assert plain or mirror
    flipped += mirror and not plain
  assert 10 < flipped < 54


def test_digits_epochs_are_permutations():
  """Consecutive batches walk through each epoch's permutation: every example once."""
  rows = digits_data.stream_rows(0, 1437, 0, 2 * 1437)
  assert sorted(rows[:1437]) == list(range(1437))
  assert sorted(rows[1437:]) == list(range(1437))
  assert not np.array_equal(rows[:1437], rows[1437:])
  np.testing.assert_array_equal(digits_data.stream_rows(0, 1437, 1400, 100), rows[1400:1500])


def test_digits_resume_is_exact():
  config = digits_config()
  run = take(ip.train_batches(config, process_index=0, process_count=1), 6)
  resumed = next(ip.train_batches(config, start_step=5, process_index=0, process_count=1))
  np.testing.assert_array_equal(resumed['image'], run[5]['image'])
  np.testing.assert_array_equal(resumed['label'], run[5]['label'])
  # across an epoch boundary too (1437 / 64 = 22.45 steps per epoch)
  late = take(ip.train_batches(config, start_step=21, process_index=0, process_count=1), 3)
  again = next(ip.train_batches(config, start_step=23, process_index=0, process_count=1))
  np.testing.assert_array_equal(late[2]['image'], again['image'])
  other_seed = next(ip.train_batches(digits_config(seed=1), start_step=5, process_index=0,
                                     process_count=1))
  assert not np.array_equal(other_seed['label'], run[5]['label'])


def test_digits_two_processes_make_the_global_batch():
  config = digits_config()
  whole = take(ip.train_batches(config, start_step=2, process_index=0, process_count=1), 2)
  parts = [take(ip.train_batches(config, start_step=2, process_index=p, process_count=2), 2)
           for p in range(2)]
  for t in range(2):
    assert parts[0][t]['image'].shape == (32, 32, 32, 3)
    for key in ('image', 'label'):
      np.testing.assert_array_equal(
          np.concatenate([parts[0][t][key], parts[1][t][key]]), whole[t][key])


def test_digits_batch_size_must_split():
  with pytest.raises(ValueError, match='divisible'):
    next(ip.train_batches(digits_config(batch_size=63), process_index=0, process_count=2))


@pytest.mark.parametrize('count', [1, 2, 3])
def test_digits_eval_covers_split_once(count):
  config = digits_config(eval_batch_size=96)
  data = digits_data.config_digits(config)
  streams = [list(ip.eval_batches(config, process_index=p, process_count=count))
             for p in range(count)]
  assert len({len(s) for s in streams}) == 1 and len(streams[0]) == 4  # ceil(360 / 96)
  seen = []
  for stream in streams:
    for batch in stream:
      assert batch['image'].shape == (96 // count, 32, 32, 3)
      assert batch['mask'].dtype == bool and batch['label'].dtype == np.int32
      assert np.all(batch['image'][~batch['mask']] == 0)
      seen.append((batch['image'][batch['mask']], batch['label'][batch['mask']]))
  assert sum(len(labels) for _, labels in seen) == 360
  images = np.concatenate([i for i, _ in seen])
  expected = image_batches.center_crop_batch(data.test_images, 32)
  order = np.lexsort(images.reshape(len(images), -1).T)
  expected_order = np.lexsort(expected.reshape(360, -1).T)
  np.testing.assert_array_equal(images[order], expected[expected_order])
  assert not streams[-1][-1]['mask'].all()  # 360 = 3 * 96 + 72: padding at the end


def test_digits_eval_train_split_and_unknown_split():
  config = digits_config(eval_batch_size=500)
  batches = list(ip.eval_batches(config, split='train', process_index=0, process_count=1))
  assert sum(b['mask'].sum() for b in batches) == 1437
  with pytest.raises(ValueError, match='splits'):
    next(ip.eval_batches(config, split='validation', process_index=0, process_count=1))
  with pytest.raises(ValueError, match='crops'):
    ip.eval_batches(config, crops='five', process_index=0, process_count=1)


def test_digits_ten_crop():
  config = digits_config(eval_batch_size=50)
  center = next(ip.eval_batches(config, process_index=0, process_count=1))
  ten = next(ip.eval_batches(config, crops='ten', process_index=0, process_count=1))
  assert ten['image'].shape == (50, 10, 32, 32, 3)
  np.testing.assert_array_equal(ten['label'], center['label'])
  np.testing.assert_array_equal(ten['image'][:, 4], center['image'])
  np.testing.assert_array_equal(ten['image'][:, 9], center['image'][:, :, ::-1])
  for k in range(5):
    np.testing.assert_array_equal(ten['image'][:, k + 5], ten['image'][:, k, :, ::-1])
  source = digits_data.config_digits(config).test_images[:50]
  np.testing.assert_array_equal(ten['image'][:, 0], source[:, :32, :32])
  np.testing.assert_array_equal(ten['image'][:, 1], source[:, :32, 4:])
  np.testing.assert_array_equal(ten['image'][:, 2], source[:, 4:, :32])
  np.testing.assert_array_equal(ten['image'][:, 3], source[:, 4:, 4:])


def test_digits_classes_subset():
  config = digits_config(digits_classes=(7, 2, 5))
  info = ip.dataset_info(config)
  assert info.num_classes == 3
  data = digits_data.config_digits(config)
  assert info.num_train + info.num_eval == len(data.train_labels) + len(data.test_labels)
  from sklearn import datasets
  target = datasets.load_digits().target
  assert info.num_train + info.num_eval == np.isin(target, (7, 2, 5)).sum()
  batch = next(ip.train_batches(config, process_index=0, process_count=1))
  assert set(batch['label']) == {0, 1, 2}
  # label k is digit classes[k], and the images are those digits' images
  originals = datasets.load_digits()
  rows = np.flatnonzero(np.isin(target, (7, 2, 5)))[data.train_index]
  np.testing.assert_array_equal(np.array([7, 2, 5])[data.train_labels], target[rows])
  expected = image_batches.resize_bilinear(originals.images[rows] * (255 / 16), 36)
  np.testing.assert_allclose(data.train_images[..., 0] + data.mean_image[..., 0], expected,
                             atol=1e-3)


def test_digits_path_imports_no_tensorflow():
  code = ('import sys, ml_collections\n'
          'import zfjax.input_pipeline as ip\n'
          'c = ml_collections.ConfigDict(dict(dataset="digits", seed=0, batch_size=8, '
          'eval_batch_size=8, image_size=32, resize_size=36))\n'
          'ip.dataset_info(c)\n'
          'next(ip.train_batches(c, process_index=0, process_count=1))\n'
          'next(ip.eval_batches(c, crops="ten", process_index=0, process_count=1))\n'
          'assert "tensorflow" not in sys.modules, "tensorflow imported"\n'
          'assert "tensorflow_datasets" not in sys.modules\n')
  subprocess.run([sys.executable, '-c', code], check=True, cwd=REPO)


def test_a_missing_train_extra_is_named_in_one_line(monkeypatch):
  """Without scikit-learn or TensorFlow (made unimportable here), the error names [train]."""
  from zfjax import extras
  pip = 'which is not installed: pip install "zfjax[train]"'
  for name in ('sklearn', 'sklearn.datasets', 'sklearn.model_selection'):
    monkeypatch.setitem(sys.modules, name, None)
  with pytest.raises(extras.MissingExtraError, match=r'^the digits dataset needs sklearn, '
                     + re.escape(pip) + '$'):
    digits_data.digits_pool((), 20)
  monkeypatch.setitem(sys.modules, 'tensorflow', None)
  tfds_data.tensorflow_modules.cache_clear()
  try:
    with pytest.raises(extras.MissingExtraError, match=r'^reading TFDS datasets needs '
                       r'tensorflow, ' + re.escape(pip) + '$'):
      ip.dataset_info(ml_collections.ConfigDict(dict(dataset='imagenet2012', image_size=32)))
  finally:
    tfds_data.tensorflow_modules.cache_clear()


# ----------------------------------------------------------------------------- TFDS
# TensorFlow is imported only from here on, lazily, so the digits tests above stay TF-free.

FAKE_SIZES = {'train': 23, 'validation': 11}
FAKE_LABEL_OFFSET = {'train': 0, 'validation': 500}


def fake_image(split: str, i: int) -> np.ndarray:
  """Example i of a split of the fake dataset: a small, oddly sized random uint8 image."""
  rng = np.random.default_rng((FAKE_LABEL_OFFSET[split], i))
  return rng.integers(0, 256, size=(9 + i % 13, 6 + i % 17, 3), dtype=np.uint8)


def fake_as_dataset(self, split, decoders=None, read_config=None, **kwargs):
  """A stand-in for the builder's reader that honours (sub-)splits.

  Unlike mock_data's default: example i of 'train' has label i, of 'validation' label
  500 + i.
  """
  del self, read_config, kwargs
  import tensorflow as tf
  from types import SimpleNamespace
  from tensorflow_datasets.core import splits as splits_lib
  infos = {name: SimpleNamespace(num_examples=n) for name, n in FAKE_SIZES.items()}
  examples = [(a.splitname, i)
              for a in splits_lib.AbstractSplit.from_spec(split).to_absolute(infos)
              for i in range(FAKE_SIZES[a.splitname])[a.from_:a.to]]
  skip_decoding = decoders is not None and 'image' in decoders

  def generate():
    for name, i in examples:
      image = fake_image(name, i)
      yield {'image': tf.io.encode_png(image).numpy() if skip_decoding else image,
             'label': FAKE_LABEL_OFFSET[name] + i, 'file_name': f'{name}_{i}.png'}

  image_spec = tf.TensorSpec((), tf.string) if skip_decoding else tf.TensorSpec(
      (None, None, 3), tf.uint8)
  ds = tf.data.Dataset.from_generator(generate, output_signature={
      'image': image_spec, 'label': tf.TensorSpec((), tf.int64),
      'file_name': tf.TensorSpec((), tf.string)})
  return ds.apply(tf.data.experimental.assert_cardinality(len(examples)))


def tfds_config(data_dir, **overrides) -> ml_collections.ConfigDict:
  fields = dict(dataset='imagenet2012', seed=0, batch_size=4, eval_batch_size=6,
                image_size=32, resize_size=40, random_flip=True, data_dir=str(data_dir),
                train_split='train', eval_split='validation', mean_image_examples=0,
                num_train_examples=0, num_eval_examples=0, shuffle_buffer=64)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


@pytest.fixture
def fake_tfds():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(as_dataset_fn=fake_as_dataset):
    yield


@pytest.fixture
def mock_tfds():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=10):
    yield


def preprocessed(split: str, i: int, size: int) -> np.ndarray:
  """The fake example resized and center-cropped eagerly, before mean subtraction."""
  return tfds_data.resize_and_center_crop(fake_image(split, i), size).numpy()


def known_image(h=50, w=70) -> np.ndarray:
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  return np.stack([rows * 3 % 256, cols * 3 % 256, (rows + cols) % 256], -1).astype(np.float32)


def in_dataset(fn, image):
  """fn applied inside a tf.data pipeline rather than eagerly."""
  import tensorflow as tf
  ds = tf.data.Dataset.from_tensors(image).map(fn, num_parallel_calls=2)
  return next(iter(ds)).numpy()


def windows(image: np.ndarray, crop: int):
  """All crop x crop windows of a square image and their mirrors: {(top, left, flip): w}."""
  size = image.shape[0]
  return {(i, j, f): image[i:i + crop, j:j + crop][:, ::-1] if f else image[i:i + crop, j:j + crop]
          for i in range(size - crop + 1) for j in range(size - crop + 1) for f in (0, 1)}


def find_window(image, source, crop, atol=1e-3):
  return [k for k, w in windows(source, crop).items() if np.allclose(w, image, atol=atol)]


def test_resize_and_center_crop_shapes_and_values():
  import tensorflow as tf
  for shape in [(50, 70, 3), (70, 50, 3), (5, 3, 3), (40, 40, 3), (1, 300, 3)]:
    image = tf.cast(tf.ones(shape) * 200, tf.uint8)
    out = tfds_data.resize_and_center_crop(image, 40)
    assert out.shape == (40, 40, 3) and out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), 200, atol=1e-3)
  image = known_image()
  eager = tfds_data.resize_and_center_crop(image, 40).numpy()
  np.testing.assert_allclose(in_dataset(lambda x: tfds_data.resize_and_center_crop(x, 40), image),
                             eager, atol=1e-4)
  # 50x70 -> 40x56, middle 40 columns; a 40x40 image is left as it is
  np.testing.assert_allclose(tfds_data.resize_and_center_crop(image[:40, :40], 40).numpy(),
                             image[:40, :40], atol=1e-3)


def test_random_crop_flip_eager_equals_dataset_and_stays_inside():
  import tensorflow as tf
  image = known_image(40, 40)
  found = set()
  for k in range(12):
    seed = tf.constant([3, k], tf.int64)
    eager = tfds_data.random_crop_flip(tf.constant(image), seed, 32, True).numpy()
    graph = in_dataset(lambda x: tfds_data.random_crop_flip(x, seed, 32, True), image)
    np.testing.assert_array_equal(eager, graph)
    assert eager.shape == (32, 32, 3)
    where = find_window(eager, image, 32, atol=0)
    assert len(where) == 1
    found.add(where[0])
  assert len({(i, j) for i, j, _ in found}) > 3 and {f for *_, f in found} == {0, 1}
  no_flip = tfds_data.random_crop_flip(tf.constant(image), tf.constant([3, 0], tf.int64), 32,
                                       False)
  assert find_window(no_flip.numpy(), image, 32, atol=0)[0][2] == 0
  # a crop as large as the image is the image (or its mirror)
  whole = tfds_data.random_crop_flip(tf.constant(image), tf.constant([1, 2], tf.int64), 40,
                                     False)
  np.testing.assert_array_equal(whole.numpy(), image)


def test_ten_crop_and_center_crop_tf_match_numpy():
  image = known_image(40, 40)
  eager = tfds_data.tf_ten_crop(image, 32).numpy()
  np.testing.assert_array_equal(in_dataset(lambda x: tfds_data.tf_ten_crop(x, 32), image), eager)
  np.testing.assert_array_equal(eager, image_batches.ten_crop_batch(image[None], 32)[0])
  np.testing.assert_array_equal(tfds_data.tf_center_crop(image, 32).numpy(), eager[4])
  np.testing.assert_array_equal(in_dataset(lambda x: tfds_data.tf_center_crop(x, 32), image),
                                eager[4])
  np.testing.assert_array_equal(eager[9], eager[4][:, ::-1])
  np.testing.assert_array_equal(eager[3], image[8:, 8:])


def test_tfds_info_under_mock_data(mock_tfds, tmp_path):
  info = ip.dataset_info(tfds_config(tmp_path))
  assert info == ip.DatasetInfo(1000, 10, 10, (32, 32, 3))
  info = ip.dataset_info(tfds_config(tmp_path, num_train_examples=1281167,
                                     num_eval_examples=50000, image_size=224, resize_size=256))
  assert info == ip.DatasetInfo(1000, 1281167, 50000, (224, 224, 3))


def test_tfds_train_and_eval_batches_under_mock_data(mock_tfds, tmp_path):
  config = tfds_config(tmp_path)
  batches = take(ip.train_batches(config, process_index=0, process_count=1), 3)
  for batch in batches:
    assert batch['image'].shape == (4, 32, 32, 3) and batch['image'].dtype == np.float32
    assert batch['label'].shape == (4,) and batch['label'].dtype == np.int32
    assert 0 <= batch['label'].min() and batch['label'].max() < 1000
    assert -256 < batch['image'].min() and batch['image'].max() < 256
  for crops, shape in [('center', (6, 32, 32, 3)), ('ten', (6, 10, 32, 32, 3))]:
    evals = list(ip.eval_batches(config, crops=crops, process_index=0, process_count=1))
    assert [b['mask'].sum() for b in evals] == [6, 4]
    assert all(b['image'].shape == shape and b['image'].dtype == np.float32 for b in evals)
    assert np.all(evals[-1]['image'][4:] == 0) and np.all(evals[-1]['label'][4:] == 0)
  assert os.path.exists(ip.mean_image_path(config))


def test_tfds_resume_is_exact(mock_tfds, tmp_path):
  config = tfds_config(tmp_path)  # 10 examples, batch 4: 2 steps per epoch
  run = take(ip.train_batches(config, process_index=0, process_count=1), 6)
  resumed = take(ip.train_batches(config, start_step=3, process_index=0, process_count=1), 3)
  for a, b in zip(run[3:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  assert not np.array_equal(run[0]['image'], run[2]['image'])  # epochs differ


def test_tfds_mean_image_computed_and_cached(fake_tfds, tmp_path, monkeypatch):
  config = tfds_config(tmp_path)
  mean = ip.mean_image(config)
  expected = np.mean([preprocessed('train', i, 40) for i in range(23)], axis=0)
  np.testing.assert_allclose(mean, expected, atol=1e-3)
  path = ip.mean_image_path(config)
  assert 'imagenet2012' in os.path.basename(path) and '40' in os.path.basename(path)
  assert os.path.dirname(os.path.dirname(path)) == str(tmp_path)
  mtime = os.path.getmtime(path)

  def fail(*args, **kwargs):
    raise AssertionError('recomputed instead of read from the cache')
  monkeypatch.setattr(tfds_data, 'compute_mean_image', fail)
  np.testing.assert_array_equal(ip.mean_image(config), mean)
  assert os.path.getmtime(path) == mtime
  # a capped pass is a different file
  capped = tfds_config(tmp_path, mean_image_examples=5)
  assert ip.mean_image_path(capped) != path
  monkeypatch.undo()
  np.testing.assert_allclose(
      ip.mean_image(capped), np.mean([preprocessed('train', i, 40) for i in range(5)], axis=0),
      atol=1e-3)


def test_tfds_train_images_are_crops_of_their_examples(fake_tfds, tmp_path):
  config = tfds_config(tmp_path)
  mean = ip.mean_image(config)
  batches = take(ip.train_batches(config, process_index=0, process_count=1), 5)  # 5 steps/epoch
  labels = np.concatenate([b['label'] for b in batches])
  assert sorted(labels) == sorted(set(labels)) and set(labels) <= set(range(23))
  assert len(labels) == 20  # one epoch: 23 // 4 * 4 examples, none twice
  flips = set()
  for image, label in zip(np.concatenate([b['image'] for b in batches[:2]]), labels[:8]):
    where = find_window(image, preprocessed('train', label, 40) - mean, 32)
    assert where, f'train image of example {label} is no window of it'
    flips.add(where[0][2])
  assert flips == {0, 1}


def test_tfds_per_process_train_parts_are_disjoint(fake_tfds, tmp_path):
  config = tfds_config(tmp_path)  # even_splits: 12 + 11 examples, B_local 2: 6 and 5 steps
  seen = []
  for p, steps in [(0, 6), (1, 5)]:
    batches = take(ip.train_batches(config, process_index=p, process_count=2), steps)
    assert all(b['image'].shape == (2, 32, 32, 3) for b in batches)
    labels = np.concatenate([b['label'] for b in batches])
    assert len(set(labels)) == len(labels)
    seen.append(set(labels))
  assert seen[0] == set(range(12)) and seen[1] <= set(range(12, 23)) and len(seen[1]) == 10


@pytest.mark.parametrize('count', [1, 2, 3])
def test_tfds_eval_covers_split_once(fake_tfds, tmp_path, count):
  config = tfds_config(tmp_path, eval_batch_size=6)
  mean = ip.mean_image(config)
  streams = [list(ip.eval_batches(config, process_index=p, process_count=count))
             for p in range(count)]
  assert len({len(s) for s in streams}) == 1
  labels = []
  for stream in streams:
    for batch in stream:
      assert batch['image'].shape == (6 // count, 32, 32, 3) and batch['mask'].dtype == bool
      assert np.all(batch['image'][~batch['mask']] == 0)
      for image, label in zip(batch['image'][batch['mask']], batch['label'][batch['mask']]):
        example = preprocessed('validation', label - 500, 40) - mean
        expected = image_batches.center_crop_batch(example[None], 32)
        np.testing.assert_allclose(image, expected[0], atol=1e-3)
        labels.append(label)
  assert sorted(labels) == list(range(500, 511))


def test_tfds_ten_crop_batches(fake_tfds, tmp_path):
  config = tfds_config(tmp_path)
  center = next(ip.eval_batches(config, process_index=0, process_count=1))
  ten = next(ip.eval_batches(config, crops='ten', process_index=0, process_count=1))
  assert ten['image'].shape == (6, 10, 32, 32, 3)
  np.testing.assert_array_equal(ten['label'], center['label'])
  np.testing.assert_allclose(ten['image'][:, 4], center['image'], atol=1e-5)
  np.testing.assert_array_equal(ten['image'][:, 9], ten['image'][:, 4, :, ::-1])


@pytest.fixture
def gcs_tripwire(monkeypatch):
  """TFDS with its bucket lookup on and every way to the bucket raising and recorded.

  TFDS 4.9.6 and 4.9.7 ask their bucket gs://tfds-data for the metadata of any dataset
  not prepared in the data dir (later versions have that lookup off by default: turned on
  here so the tests below check zfjax, whichever TFDS is installed). Guarded:
  gcs_utils.exists, through which each of TFDS's bucket lookups goes, and tf.io.gfile on
  gs:// paths, which etils.epath (so TFDS) reads the bucket with. conftest's socket guard
  does not see these: tf.io.gfile's GCS client is C++ (libcurl). Yields the list of
  attempts.
  """
  import tensorflow as tf
  from tensorflow_datasets.core.utils import gcs_utils
  attempts = []

  def attempt(what, path):
    attempts.append(f'{what}({path})')
    raise AssertionError(f'GCS access attempted: {what}({path})')

  monkeypatch.setattr(gcs_utils, '_is_gcs_disabled', False)
  monkeypatch.setattr(gcs_utils, 'exists', lambda path: attempt('gcs_utils.exists', path))
  for name in ('exists', 'isdir', 'listdir', 'glob', 'stat', 'walk', 'GFile', 'copy'):
    def guarded(path, *args, _name=name, _original=getattr(tf.io.gfile, name), **kwargs):
      if str(path).startswith('gs://'):
        attempt(f'tf.io.gfile.{_name}', path)
      return _original(path, *args, **kwargs)
    monkeypatch.setattr(tf.io.gfile, name, guarded)
  yield attempts


def test_gcs_tripwire_catches_the_dataset_info_lookup(gcs_tripwire, tmp_path):
  import tensorflow_datasets as tfds
  with pytest.raises(Exception, match='GCS access attempted'):
    tfds.builder('imagenet2012', data_dir=str(tmp_path), try_gcs=False)
  assert gcs_tripwire == ['gcs_utils.exists(gs://tfds-data/dataset_info/imagenet2012/5.1.0)']


def test_imagenet_missing_manual_download_is_explained(gcs_tripwire, tmp_path):
  from tensorflow_datasets.core.utils import gcs_utils
  config = tfds_config(tmp_path / 'data')
  with pytest.raises(ip.DatasetUnavailableError) as error:
    ip.dataset_info(config)
  message = str(error.value)
  assert 'ILSVRC2012_img_train.tar' in message and 'ILSVRC2012_img_val.tar' in message
  assert str(tmp_path / 'data' / 'downloads' / 'manual') in message
  assert '~/tensorflow_datasets/downloads/manual/' in message
  with pytest.raises(ip.DatasetUnavailableError):
    ip.train_batches(config, process_index=0, process_count=1)
  # download_and_prepare's errors become DatasetUnavailableError, so a tripped wire there
  # would not surface as an exception: the record says no GCS access was attempted
  assert gcs_tripwire == []
  assert gcs_utils._is_gcs_disabled is False  # zfjax's switch is undone on the way out


def test_image_folder_makes_no_gcs_lookup(gcs_tripwire, tmp_path):
  import tensorflow as tf
  from zfjax.train import transfer_data
  for label, value in (('apple', 40), ('pear', 200)):
    (tmp_path / 'train' / label).mkdir(parents=True)
    for i in range(2):
      image = np.full((9 + i, 12, 3), value + i, np.uint8)
      (tmp_path / 'train' / label / f'{i}.png').write_bytes(tf.io.encode_png(image).numpy())
  config = ml_collections.ConfigDict(dict(folder=str(tmp_path / 'train'), exclude_classes=(),
                                          dataset_name='fruit'))
  data = transfer_data.load_folder(config, 10, 8, np.zeros((8, 8, 3), np.float32))
  assert data.class_names == ('apple', 'pear') and sorted(data.labels) == [0, 0, 1, 1]
  assert gcs_tripwire == []


def test_mock_mean_image_is_not_cached_in_the_default_data_dir(mock_tfds, tmp_path,
                                                                monkeypatch):
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path))
  from tensorflow_datasets.core import constants
  monkeypatch.setattr(constants, 'get_default_data_dir', lambda: str(tmp_path))
  config = tfds_config(tmp_path)
  config.data_dir = None
  assert ip.mean_image(config).shape == (40, 40, 3)
  assert ip.mean_image_path(config).startswith(str(tmp_path))
  assert not os.path.exists(ip.mean_image_path(config))
