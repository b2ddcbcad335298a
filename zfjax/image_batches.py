"""Image batches on the host, in NumPy: resizing, crops, and each process's share.

    images = image_batches.resize_bilinear(gray, 36)          # (N, h, w) -> (N, 36, 36)
    x = image_batches.center_crop_batch(images, 32)           # (N, S, S, C) -> (N, 32, 32, C)
    x = image_batches.ten_crop_batch(images, 32)              # (N, 10, 32, 32, C)
    local = image_batches.local_batch_size(128, jax.process_count())

What the digits source and the TFDS source of `zfjax.input_pipeline` share (the TFDS one
does its per-example crops in TensorFlow, `tfds_data.tf_center_crop` and `tf_ten_crop`,
at the offsets `crop_offsets` gives). One picture's center crop is
`zfjax.preprocess.center_crop`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import numpy as np

CROPS = ('center', 'ten')  # the evaluation views: the center crop, or the ten crops


def config_value(config, name: str, default: Any) -> Any:
  """`config.name` if the config has the field and it is not None, else `default`."""
  value = config.get(name, None) if hasattr(config, 'get') else getattr(config, name, None)
  return default if value is None else value


def local_batch_size(global_batch: int, process_count: int) -> int:
  """The per-process share of a global batch; the global batch must split evenly."""
  if global_batch % process_count:
    raise ValueError(f'batch size {global_batch} is not divisible by {process_count} processes')
  return global_batch // process_count


def check_crops(crops: str) -> None:
  """ValueError unless `crops` is one of CROPS."""
  if crops not in CROPS:
    raise ValueError(f'crops must be one of {CROPS}, got {crops!r}')


# ---------------------------------------------------------------------------- resizing


def resize_matrix(size_in: int, size_out: int) -> np.ndarray:
  """The (size_out, size_in) matrix of 1-D linear interpolation.

  Half-pixel centers and clamped edges, as jax.image.resize 'linear' and tf.image.resize
  'bilinear'.
  """
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


# ------------------------------------------------------------------------------- crops


def crop_offsets(size: int, crop: int) -> dict[str, tuple[int, int]]:
  """(top, left) of the five crops of a size x size image: corners and center."""
  far, mid = size - crop, (size - crop) // 2
  return {'top_left': (0, 0), 'top_right': (0, far), 'bottom_left': (far, 0),
          'bottom_right': (far, far), 'center': (mid, mid)}


def crop_batch(images: np.ndarray, top: np.ndarray, left: np.ndarray, crop: int,
               flip: Optional[np.ndarray] = None) -> np.ndarray:
  """Per-example crops of an NHWC batch, in one gather.

  Example n's crop is crop x crop at (top[n], left[n]), mirrored left-right where flip[n].
  """
  n = np.arange(len(images))
  rows = np.asarray(top)[:, None] + np.arange(crop)
  cols = np.asarray(left)[:, None] + np.arange(crop)
  if flip is not None:
    cols = np.where(np.asarray(flip)[:, None], cols[:, ::-1], cols)
  return images[n[:, None, None], rows[:, :, None], cols[:, None, :]]


def ten_crop_batch(images: np.ndarray, crop: int) -> np.ndarray:
  """(N, S, S, C) -> (N, 10, crop, crop, C): corners and center, then the same mirrored."""
  n = len(images)
  views = []
  for flip in (False, True):
    for top, left in crop_offsets(images.shape[1], crop).values():
      views.append(crop_batch(images, np.full(n, top), np.full(n, left), crop,
                              np.full(n, flip)))
  return np.stack(views, axis=1)


def center_crop_batch(images: np.ndarray, crop: int) -> np.ndarray:
  """(N, S, S, C) -> (N, crop, crop, C), the center crop of each image (a view)."""
  top, left = crop_offsets(images.shape[1], crop)['center']
  return images[:, top:top + crop, left:left + crop]


# -------------------------------------------------------------------- evaluation batches


def padded_batches(images: np.ndarray, labels: np.ndarray, global_batch: int, index: int,
                   count: int, view: Callable[[np.ndarray], np.ndarray]) -> Iterator[dict]:
  """Global batches of consecutive examples, the last one padded.

  Padding rows are zeros with mask False; process `index` of `count` keeps rows
  [index*B_local, (index+1)*B_local) of each. `view` maps the selected (n, S, S, 3)
  images to the model's input (a crop or the ten crops).
  """
  local = local_batch_size(global_batch, count)
  n = len(labels)
  for first in range(0, n, global_batch):
    rows = first + index * local + np.arange(local)
    mask = rows < n
    rows = np.where(mask, rows, 0)
    image = view(images[rows])
    image[~mask] = 0
    yield {'image': image, 'label': np.where(mask, labels[rows], 0).astype(np.int32),
           'mask': mask}
