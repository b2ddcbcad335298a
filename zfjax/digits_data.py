"""The offline dataset: scikit-learn's 1,797 handwritten digits, in memory, in NumPy.

    data = digits_data.load_digits(split_seed=0, size=36)    # ArraySplits
    data.train_images, data.train_labels, data.mean_image    # (1437, 36, 36, 3) f32, ...
    images, labels = digits_data.digits_pool((5, 6, 7), 36)  # some digits, no mean removed

`zfjax.input_pipeline` serves them as batches (config.dataset == 'digits'); no TensorFlow
is imported. scikit-learn is the `train` extra: without it, one line says
`pip install "zfjax[train]"`. docs/input_pipeline.md gives the preprocessing and the order.
"""

from __future__ import annotations

import functools
from typing import Iterator, NamedTuple

import numpy as np

from zfjax import extras
from zfjax import image_batches

DIGITS = 'digits'  # config.dataset of this source
_PURPOSE = 'the digits dataset'


class ArraySplits(NamedTuple):
  """An in-memory dataset: preprocessed (resize_size) images, labels, and the mean image."""
  train_images: np.ndarray  # (N, S, S, 3) float32, mean subtracted
  train_labels: np.ndarray  # (N,) int32
  test_images: np.ndarray
  test_labels: np.ndarray
  mean_image: np.ndarray    # (S, S, 3) float32, on the 0-255 scale
  num_classes: int
  train_index: np.ndarray   # rows of the source (sklearn's order, after `classes`)
  test_index: np.ndarray


def digits_pool(classes: tuple = (), size: int = 36) -> tuple[np.ndarray, np.ndarray]:
  """All of scikit-learn's digits as RGB images on the 0-255 scale, and their labels.

  Those in `classes` (labelled 0..len(classes)-1 in the order given; () = all ten), as
  (N, size, size, 3) float32 before any mean subtraction and int32 labels, in sklearn's
  order: 0..16 -> 0..255, bilinear upsampling 8 -> size, gray tiled to RGB.
  """
  datasets = extras.require('sklearn.datasets', 'train', _PURPOSE)
  digits = datasets.load_digits()
  images, labels = digits.images, digits.target
  if classes:
    unknown = sorted(set(classes) - set(range(10)))
    if unknown or len(set(classes)) != len(classes):
      raise ValueError(f'digits classes must be distinct digits 0-9, got {tuple(classes)}')
    keep = np.isin(labels, classes)
    images, labels = images[keep], labels[keep]
    relabel = np.zeros(10, dtype=np.int64)
    relabel[list(classes)] = np.arange(len(classes))
    labels = relabel[labels]
  gray = image_batches.resize_bilinear(images * (255.0 / 16.0), size)
  return np.repeat(gray[..., None], 3, axis=-1).astype(np.float32), labels.astype(np.int32)


@functools.lru_cache(maxsize=8)
def load_digits(split_seed: int = 0, test_fraction: float = 0.2, size: int = 36,
                classes: tuple = ()) -> ArraySplits:
  """scikit-learn's digits preprocessed as the paper does ImageNet, split train/test.

  0..16 -> 0..255, bilinear upsampling 8 -> size, gray tiled to RGB, the training split's
  per-pixel mean image subtracted. The split is stratified by label and fixed by
  `split_seed`; each split is in increasing order of the original index. `classes`
  keeps only those digits, labelled 0..len(classes)-1 in the order given.
  """
  model_selection = extras.require('sklearn.model_selection', 'train', _PURPOSE)
  rgb, labels = digits_pool(classes, size)
  num_classes = len(classes) if classes else 10
  index = np.arange(len(labels))
  train, test = model_selection.train_test_split(
      index, test_size=test_fraction, random_state=split_seed, stratify=labels)
  train, test = np.sort(train), np.sort(test)
  mean = rgb[train].mean(axis=0, dtype=np.float64).astype(np.float32)
  splits = ArraySplits(rgb[train] - mean, labels[train].astype(np.int32),
                       rgb[test] - mean, labels[test].astype(np.int32), mean, num_classes,
                       train, test)
  for array in splits[:5] + splits[6:]:
    array.flags.writeable = False
  return splits


def config_digits(config) -> ArraySplits:
  """`load_digits` with the config's fields (split_seed, digits_test_fraction, ...)."""
  get = image_batches.config_value
  return load_digits(int(get(config, 'split_seed', config.seed)),
                     float(get(config, 'digits_test_fraction', 0.2)),
                     int(config.resize_size),
                     tuple(int(c) for c in get(config, 'digits_classes', ())))


def digits_split(config, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) of 'train' or 'test'."""
  data = config_digits(config)
  if split == 'train':
    return data.train_images, data.train_labels
  if split == 'test':
    return data.test_images, data.test_labels
  raise ValueError(f"digits has splits 'train' and 'test', not {split!r}")


def digits_counts(config, eval_split: str) -> tuple[int, int, int]:
  """(classes, training examples, examples of `eval_split`)."""
  data = config_digits(config)
  return data.num_classes, len(data.train_labels), len(digits_split(config, eval_split)[1])


# ------------------------------------------------------------------------------- order


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The order in which epoch `epoch` visits the n training examples."""
  return np.random.default_rng((seed, 0, epoch)).permutation(n)


def stream_rows(seed: int, n: int, start: int, count: int) -> np.ndarray:
  """Example indices at positions [start, start+count) of the stream of epochs.

  The stream is the epochs' permutations of the n examples, one after another, forever.
  """
  position = np.arange(start, start + count)
  epoch = position // n
  rows = np.empty(count, dtype=np.int64)
  for e in np.unique(epoch):
    rows[epoch == e] = epoch_permutation(seed, int(e), n)[position[epoch == e] % n]
  return rows


def augmentation_rng(seed: int, step: int) -> np.random.Generator:
  """The generator of step `step`'s crops and flips."""
  return np.random.default_rng((seed, 1, step))


# ----------------------------------------------------------------------------- batches


def digits_global_batch(config, step: int) -> dict[str, np.ndarray]:
  """The whole (all processes') training batch of step `step`."""
  images, labels = digits_split(config, 'train')
  batch, crop, size = config.batch_size, config.image_size, images.shape[1]
  rows = stream_rows(config.seed, len(labels), step * batch, batch)
  rng = augmentation_rng(config.seed, step)
  top = rng.integers(0, size - crop + 1, size=batch)
  left = rng.integers(0, size - crop + 1, size=batch)
  flip = (rng.random(batch) < 0.5 if image_batches.config_value(config, 'random_flip', False)
          else None)
  return {'image': image_batches.crop_batch(images[rows], top, left, crop, flip),
          'label': labels[rows]}


def digits_train_batches(config, start_step: int, index: int, count: int) -> Iterator[dict]:
  """Process `index` of `count`'s rows of each global training batch, from `start_step`."""
  local = image_batches.local_batch_size(config.batch_size, count)
  step = start_step
  while True:
    batch = digits_global_batch(config, step)
    yield {k: v[index * local:(index + 1) * local] for k, v in batch.items()}
    step += 1


def digits_eval_batches(config, split: str, crops: str, index: int,
                        count: int) -> Iterator[dict]:
  """The whole split in padded batches (see `image_batches.padded_batches`)."""
  images, labels = digits_split(config, split)
  crop = config.image_size
  if crops == 'center':
    view = lambda x: image_batches.center_crop_batch(x, crop).copy()
  else:
    view = lambda x: image_batches.ten_crop_batch(x, crop)
  return image_batches.padded_batches(images, labels, config.eval_batch_size, index, count,
                                      view)
