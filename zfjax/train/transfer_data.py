"""Transfer learning's target data, preprocessed for one source net, and its splits.

    source = loading.load('/data/zf')                  # the trained net
    data = transfer_data.load_dataset(config, source)  # images as the source's evaluation
    x = data.model_input(rows)                         # the source's input space
    train, test = transfer_data.sample_split(data.labels, 5, None, seed=(0, 5, 1))

Datasets: 'digits' (scikit-learn's, the classes in config.digits_classes), any TFDS image
classification dataset such as 'caltech101', 'voc/2012' (multi-label) and 'folder'
(class subfolders, e.g. Caltech-256's 256_ObjectCategories). docs/transfer.md gives the
protocol.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Callable, Optional

from absl import logging
import ml_collections
import numpy as np

from zfjax import digits_data
from zfjax import image_batches
from zfjax import loading
from zfjax import preprocess
from zfjax import tfds_data

VOC = 'voc/2012'


class TransferError(ValueError):
  """A transfer config, source or dataset that cannot run, with what to do about it."""


@dataclasses.dataclass(frozen=True)
class TransferData:
  """A target dataset, preprocessed for one source net.

  images: (N, H, W, 3) center crops on the 0-255 scale (uint8 for decoded files, float32
    for digits), before normalization; `model_input` makes the source's inputs of them.
  labels: (N,) int class indices, or for multi-label data (N, C) 0/1.
  mean: the source's mean image, center-cropped to (H, W, 3) (0 for imagenet inputs).
  fixed_train: None (sample splits per class), or (N,) bool: the dataset's own training
    examples (the others are the test set), as for PASCAL VOC.
  normalization: the source's input space, preprocess.PAPER or preprocess.IMAGENET.
  """
  name: str
  images: np.ndarray
  labels: np.ndarray
  class_names: tuple
  mean: np.ndarray
  fixed_train: Optional[np.ndarray] = None
  normalization: str = preprocess.PAPER

  @property
  def multilabel(self) -> bool:
    return self.labels.ndim == 2

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def model_input(self, rows) -> np.ndarray:
    """The images at `rows` in the source's input space, float32."""
    images = self.images[rows].astype(np.float32)
    if self.normalization == preprocess.IMAGENET:  # torchvision's: 0-1, per-channel scaled
      return ((images / np.float32(255.0) - np.float32(preprocess.IMAGENET_MEAN))
              / np.float32(preprocess.IMAGENET_STD))
    return images - self.mean


def load_dataset(config, source: loading.Loaded) -> TransferData:
  """The target dataset of a transfer config, preprocessed as `source`'s evaluation.

  Shorter side to the source's resize_size, central square, center crop of its
  image_size. 'digits': scikit-learn's, the classes in config.digits_classes; any TFDS
  image classification dataset such as 'caltech101' (its splits pooled, then sampled per
  class); 'voc/2012' (multi-label; train_split for training, eval_split for testing);
  'folder' (class subfolders under config.folder, e.g. Caltech-256's
  256_ObjectCategories).
  """
  size, crop = source.resize_size, source.image_size
  mean = np.asarray(source.input_mean, np.float32)
  if config.dataset == digits_data.DIGITS:
    images, labels = digits_data.digits_pool(tuple(config.digits_classes), size)
    crops = image_batches.center_crop_batch(images, crop)
    names = tuple(str(c) for c in config.digits_classes)
    data = TransferData(f'digits{_class_range(config.digits_classes)}', crops, labels, names,
                        mean)
  elif config.dataset == 'folder':
    data = load_folder(config, size, crop, mean)
  elif config.dataset == VOC:
    data = _load_voc(config, size, crop, mean)
  else:
    data = _load_tfds(config, size, crop, mean)
  return dataclasses.replace(data, normalization=source.normalization)


def _class_range(classes) -> str:
  classes = [int(c) for c in classes]
  contiguous = classes == list(range(classes[0], classes[-1] + 1))
  return f'{classes[0]}-{classes[-1]}' if contiguous else '_'.join(map(str, classes))


def _tfds_images(dataset, size: int, crop: int, label_fn: Callable, count_hint: str):
  """Decoded examples of a tf.data dataset -> (images uint8 (N, crop, crop, 3), labels)."""
  tf, tfds = tfds_data.tensorflow_modules()

  def prepare(example):
    image = example['image']
    if image.dtype == tf.string:
      image = tfds_data.decode_image(image)
    if image.shape.rank == 3 and image.shape[-1] == 1:
      image = tf.image.grayscale_to_rgb(image)
    square = tfds_data.resize_and_center_crop(image, size)
    view = tfds_data.tf_center_crop(square, crop)
    return tf.cast(tf.round(view), tf.uint8), label_fn(example)

  images, labels = [], []
  started = time.perf_counter()
  ds = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(256).prefetch(2)
  for batch_images, batch_labels in tfds.as_numpy(ds):
    images.append(batch_images)
    labels.append(batch_labels)
    logging.info('read %d images of %s (%.0f images/s)', sum(map(len, images)), count_hint,
                 sum(map(len, images)) / (time.perf_counter() - started))
  if not images:
    raise TransferError(f'{count_hint} has no images')
  return np.concatenate(images), np.concatenate(labels)


def _builder(config):
  cfg = ml_collections.ConfigDict({'dataset': config.dataset, 'data_dir': config.data_dir})
  return tfds_data.tfds_builder(cfg)


def _load_tfds(config, size, crop, mean) -> TransferData:
  builder = _builder(config)
  splits = '+'.join(config.pool_splits) if config.pool_splits else None
  splits = splits or '+'.join(builder.info.splits.keys()) or 'train'
  ds = tfds_data.read_split(builder, splits)
  images, labels = _tfds_images(ds, size, crop, lambda ex: ex['label'], config.dataset)
  names = tuple(builder.info.features['label'].names)
  return TransferData(config.dataset.replace('/', ''), images, labels.astype(np.int32), names,
                      mean)


def _load_voc(config, size, crop, mean) -> TransferData:
  tf, _ = tfds_data.tensorflow_modules()
  builder = _builder(config)
  names = tuple(builder.info.features['labels'].feature.names)

  def multi_hot(example):
    return tf.reduce_max(tf.one_hot(example['labels'], len(names), dtype=tf.int32), axis=0)

  parts = []
  for split in (config.train_split, config.eval_split):
    ds = tfds_data.read_split(builder, split)
    parts.append(_tfds_images(ds, size, crop, multi_hot, f'{config.dataset} {split}'))
  train, test = parts
  fixed_train = np.concatenate([np.ones(len(train[1]), bool), np.zeros(len(test[1]), bool)])
  return TransferData('voc2012', np.concatenate([train[0], test[0]]),
                      np.concatenate([train[1], test[1]]), names, mean, fixed_train)


def load_folder(config, size: int, crop: int, mean: np.ndarray) -> TransferData:
  """Class subfolders of config.folder, read with TFDS's ImageFolder.

  The folder must be a split directory, e.g. .../256_ObjectCategories/001.ak47/*.jpg;
  classes named in config.exclude_classes (Caltech-256's 257.clutter) are left out.
  """
  _, tfds = tfds_data.tensorflow_modules()
  folder = pathlib.Path(config.folder or '').expanduser()
  if not config.folder or not folder.is_dir():
    raise tfds_data.DatasetUnavailableError(
        f'config.folder {str(folder)!r} is not a directory. For Caltech-256, download '
        '256_ObjectCategories.tar from https://data.caltech.edu/records/nyv15-4j048, extract '
        'it, and set --config.folder=/path/to/256_ObjectCategories (one subfolder per class).')
  # Its constructor would otherwise ask gs://tfds-data for 'image_folder' metadata (TFDS
  # 4.9.6-4.9.7 by default): see tfds_data.tfds_without_gcs.
  with tfds_data.tfds_without_gcs():
    builder = tfds.ImageFolder(str(folder.parent))
  names = tuple(builder.info.features['label'].names)
  ds = builder.as_dataset(split=folder.name, shuffle_files=False)
  images, labels = _tfds_images(ds, size, crop, lambda ex: ex['label'], str(folder))
  keep = ~np.isin(np.asarray(names)[labels], list(config.exclude_classes))
  kept_names = tuple(n for n in names if n not in config.exclude_classes)
  relabel = {names.index(n): i for i, n in enumerate(kept_names)}
  labels = np.asarray([relabel[int(label)] for label in labels[keep]], np.int32)
  name = config.dataset_name or folder.name
  return TransferData(name, images[keep], labels, kept_names, mean)


# ----------------------------------------------------------------------------- splits


def sample_split(labels: np.ndarray, train_per_class: int,
                 test_per_class: Optional[int], seed) -> tuple[np.ndarray, np.ndarray]:
  """(train rows, test rows), sorted and disjoint, drawn per class.

  `train_per_class` rows of every class drawn at random (`seed`: an int or a tuple of
  ints, as numpy's default_rng), then up to `test_per_class` of each class's remaining
  rows (None or 0: all of them). A class with no row left for testing is an error.
  """
  rng = np.random.default_rng(seed)
  train, test = [], []
  for c in np.unique(labels):
    rows = rng.permutation(np.flatnonzero(labels == c))
    if len(rows) <= train_per_class:
      raise TransferError(f'class {c} has {len(rows)} images: too few for '
                          f'{train_per_class} training images and at least one test image')
    train.append(rows[:train_per_class])
    rest = rows[train_per_class:]
    test.append(rest[:test_per_class] if test_per_class else rest)
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
