"""Input pipelines: the paper's preprocessing, deterministic by (seed, step), split per process.

    info = input_pipeline.dataset_info(config)        # classes, split sizes, image shape
    mean = input_pipeline.mean_image(config)          # (resize_size, resize_size, 3), 0-255
    for batch in input_pipeline.train_batches(config, start_step=step):  # forever
      batch['image'], batch['label']                  # (B_local, H, W, 3) f32, (B_local,) i32
    for batch in input_pipeline.eval_batches(config, crops='ten'):       # the whole split
      batch['image'], batch['label'], batch['mask']   # (B_local, 10, H, W, 3), i32, bool

Images are in the model's input space (PAPER.md, Training): values on a 0-255 scale minus
the per-pixel mean image of the training set, not rescaled (roughly [-128, 128]). Training
takes random `image_size` sub-crops of the `resize_size` image (and horizontal flips when
`random_flip`); evaluation takes the center crop, or with crops='ten' the 4 corner crops
and the center crop followed by their mirror images, in the order
[top-left, top-right, bottom-left, bottom-right, center, and the same five flipped], so
crop 4 is the center crop and crop 9 its mirror (torchvision's TenCrop order).

Order. The batch of global step t is a pure function of (seed, t, process_index,
process_count), so a run resumed at step t sees the batches of one never stopped:
- digits: an endless stream of the epochs' permutations of the training set, one after
  another (epoch e's permutation a function of (seed, e)); step t's global batch is stream
  rows [t*B, (t+1)*B), so batches may straddle two epochs and nothing is dropped. Crops
  and flips of step t come from a NumPy generator seeded by (seed, t).
- TFDS: each process's epoch e reads its part of the split in an order that is a
  function of (seed, e) (file and buffer shuffles seeded by it) and makes part // B_local
  batches of it (the < B_local left over are left out of that epoch only). Crops and flips
  are stateless, seeded by (seed, global row t*B + process_index*B_local + row).

Datasets (`config.dataset`):
- 'digits': scikit-learn's 1,797 8x8 handwritten digits, in memory, pure NumPy; no
  TensorFlow is imported. Values 0..16 are scaled to 0..255, upsampled to `resize_size`
  (bilinear, half-pixel centers, edges clamped: jax.image.resize's 'linear'), the gray
  channel tiled to RGB. A stratified train/test split fixed by `split_seed` (default
  `seed`). Every process computes the same global batch and keeps its rows
  [p*B_local, (p+1)*B_local): a 2-process run sees exactly the batches of a 1-process run.
- any TFDS image classification dataset with 'image' and 'label' features, e.g.
  'imagenet2012' (a missing manual download raises `DatasetUnavailableError`, saying where
  the tar files go). tf.data decodes, resizes the shorter side to `resize_size` (bilinear,
  antialiased), center-crops a square, subtracts the mean image (one streaming pass over
  the training split, cached as .npy under the data dir: `mean_image_path`), then takes
  stateless random crops and flips. Each process reads its own disjoint part of the split
  (`tfds.even_splits`). TensorFlow is imported lazily and kept off the GPU; no JAX runs
  inside tf.data. TFDS's GCS bucket is never consulted (`tfds_without_gcs`): the data dir
  holds the data, or the error says what to put there.

Config fields read (defaults in parentheses where optional): dataset, seed, batch_size,
eval_batch_size, image_size, resize_size, random_flip (False for digits, which are not
mirror-symmetric; True for TFDS), eval_split ('test' for digits, 'validation' otherwise),
train_split ('train'), data_dir (None: TFDS default), split_seed (seed; digits),
digits_test_fraction (0.2), digits_classes (() = all ten), mean_image_examples (0 = all),
num_train_examples / num_eval_examples (0 = from TFDS metadata, else counted),
shuffle_buffer (10000 examples; TFDS).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from typing import Any, Iterator, NamedTuple, Optional

import numpy as np

DIGITS = 'digits'
CROPS = ('center', 'ten')


class DatasetInfo(NamedTuple):
  """What the trainer needs to know about a dataset: label count, split sizes, input shape."""
  num_classes: int
  num_train: int
  num_eval: int
  image_shape: tuple  # (H, W, 3): the model's input


class UnknownDatasetError(ValueError):
  """The dataset name is neither digits nor a dataset TFDS knows."""


class DatasetUnavailableError(Exception):
  """The dataset's files are not on this machine and cannot be fetched (e.g. ImageNet)."""


# ----------------------------------------------------------------------------- config


def _get(config, name: str, default: Any) -> Any:
  """config.name if the config has the field (and it is not None), else `default`."""
  value = config.get(name, None) if hasattr(config, 'get') else getattr(config, name, None)
  return default if value is None else value


def _process(process_index: Optional[int], process_count: Optional[int]) -> tuple[int, int]:
  """(index, count), defaulting to JAX's view of this process."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count})')
  return process_index, process_count


def _local_batch_size(global_batch: int, process_count: int) -> int:
  """The per-process share of a global batch; the global batch must split evenly."""
  if global_batch % process_count:
    raise ValueError(f'batch size {global_batch} is not divisible by {process_count} processes')
  return global_batch // process_count


def _eval_split(config) -> str:
  """The split evaluated by default: 'test' for digits, 'validation' for TFDS datasets."""
  return _get(config, 'eval_split', 'test' if config.dataset == DIGITS else 'validation')


def _check_crops(crops: str) -> None:
  if crops not in CROPS:
    raise ValueError(f'crops must be one of {CROPS}, got {crops!r}')


# ----------------------------------------------------------------------------- NumPy ops


def resize_matrix(size_in: int, size_out: int) -> np.ndarray:
  """The (size_out, size_in) matrix of 1-D linear interpolation with half-pixel centers
  and clamped edges (jax.image.resize 'linear', tf.image.resize 'bilinear')."""
  x = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5
  x = np.clip(x, 0, size_in - 1)
  left = np.floor(x).astype(int)
  right = np.minimum(left + 1, size_in - 1)
  frac = x - left
  matrix = np.zeros((size_out, size_in))
  np.add.at(matrix, (np.arange(size_out), left), 1 - frac)
  np.add.at(matrix, (np.arange(size_out), right), frac)
  return matrix


def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
  """(N, h, w) -> (N, size, size), bilinear (separable: rows then columns)."""
  rows = resize_matrix(images.shape[1], size)
  cols = resize_matrix(images.shape[2], size)
  return np.einsum('ih,nhw,jw->nij', rows, images, cols)


def crop_offsets(size: int, crop: int) -> dict[str, tuple[int, int]]:
  """(top, left) of the five crops of a size x size image: corners and center."""
  far, mid = size - crop, (size - crop) // 2
  return {'top_left': (0, 0), 'top_right': (0, far), 'bottom_left': (far, 0),
          'bottom_right': (far, far), 'center': (mid, mid)}


def crop_np(images: np.ndarray, top: np.ndarray, left: np.ndarray, crop: int,
            flip: Optional[np.ndarray] = None) -> np.ndarray:
  """Per-example crops of an NHWC batch, crop x crop at (top[n], left[n]), mirrored
  left-right where flip[n]; one gather."""
  n = np.arange(len(images))
  rows = np.asarray(top)[:, None] + np.arange(crop)
  cols = np.asarray(left)[:, None] + np.arange(crop)
  if flip is not None:
    cols = np.where(np.asarray(flip)[:, None], cols[:, ::-1], cols)
  return images[n[:, None, None], rows[:, :, None], cols[:, None, :]]


def ten_crop_np(images: np.ndarray, crop: int) -> np.ndarray:
  """(N, S, S, C) -> (N, 10, crop, crop, C): corners and center, then the same mirrored."""
  n = len(images)
  views = []
  for flip in (False, True):
    for top, left in crop_offsets(images.shape[1], crop).values():
      views.append(crop_np(images, np.full(n, top), np.full(n, left), crop, np.full(n, flip)))
  return np.stack(views, axis=1)


def center_crop_np(images: np.ndarray, crop: int) -> np.ndarray:
  """(N, S, S, C) -> (N, crop, crop, C), the center crop."""
  top, left = crop_offsets(images.shape[1], crop)['center']
  return images[:, top:top + crop, left:left + crop]


# ----------------------------------------------------------------------------- order


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The order in which epoch `epoch` visits the n training examples."""
  return np.random.default_rng((seed, 0, epoch)).permutation(n)


def stream_rows(seed: int, n: int, start: int, count: int) -> np.ndarray:
  """Example indices at positions [start, start+count) of the endless stream of epoch
  permutations of n examples."""
  position = np.arange(start, start + count)
  epoch = position // n
  rows = np.empty(count, dtype=np.int64)
  for e in np.unique(epoch):
    rows[epoch == e] = epoch_permutation(seed, int(e), n)[position[epoch == e] % n]
  return rows


def augmentation_rng(seed: int, step: int) -> np.random.Generator:
  """The generator of step `step`'s crops and flips."""
  return np.random.default_rng((seed, 1, step))


# ----------------------------------------------------------------------------- digits


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
  """All of scikit-learn's digits (those in `classes`, labelled 0..len(classes)-1 in the
  order given; () = all ten) as (N, size, size, 3) float32 RGB on the 0-255 scale, before
  any mean subtraction, and int32 labels, in sklearn's order. 0..16 -> 0..255, bilinear
  upsampling 8 -> size, gray tiled to RGB."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
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
  gray = resize_bilinear(images * (255.0 / 16.0), size)
  return np.repeat(gray[..., None], 3, axis=-1).astype(np.float32), labels.astype(np.int32)


@functools.lru_cache(maxsize=8)
def load_digits(split_seed: int = 0, test_fraction: float = 0.2, size: int = 36,
                classes: tuple = ()) -> ArraySplits:
  """scikit-learn's digits preprocessed as the paper does ImageNet, split train/test.

  0..16 -> 0..255, bilinear upsampling 8 -> size, gray tiled to RGB, the training split's
  per-pixel mean image subtracted. The split is stratified by label and fixed by
  `split_seed`; each split is in increasing order of the original index. `classes`
  keeps only those digits, labelled 0..len(classes)-1 in the order given."""
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
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


def _digits(config) -> ArraySplits:
  """load_digits with the config's fields."""
  return load_digits(int(_get(config, 'split_seed', config.seed)),
                     float(_get(config, 'digits_test_fraction', 0.2)),
                     int(config.resize_size),
                     tuple(int(c) for c in _get(config, 'digits_classes', ())))


def _digits_split(config, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) of 'train' or 'test'."""
  data = _digits(config)
  if split == 'train':
    return data.train_images, data.train_labels
  if split == 'test':
    return data.test_images, data.test_labels
  raise ValueError(f"digits has splits 'train' and 'test', not {split!r}")


def digits_global_batch(config, step: int) -> dict[str, np.ndarray]:
  """The whole (all processes') training batch of step `step`."""
  images, labels = _digits_split(config, 'train')
  batch, crop, size = config.batch_size, config.image_size, images.shape[1]
  rows = stream_rows(config.seed, len(labels), step * batch, batch)
  rng = augmentation_rng(config.seed, step)
  top = rng.integers(0, size - crop + 1, size=batch)
  left = rng.integers(0, size - crop + 1, size=batch)
  flip = rng.random(batch) < 0.5 if _get(config, 'random_flip', False) else None
  return {'image': crop_np(images[rows], top, left, crop, flip), 'label': labels[rows]}


def _digits_train(config, start_step: int, index: int, count: int) -> Iterator[dict]:
  local = _local_batch_size(config.batch_size, count)
  step = start_step
  while True:
    batch = digits_global_batch(config, step)
    yield {k: v[index * local:(index + 1) * local] for k, v in batch.items()}
    step += 1


def _padded_batches(images: np.ndarray, labels: np.ndarray, global_batch: int, index: int,
                    count: int, view) -> Iterator[dict]:
  """Global batches of consecutive examples, the last padded (zeros, mask False); process
  `index` keeps rows [index*B_local, (index+1)*B_local) of each. `view` maps the selected
  (n, S, S, 3) images to the model's input (a crop or the ten crops)."""
  local = _local_batch_size(global_batch, count)
  n = len(labels)
  for first in range(0, n, global_batch):
    rows = first + index * local + np.arange(local)
    mask = rows < n
    rows = np.where(mask, rows, 0)
    image = view(images[rows])
    image[~mask] = 0
    yield {'image': image, 'label': np.where(mask, labels[rows], 0).astype(np.int32),
           'mask': mask}


def _digits_eval(config, split: str, crops: str, index: int, count: int) -> Iterator[dict]:
  images, labels = _digits_split(config, split)
  crop = config.image_size
  view = (lambda x: center_crop_np(x, crop).copy()) if crops == 'center' else (
      lambda x: ten_crop_np(x, crop))
  return _padded_batches(images, labels, config.eval_batch_size, index, count, view)


# ----------------------------------------------------------------------------- public API


def dataset_info(config) -> DatasetInfo:
  """Number of classes, of training and evaluation examples, and the model's input shape."""
  shape = (config.image_size, config.image_size, 3)
  if config.dataset == DIGITS:
    data = _digits(config)
    num_eval = len(_digits_split(config, _eval_split(config))[1])
    return DatasetInfo(data.num_classes, len(data.train_labels), num_eval, shape)
  return _tfds_info(config)._replace(image_shape=shape)


def train_batches(config, *, start_step: int = 0, process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> Iterator[dict]:
  """Training batches from step `start_step` on, forever: {'image': float32 (B_local, H, W,
  3), 'label': int32 (B_local,)} with B_local = batch_size // process_count. The batch of
  step t depends only on (seed, t, process_index, process_count)."""
  index, count = _process(process_index, process_count)
  if config.dataset == DIGITS:
    return _digits_train(config, start_step, index, count)
  return _tfds_train(config, start_step, index, count)


def eval_batches(config, *, split: Optional[str] = None, crops: str = 'center',
                 process_index: Optional[int] = None,
                 process_count: Optional[int] = None) -> Iterator[dict]:
  """The whole split (default config.eval_split), each example once, in a fixed order:
  {'image': (B_local, H, W, 3) or for crops='ten' (B_local, 10, H, W, 3), 'label': int32
  (B_local,), 'mask': bool (B_local,)}, B_local = eval_batch_size // process_count. Padding
  rows are zeros with mask False; every process yields the same number of batches."""
  _check_crops(crops)
  index, count = _process(process_index, process_count)
  split = split or _eval_split(config)
  if config.dataset == DIGITS:
    return _digits_eval(config, split, crops, index, count)
  return _tfds_eval(config, split, crops, index, count)


def mean_image(config) -> np.ndarray:
  """The training set's per-pixel mean image, (resize_size, resize_size, 3) float32 on the
  0-255 scale: add it back to a batch's images to see them. For TFDS datasets this is the
  cached file (computed on first use, see `tfds_mean_image`)."""
  if config.dataset == DIGITS:
    return np.asarray(_digits(config).mean_image)
  return tfds_mean_image(config)




# ----------------------------------------------------------------------------- TF ops
# Pure TensorFlow functions of one example, used eagerly and inside tf.data alike.


@functools.lru_cache(maxsize=None)
def _tf():
  """TensorFlow and TFDS, imported on first use and kept off any accelerator."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # already initialized by someone else: leave it
    pass
  return tf, tfds


def decode_image(encoded):
  """Encoded bytes (JPEG, PNG, ...) -> (h, w, 3) uint8; gray images tiled to RGB."""
  tf, _ = _tf()
  return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def resize_and_center_crop(image, size: int):
  """(h, w, 3) -> (size, size, 3) float32 on 0-255: the shorter side resized to `size`
  (bilinear, antialiased when shrinking), then the central size x size square. Images
  smaller than `size` are enlarged, so any input size works."""
  tf, _ = _tf()
  shape = tf.shape(image)[:2]
  scale = size / tf.cast(tf.reduce_min(shape), tf.float64)
  new_shape = tf.maximum(size, tf.cast(tf.round(tf.cast(shape, tf.float64) * scale), tf.int32))
  resized = tf.image.resize(image, new_shape, method='bilinear', antialias=True)
  top, left = (new_shape[0] - size) // 2, (new_shape[1] - size) // 2
  square = tf.image.crop_to_bounding_box(resized, top, left, size, size)
  return tf.ensure_shape(tf.clip_by_value(square, 0.0, 255.0), (size, size, 3))


def random_crop_flip(image, seed, crop: int, flip: bool):
  """A crop x crop window of (S, S, C) `image` at a uniformly random position, mirrored
  left-right with probability 1/2 if `flip`; a pure function of `seed` (shape (2,) int)."""
  tf, _ = _tf()
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  out = tf.image.stateless_random_crop(image, (crop, crop, image.shape[-1]), crop_seed)
  if flip:
    out = tf.image.stateless_random_flip_left_right(out, flip_seed)
  return out


def center_crop(image, crop: int):
  """The central crop x crop window of (S, S, C) `image`."""
  tf, _ = _tf()
  size = image.shape[0]
  top = (size - crop) // 2
  return tf.image.crop_to_bounding_box(image, top, top, crop, crop)


def ten_crop(image, crop: int):
  """(S, S, C) -> (10, crop, crop, C): 4 corners and center, then the same 5 mirrored."""
  tf, _ = _tf()
  views = [tf.image.crop_to_bounding_box(image, top, left, crop, crop)
           for top, left in crop_offsets(image.shape[0], crop).values()]
  views = tf.stack(views)
  return tf.concat([views, tf.reverse(views, axis=[2])], axis=0)


# ----------------------------------------------------------------------------- TFDS


def _data_dir(config) -> str:
  """config.data_dir, or TFDS's default (~/tensorflow_datasets, $TFDS_DATA_DIR)."""
  _, tfds = _tf()
  return os.path.expanduser(_get(config, 'data_dir', tfds.core.constants.get_default_data_dir()))


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
  """TFDS with its public bucket (gs://tfds-data) switched off for the block: builders
  made inside take their metadata from the data dir or from the dataset's code only.

  Why: a builder whose data dir holds no prepared copy of its dataset (absent data, or a
  manual download not yet prepared, e.g. imagenet2012; also tfds.ImageFolder) asks that
  bucket for its DatasetInfo while it is constructed (DatasetBuilder.__init__ ->
  DatasetInfo.initialize_from_bucket -> gcs_utils.gcs_dataset_info_files). TFDS 4.9.6 and
  4.9.7 do so by default (from 4.9.8 the lookup is off by default), through tf.io.gfile's
  GCS client, in C++ (libcurl): offline it fails at once, on a network that drops packets
  it waits 61 s per attempt and retries. The switch is TFDS's own, the flag that
  `tfds.testing.disable_gcs_access` sets; `try_gcs=False` and
  `DownloadConfig(try_download_gcs=False)` (tfds.builder's documented way to "fully bypass
  GCS") turn off the bucket's prepared copies, not this lookup. The flag is restored on
  exit, so nothing else in the process is affected."""
  from tensorflow_datasets.core.utils import gcs_utils  # pylint: disable=g-import-not-at-top
  previous = getattr(gcs_utils, '_is_gcs_disabled', True)
  gcs_utils._is_gcs_disabled = True  # pylint: disable=protected-access
  try:
    yield
  finally:
    gcs_utils._is_gcs_disabled = previous  # pylint: disable=protected-access


def tfds_builder(config):
  """The TFDS builder of config.dataset, prepared (downloaded and converted) if it is not;
  raises DatasetUnavailableError when its manual download is missing. Never consults
  TFDS's GCS bucket (`tfds_without_gcs`): the data dir is the only source."""
  _, tfds = _tf()
  data_dir = _data_dir(config)
  with tfds_without_gcs():
    try:
      builder = tfds.builder(config.dataset, data_dir=data_dir, try_gcs=False)
    except tfds.core.DatasetNotFoundError as e:
      suggestion = re.search(r'Did you mean: \S+ -> (\S+) \?', str(e))
      hint = f' (did you mean {suggestion.group(1)!r}?)' if suggestion else ''
      raise UnknownDatasetError(f'unknown dataset {config.dataset!r}: neither {DIGITS!r} nor '
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


def _read(builder, split, *, seed: Optional[int] = None):
  """The raw examples of `split` with undecoded images; files and records shuffled by
  `seed`, or in stored order when seed is None."""
  tf, tfds = _tf()
  options = tf.data.Options()
  options.deterministic = True
  read_config = tfds.ReadConfig(options=options, try_autocache=False, shuffle_seed=seed,
                                shuffle_reshuffle_each_iteration=False)
  return builder.as_dataset(split=split, shuffle_files=seed is not None, read_config=read_config,
                            decoders={'image': tfds.decode.SkipDecoding()})


def num_examples(builder, split) -> int:
  """Examples in a split or sub-split: from TFDS's metadata, else (e.g. under
  tfds.testing.mock_data, where info.splits is empty) the dataset's cardinality or a count."""
  try:
    return int(builder.info.splits[split].num_examples)
  except (KeyError, ValueError, TypeError):
    pass
  ds = _read(builder, split)
  cardinality = int(ds.cardinality())
  if cardinality >= 0:
    return cardinality
  return int(ds.reduce(np.int64(0), lambda n, _: n + 1))


def _split_size(config, builder, split: str, field: str) -> int:
  """config.<field> if > 0, else the split's size."""
  value = int(_get(config, field, 0))
  return value if value > 0 else num_examples(builder, split)


def _tfds_info(config) -> DatasetInfo:
  builder = tfds_builder(config)
  train = _split_size(config, builder, _get(config, 'train_split', 'train'), 'num_train_examples')
  evals = _split_size(config, builder, _eval_split(config), 'num_eval_examples')
  num_classes = builder.info.features['label'].num_classes
  return DatasetInfo(num_classes, train, evals, (config.image_size, config.image_size, 3))


def mean_image_path(config) -> str:
  """Where the mean image of config's dataset, training split and resize_size is cached."""
  cap = int(_get(config, 'mean_image_examples', 0))
  name = config.dataset.replace('/', '_').replace(':', '_')
  split = _get(config, 'train_split', 'train').replace('/', '_')
  suffix = f'_first{cap}' if cap > 0 else ''
  return os.path.join(_data_dir(config), 'zfjax_mean_images',
                      f'{name}_{split}_mean_{config.resize_size}px{suffix}.npy')


def compute_mean_image(builder, split, size: int, max_examples: int = 0,
                       batch_size: int = 64) -> np.ndarray:
  """One streaming pass over `split` (its first max_examples examples if > 0): the mean of
  the resized and center-cropped images, (size, size, 3), accumulated in float64."""
  tf, _ = _tf()
  ds = _read(builder, split)
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
  """The training split's mean image: read from `mean_image_path(config)`, or computed
  (`compute_mean_image`, config.mean_image_examples caps the pass; 0 = all) and saved
  there. ImageNet's full pass decodes 1.28M JPEGs once (tens of minutes to hours on a few
  cores): run it once before a multi-host job, whose processes then all read the file.

  The file is written only for prepared datasets or an explicit config.data_dir, so a
  test under tfds.testing.mock_data never leaves a mean of random images in the default
  data dir for a real run to pick up."""
  path = mean_image_path(config)
  if os.path.exists(path):
    return np.load(path)
  builder = builder or tfds_builder(config)
  mean = compute_mean_image(builder, _get(config, 'train_split', 'train'), config.resize_size,
                            int(_get(config, 'mean_image_examples', 0)))
  if not (builder.is_prepared() or _get(config, 'data_dir', None)):
    return mean
  os.makedirs(os.path.dirname(path), exist_ok=True)
  temp = f'{path}.tmp{os.getpid()}.npy'
  np.save(temp, mean)
  os.replace(temp, path)  # atomic: concurrent processes never read half a file
  return mean


def _preprocess(example, mean, size: int):
  """Decoded, resized, center-cropped, mean-subtracted float32 image and int32 label."""
  tf, _ = _tf()
  image = resize_and_center_crop(decode_image(example['image']), size) - mean
  return image, tf.cast(example['label'], tf.int32)


def _epoch_seed(seed: int, epoch: int) -> int:
  """The shuffle seed of one epoch: a 63-bit function of (seed, epoch)."""
  return int(np.random.default_rng((seed, 0, epoch)).integers(2**63 - 1))


def _tfds_train_epoch(config, builder, part, mean, epoch: int, steps_per_epoch: int,
                      skip_steps: int, index: int, count: int):
  """Epoch `epoch` of this process as a tf.data pipeline of batches, from its batch
  `skip_steps` on. The skipped examples are read but not decoded."""
  tf, _ = _tf()
  local = config.batch_size // count
  size, crop, flip = config.resize_size, config.image_size, bool(_get(config, 'random_flip', True))
  seed = _epoch_seed(config.seed, epoch)
  ds = _read(builder, part, seed=seed)
  ds = ds.shuffle(int(_get(config, 'shuffle_buffer', 10_000)), seed=seed,
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


def _tfds_train(config, start_step: int, index: int, count: int) -> Iterator[dict]:
  """Training batches of a TFDS dataset. Epochs are whole passes over this process's part
  of the split (tfds.even_splits), each of steps_per_epoch = part size // B_local steps
  (the remainder, < B_local examples, is left out of that epoch; another epoch's order
  includes them). Epoch e's file and example order is a function of (seed, e), so a
  resumed run starts at epoch start_step // steps_per_epoch directly and reads (without
  decoding) the first start_step % steps_per_epoch batches of that epoch to skip them: at
  most one epoch of file reading, no image decoding."""
  _, tfds = _tf()
  local = _local_batch_size(config.batch_size, count)
  if config.image_size > config.resize_size:
    raise ValueError(f'image_size {config.image_size} > resize_size {config.resize_size}')
  builder = tfds_builder(config)
  part = tfds.even_splits(_get(config, 'train_split', 'train'), n=count)[index]
  steps_per_epoch = num_examples(builder, part) // local
  if steps_per_epoch == 0:
    raise ValueError(f'process {index} has fewer training examples than its batch {local}')
  mean = tfds_mean_image(config, builder)

  def batches():
    epoch, skip = divmod(start_step, steps_per_epoch)
    while True:
      yield from tfds.as_numpy(_tfds_train_epoch(
          config, builder, part, mean, epoch, steps_per_epoch, skip, index, count))
      epoch, skip = epoch + 1, 0
  return batches()


def _tfds_eval(config, split: str, crops: str, index: int, count: int) -> Iterator[dict]:
  """The whole split, each process its own part (tfds.even_splits: sizes differ by at most
  one), in stored order, padded with masked zero examples to the same number of batches
  in every process."""
  tf, tfds = _tf()
  local = _local_batch_size(config.eval_batch_size, count)
  builder = tfds_builder(config)
  parts = tfds.even_splits(split, n=count)
  sizes = [num_examples(builder, part) for part in parts]
  num_batches = -(-max(sizes) // local)
  mean = tf.constant(tfds_mean_image(config, builder))
  size, crop = config.resize_size, config.image_size
  view = functools.partial(center_crop if crops == 'center' else ten_crop, crop=crop)

  def prepare(example):
    image, label = _preprocess(example, mean, size)
    return {'image': view(image), 'label': label, 'mask': tf.constant(True)}

  ds = _read(builder, parts[index]).map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  padding = tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype), ds.element_spec)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat())
  ds = ds.take(num_batches * local).batch(local).prefetch(2)
  return iter(tfds.as_numpy(ds))
