"""TFDS datasets in tf.data with the paper's preprocessing (e.g. imagenet2012).

    builder = tfds_data.tfds_builder(config)             # prepared, or a one-line reason
    mean = tfds_data.tfds_mean_image(config)             # cached under the data dir
    image = tfds_data.resize_and_center_crop(tfds_data.decode_image(data), 256)

`zfjax.input_pipeline` serves these as batches for any dataset name but 'digits'.
TensorFlow and TFDS are imported on first use (`tensorflow_modules`) and kept off the
GPU; they are the `train` extra: without them, one line says `pip install "zfjax[train]"`.
TFDS's GCS bucket is never consulted (`tfds_without_gcs`). docs/input_pipeline.md gives the
preprocessing, the order of examples and the config fields read.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from typing import Iterator, Optional

import numpy as np

from zfjax import extras
from zfjax import image_batches

_PURPOSE = 'reading TFDS datasets'


class UnknownDatasetError(ValueError):
  """The dataset name is neither digits nor a dataset TFDS knows."""


class DatasetUnavailableError(Exception):
  """The dataset's files are not on this machine and cannot be fetched (e.g. ImageNet)."""


# ------------------------------------------------------------------------------ TF ops
# Pure TensorFlow functions of one example, used eagerly and inside tf.data alike.


@functools.lru_cache(maxsize=None)
def tensorflow_modules():
  """(tensorflow, tensorflow_datasets), imported on first use and kept off any GPU.

  MissingExtraError (one line naming the `train` extra) when either is not installed.
  """
  tf = extras.require('tensorflow', 'train', _PURPOSE)
  tfds = extras.require('tensorflow_datasets', 'train', _PURPOSE)
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # already initialized by someone else: leave it
    pass
  return tf, tfds


def decode_image(encoded):
  """Encoded bytes (JPEG, PNG, ...) -> (h, w, 3) uint8; gray images tiled to RGB."""
  tf, _ = tensorflow_modules()
  return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def resize_and_center_crop(image, size: int):
  """(h, w, 3) -> (size, size, 3) float32 on 0-255: shorter side to `size`, central square.

  The resize is bilinear, antialiased when shrinking. Images smaller than `size` are
  enlarged, so any input size works.
  """
  tf, _ = tensorflow_modules()
  shape = tf.shape(image)[:2]
  scale = size / tf.cast(tf.reduce_min(shape), tf.float64)
  new_shape = tf.maximum(size, tf.cast(tf.round(tf.cast(shape, tf.float64) * scale), tf.int32))
  resized = tf.image.resize(image, new_shape, method='bilinear', antialias=True)
  top, left = (new_shape[0] - size) // 2, (new_shape[1] - size) // 2
  square = tf.image.crop_to_bounding_box(resized, top, left, size, size)
  return tf.ensure_shape(tf.clip_by_value(square, 0.0, 255.0), (size, size, 3))


def random_crop_flip(image, seed, crop: int, flip: bool):
  """A crop x crop window of (S, S, C) `image` at a uniformly random position.

  Mirrored left-right with probability 1/2 if `flip`; a pure function of `seed` (shape
  (2,) int).
  """
  tf, _ = tensorflow_modules()
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  out = tf.image.stateless_random_crop(image, (crop, crop, image.shape[-1]), crop_seed)
  if flip:
    out = tf.image.stateless_random_flip_left_right(out, flip_seed)
  return out


def tf_center_crop(image, crop: int):
  """The central crop x crop window of one (S, S, C) tensor, in TensorFlow."""
  tf, _ = tensorflow_modules()
  size = image.shape[0]
  top = (size - crop) // 2
  return tf.image.crop_to_bounding_box(image, top, top, crop, crop)


def tf_ten_crop(image, crop: int):
  """(S, S, C) -> (10, crop, crop, C) in TensorFlow: 4 corners and center, then mirrored."""
  tf, _ = tensorflow_modules()
  views = [tf.image.crop_to_bounding_box(image, top, left, crop, crop)
           for top, left in image_batches.crop_offsets(image.shape[0], crop).values()]
  views = tf.stack(views)
  return tf.concat([views, tf.reverse(views, axis=[2])], axis=0)


# ------------------------------------------------------------------------------ builder


def _data_dir(config) -> str:
  """config.data_dir, or TFDS's default (~/tensorflow_datasets, $TFDS_DATA_DIR)."""
  _, tfds = tensorflow_modules()
  default = tfds.core.constants.get_default_data_dir()
  return os.path.expanduser(image_batches.config_value(config, 'data_dir', default))


def _train_split(config) -> str:
  """config.train_split, 'train' by default."""
  return image_batches.config_value(config, 'train_split', 'train')


def manual_download_message(name: str, data_dir: str, instructions: str = '') -> str:
  """What to do when a manually downloaded dataset is missing."""
  manual_dir = os.path.join(data_dir, 'downloads', 'manual')
  if name.split('/')[0].split(':')[0] == 'imagenet2012':
    what = ('ImageNet 2012 is not downloadable automatically. Register at '
            'https://image-net.org/download-images, download ILSVRC2012_img_train.tar and '
            'ILSVRC2012_img_val.tar, and put both files (unextracted) in\n'
            f'  {manual_dir}/\n'
            '(TFDS\'s default is ~/tensorflow_datasets/downloads/manual/; set config.data_dir '
            'to use another data dir). The first run then prepares the dataset once.')
  else:
    what = (f'{name} needs a manual download into {manual_dir}/ (TFDS\'s default '
            f'~/tensorflow_datasets/downloads/manual/):\n{instructions}')
  return f'Dataset {name!r} is not available in {data_dir}. {what}'


def _manual_files_missing(builder, manual_dir: str) -> bool:
  """Whether `builder` needs a manual download and `manual_dir` holds nothing."""
  if not getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None):
    return False
  return not (os.path.isdir(manual_dir) and os.listdir(manual_dir))


@contextlib.contextmanager
def tfds_without_gcs():
  """TFDS with its public bucket (gs://tfds-data) switched off for the block.

  Builders made inside take their metadata from the data dir or from the dataset's code
  only. Why: a builder whose data dir holds no prepared copy of its dataset (absent data,
  or a manual download not yet prepared, e.g. imagenet2012; also tfds.ImageFolder) asks
  that bucket for its DatasetInfo while it is constructed (DatasetBuilder.__init__ ->
  DatasetInfo.initialize_from_bucket -> gcs_utils.gcs_dataset_info_files). TFDS 4.9.6 and
  4.9.7 do so by default (from 4.9.8 the lookup is off by default), through tf.io.gfile's
  GCS client, in C++ (libcurl): offline it fails at once, on a network that drops packets
  it waits 61 s per attempt and retries. The switch is TFDS's own, the flag that
  `tfds.testing.disable_gcs_access` sets; `try_gcs=False` and
  `DownloadConfig(try_download_gcs=False)` (tfds.builder's documented way to "fully bypass
  GCS") turn off the bucket's prepared copies, not this lookup. The flag is restored on
  exit, so nothing else in the process is affected.
  """
  tensorflow_modules()
  from tensorflow_datasets.core.utils import gcs_utils  # pylint: disable=g-import-not-at-top
  previous = getattr(gcs_utils, '_is_gcs_disabled', True)
  gcs_utils._is_gcs_disabled = True  # pylint: disable=protected-access
  try:
    yield
  finally:
    gcs_utils._is_gcs_disabled = previous  # pylint: disable=protected-access


def tfds_builder(config):
  """The TFDS builder of config.dataset, prepared (downloaded and converted) if it is not.

  Raises DatasetUnavailableError when its manual download is missing, UnknownDatasetError
  for a name TFDS does not know. Never consults TFDS's GCS bucket (`tfds_without_gcs`):
  the data dir is the only source.
  """
  _, tfds = tensorflow_modules()
  data_dir = _data_dir(config)
  with tfds_without_gcs():
    try:
      builder = tfds.builder(config.dataset, data_dir=data_dir, try_gcs=False)
    except tfds.core.DatasetNotFoundError as e:
      suggestion = re.search(r'Did you mean: \S+ -> (\S+) \?', str(e))
      hint = f' (did you mean {suggestion.group(1)!r}?)' if suggestion else ''
      raise UnknownDatasetError(f"unknown dataset {config.dataset!r}: neither 'digits' nor "
                                f'a TFDS dataset{hint}') from None
    if builder.is_prepared():
      return builder
    manual_dir = os.path.join(data_dir, 'downloads', 'manual')
    missing = _manual_files_missing(builder, manual_dir)
    try:  # a no-op under tfds.testing.mock_data
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
          manual_dir=manual_dir, try_download_gcs=False))
    except Exception as error:  # TFDS raises AssertionError for a missing manual download
      if missing or 'manual' in str(error).lower():
        instructions = getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', '')
        raise DatasetUnavailableError(
            manual_download_message(config.dataset, data_dir, instructions)) from error
      raise
  return builder


def read_split(builder, split, *, seed: Optional[int] = None):
  """The raw examples of `split`, images undecoded.

  Files and records are shuffled by `seed`, or read in stored order when seed is None.
  """
  tf, tfds = tensorflow_modules()
  options = tf.data.Options()
  options.deterministic = True
  read_config = tfds.ReadConfig(options=options, try_autocache=False, shuffle_seed=seed,
                                shuffle_reshuffle_each_iteration=False)
  return builder.as_dataset(split=split, shuffle_files=seed is not None, read_config=read_config,
                            decoders={'image': tfds.decode.SkipDecoding()})


def num_examples(builder, split) -> int:
  """Examples in a split or sub-split.

  From TFDS's metadata, else (e.g. under tfds.testing.mock_data, where info.splits is
  empty) the dataset's cardinality or a count.
  """
  try:
    return int(builder.info.splits[split].num_examples)
  except (KeyError, ValueError, TypeError):
    pass
  ds = read_split(builder, split)
  cardinality = int(ds.cardinality())
  if cardinality >= 0:
    return cardinality
  return int(ds.reduce(np.int64(0), lambda n, _: n + 1))


def _split_size(config, builder, split: str, field: str) -> int:
  """config.<field> if > 0, else the split's size."""
  value = int(image_batches.config_value(config, field, 0))
  return value if value > 0 else num_examples(builder, split)


def tfds_counts(config, eval_split: str) -> tuple[int, int, int]:
  """(classes, training examples, examples of `eval_split`) of config.dataset."""
  builder = tfds_builder(config)
  train = _split_size(config, builder, _train_split(config), 'num_train_examples')
  evals = _split_size(config, builder, eval_split, 'num_eval_examples')
  return builder.info.features['label'].num_classes, train, evals


# --------------------------------------------------------------------------- mean image


def mean_image_path(config) -> str:
  """Where the mean image of config's dataset, training split and resize_size is cached."""
  cap = int(image_batches.config_value(config, 'mean_image_examples', 0))
  name = config.dataset.replace('/', '_').replace(':', '_')
  split = _train_split(config).replace('/', '_')
  suffix = f'_first{cap}' if cap > 0 else ''
  return os.path.join(_data_dir(config), 'zfjax_mean_images',
                      f'{name}_{split}_mean_{config.resize_size}px{suffix}.npy')


def compute_mean_image(builder, split, size: int, max_examples: int = 0,
                       batch_size: int = 64) -> np.ndarray:
  """The mean of the resized, center-cropped images of `split`, (size, size, 3).

  One streaming pass (over the first max_examples examples if > 0), accumulated in
  float64.
  """
  tf, _ = tensorflow_modules()
  ds = read_split(builder, split)
  if max_examples > 0:
    ds = ds.take(max_examples)
  ds = ds.map(lambda ex: resize_and_center_crop(decode_image(ex['image']), size),
              num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size).prefetch(2)
  zero = (tf.zeros((size, size, 3), tf.float64), tf.constant(0, tf.int64))
  total, count = ds.reduce(zero, lambda acc, x: (
      acc[0] + tf.reduce_sum(tf.cast(x, tf.float64), axis=0), acc[1] + tf.shape(x, tf.int64)[0]))
  if int(count) == 0:
    raise ValueError(f'split {split!r} of {builder.name} is empty: no mean image')
  return (total.numpy() / int(count)).astype(np.float32)


def tfds_mean_image(config, builder=None) -> np.ndarray:
  """The training split's mean image, read from `mean_image_path(config)` or computed.

  Computed by `compute_mean_image` (config.mean_image_examples caps the pass; 0 = all)
  and saved there. ImageNet's full pass decodes 1.28M JPEGs once (tens of minutes to
  hours on a few cores): run it once before a multi-host job, whose processes then all
  read the file. The file is written only for prepared datasets or an explicit
  config.data_dir, so a test under tfds.testing.mock_data never leaves a mean of random
  images in the default data dir for a real run to pick up.
  """
  path = mean_image_path(config)
  if os.path.exists(path):
    return np.load(path)
  builder = builder or tfds_builder(config)
  cap = int(image_batches.config_value(config, 'mean_image_examples', 0))
  mean = compute_mean_image(builder, _train_split(config), config.resize_size, cap)
  if not (builder.is_prepared() or image_batches.config_value(config, 'data_dir', None)):
    return mean
  os.makedirs(os.path.dirname(path), exist_ok=True)
  temp = f'{path}.tmp{os.getpid()}.npy'
  np.save(temp, mean)
  os.replace(temp, path)  # atomic: concurrent processes never read half a file
  return mean


# ------------------------------------------------------------------------------ batches


def _preprocess(example, mean, size: int):
  """Decoded, resized, center-cropped, mean-subtracted float32 image and int32 label."""
  tf, _ = tensorflow_modules()
  image = resize_and_center_crop(decode_image(example['image']), size) - mean
  return image, tf.cast(example['label'], tf.int32)


def _epoch_seed(seed: int, epoch: int) -> int:
  """The shuffle seed of one epoch: a 63-bit function of (seed, epoch)."""
  return int(np.random.default_rng((seed, 0, epoch)).integers(2**63 - 1))


def _train_epoch(config, builder, part, mean, epoch: int, steps_per_epoch: int,
                 skip_steps: int, index: int, count: int):
  """Epoch `epoch` of this process as a tf.data pipeline of batches, from batch `skip_steps`.

  The skipped examples are read but not decoded.
  """
  tf, _ = tensorflow_modules()
  local = config.batch_size // count
  size, crop = config.resize_size, config.image_size
  flip = bool(image_batches.config_value(config, 'random_flip', True))
  seed = _epoch_seed(config.seed, epoch)
  ds = read_split(builder, part, seed=seed)
  ds = ds.shuffle(int(image_batches.config_value(config, 'shuffle_buffer', 10_000)), seed=seed,
                  reshuffle_each_iteration=False)
  ds = ds.take(steps_per_epoch * local).enumerate().skip(skip_steps * local)
  mean = tf.constant(mean)
  first_step = epoch * steps_per_epoch

  def prepare(position, example):
    image, label = _preprocess(example, mean, size)
    step = first_step + position // local
    global_row = step * config.batch_size + index * local + position % local
    crop_seed = tf.stack([tf.constant(config.seed, tf.int64), global_row])
    return {'image': random_crop_flip(image, crop_seed, crop, flip), 'label': label}

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(local, drop_remainder=True).prefetch(2)


def tfds_train_batches(config, start_step: int, index: int, count: int) -> Iterator[dict]:
  """Training batches of a TFDS dataset for process `index` of `count`, from `start_step`.

  Epochs are whole passes over this process's part of the split (tfds.even_splits), each
  of steps_per_epoch = part size // B_local steps (the remainder, < B_local examples, is
  left out of that epoch; another epoch's order includes them). Epoch e's file and
  example order is a function of (seed, e), so a resumed run starts at epoch start_step //
  steps_per_epoch directly and reads (without decoding) the first start_step %
  steps_per_epoch batches of that epoch to skip them: at most one epoch of file reading,
  no image decoding.
  """
  _, tfds = tensorflow_modules()
  local = image_batches.local_batch_size(config.batch_size, count)
  if config.image_size > config.resize_size:
    raise ValueError(f'image_size {config.image_size} > resize_size {config.resize_size}')
  builder = tfds_builder(config)
  part = tfds.even_splits(_train_split(config), n=count)[index]
  steps_per_epoch = num_examples(builder, part) // local
  if steps_per_epoch == 0:
    raise ValueError(f'process {index} has fewer training examples than its batch {local}')
  mean = tfds_mean_image(config, builder)

  def batches():
    epoch, skip = divmod(start_step, steps_per_epoch)
    while True:
      yield from tfds.as_numpy(_train_epoch(
          config, builder, part, mean, epoch, steps_per_epoch, skip, index, count))
      epoch, skip = epoch + 1, 0
  return batches()


def tfds_eval_batches(config, split: str, crops: str, index: int,
                      count: int) -> Iterator[dict]:
  """The whole split, each process its own part, in stored order, in padded batches.

  Parts come from tfds.even_splits (sizes differ by at most one); each is padded with
  masked zero examples to the same number of batches in every process.
  """
  tf, tfds = tensorflow_modules()
  local = image_batches.local_batch_size(config.eval_batch_size, count)
  builder = tfds_builder(config)
  parts = tfds.even_splits(split, n=count)
  sizes = [num_examples(builder, part) for part in parts]
  num_batches = -(-max(sizes) // local)
  mean = tf.constant(tfds_mean_image(config, builder))
  size, crop = config.resize_size, config.image_size
  view = functools.partial(tf_center_crop if crops == 'center' else tf_ten_crop, crop=crop)

  def prepare(example):
    image, label = _preprocess(example, mean, size)
    return {'image': view(image), 'label': label, 'mask': tf.constant(True)}

  ds = read_split(builder, parts[index]).map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  padding = tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype), ds.element_spec)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat())
  ds = ds.take(num_batches * local).batch(local).prefetch(2)
  return iter(tfds.as_numpy(ds))
