"""Input pipelines: the paper's preprocessing, deterministic by (seed, step), split per process.

    info = input_pipeline.dataset_info(config)        # classes, split sizes, image shape
    mean = input_pipeline.mean_image(config)          # (resize_size, resize_size, 3), 0-255
    for batch in input_pipeline.train_batches(config, start_step=step):  # forever
      batch['image'], batch['label']                  # (B_local, H, W, 3) f32, (B_local,) i32
    for batch in input_pipeline.eval_batches(config, crops='ten'):       # the whole split
      batch['image'], batch['label'], batch['mask']   # (B_local, 10, H, W, 3), i32, bool

Images are 0-255 minus the training set's mean image. `config.dataset` is 'digits'
(scikit-learn's, in NumPy: `zfjax.digits_data`) or a TFDS dataset such as
'imagenet2012' (tf.data: `zfjax.tfds_data`); both are the `train` extra, and without it
one line says `pip install "zfjax[train]"`. docs/input_pipeline.md gives the
preprocessing, the order of examples, the datasets and the config fields read.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Optional

import numpy as np

from zfjax import digits_data
from zfjax import image_batches
from zfjax import tfds_data

# The names the pipeline's users reach for, wherever they live (the same objects).
DIGITS = digits_data.DIGITS
CROPS = image_batches.CROPS
UnknownDatasetError = tfds_data.UnknownDatasetError
DatasetUnavailableError = tfds_data.DatasetUnavailableError
load_digits = digits_data.load_digits
digits_pool = digits_data.digits_pool
crop_offsets = image_batches.crop_offsets
center_crop_batch = image_batches.center_crop_batch
resize_and_center_crop = tfds_data.resize_and_center_crop
tfds_without_gcs = tfds_data.tfds_without_gcs
mean_image_path = tfds_data.mean_image_path


class DatasetInfo(NamedTuple):
  """What the trainer needs to know about a dataset: label count, split sizes, input shape."""
  num_classes: int
  num_train: int
  num_eval: int
  image_shape: tuple  # (H, W, 3): the model's input


def _process(process_index: Optional[int], process_count: Optional[int]) -> tuple[int, int]:
  """(index, count), defaulting to JAX's view of this process."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count})')
  return process_index, process_count


def eval_split(config) -> str:
  """The split evaluated by default: 'test' for digits, 'validation' for TFDS datasets."""
  default = 'test' if config.dataset == DIGITS else 'validation'
  return image_batches.config_value(config, 'eval_split', default)


def dataset_info(config) -> DatasetInfo:
  """Number of classes, of training and evaluation examples, and the model's input shape."""
  counts = digits_data.digits_counts if config.dataset == DIGITS else tfds_data.tfds_counts
  num_classes, num_train, num_eval = counts(config, eval_split(config))
  return DatasetInfo(num_classes, num_train, num_eval, (config.image_size, config.image_size, 3))


def train_batches(config, *, start_step: int = 0, process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> Iterator[dict]:
  """Training batches from step `start_step` on, forever.

  Each is {'image': float32 (B_local, H, W, 3), 'label': int32 (B_local,)} with B_local =
  batch_size // process_count. The batch of step t depends only on (seed, t,
  process_index, process_count).
  """
  index, count = _process(process_index, process_count)
  if config.dataset == DIGITS:
    return digits_data.digits_train_batches(config, start_step, index, count)
  return tfds_data.tfds_train_batches(config, start_step, index, count)


def eval_batches(config, *, split: Optional[str] = None, crops: str = 'center',
                 process_index: Optional[int] = None,
                 process_count: Optional[int] = None) -> Iterator[dict]:
  """The whole split (default config.eval_split), each example once, in a fixed order.

  Each batch is {'image': (B_local, H, W, 3) or for crops='ten' (B_local, 10, H, W, 3),
  'label': int32 (B_local,), 'mask': bool (B_local,)}, B_local = eval_batch_size //
  process_count. Padding rows are zeros with mask False; every process yields the same
  number of batches.
  """
  image_batches.check_crops(crops)
  index, count = _process(process_index, process_count)
  split = split or eval_split(config)
  if config.dataset == DIGITS:
    return digits_data.digits_eval_batches(config, split, crops, index, count)
  return tfds_data.tfds_eval_batches(config, split, crops, index, count)


def mean_image(config) -> np.ndarray:
  """The training set's per-pixel mean image, (resize_size, resize_size, 3) float32, 0-255.

  Add it back to a batch's images to see them. For TFDS datasets this is the cached file
  (computed on first use, see `tfds_data.tfds_mean_image`).
  """
  if config.dataset == DIGITS:
    return np.asarray(digits_data.config_digits(config).mean_image)
  return tfds_data.tfds_mean_image(config)
