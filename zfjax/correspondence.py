"""Correspondence of object parts across images (Zeiler & Fergus, Sec. 4.3, Table 1).

    result = correspondence.correspondence(model, variables, dogs, right_eye_boxes,
                                           key=jax.random.key(0))
    result.delta['conv5'], result.random_mean['conv5'], result.random_std['conv5']
    rows = correspondence.table(model, variables, dogs,
                                {'right eye': r, 'left eye': l, 'nose': n})
    rows['mean'][i, j], rows['std'][i, j]   # row rows['rows'][i], layer rows['columns'][j]

Semantics and the choices the paper leaves open: docs/analyses.md (zfjax.correspondence).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zfjax import architecture, invariance, models

Array = jax.Array

DEFAULT_LAYERS = ('conv5', 'fc7')
NUM_RANDOM = 10


class Correspondence(NamedTuple):
  """Delta per layer for one part and for the random baseline."""
  delta: dict[str, Array]          # layer -> () Delta for the given part
  pair_std: dict[str, Array]       # layer -> () std over pairs of the part's distances
  random_mean: dict[str, Array]    # layer -> () mean Delta over the random draws
  random_std: dict[str, Array]     # layer -> () std of Delta over the random draws
  random_deltas: dict[str, Array]  # layer -> (R,) Delta of each random draw
  random_boxes: Array              # (R, N, 4) the random boxes used


# ----------------------------------------------------------------------- the measure


def signs(eps: Array, tolerance=0.0) -> Array:
  """-1, 0, +1 per coordinate; |eps| <= tolerance counts as 0."""
  return jnp.where(jnp.abs(eps) <= tolerance, 0.0, jnp.sign(eps)).astype(jnp.float32)


def hamming_matrix(eps: Array, tolerance=0.0) -> Array:
  """(N, N) fraction of coordinates where sign(eps_i) != sign(eps_j).

  Eps (N, ...) flattened per row. 0 vs 0 agrees; 0 vs +-1 differs."""
  flat = signs(eps, tolerance).reshape(eps.shape[0], -1)
  one_hot = jnp.stack([flat == -1.0, flat == 0.0, flat == 1.0], axis=-1).astype(jnp.float32)
  agree = jnp.einsum('idk,jdk->ij', one_hot, one_hot, precision=lax.Precision.HIGHEST)
  length = flat.shape[1]
  return (length - agree) / length  # counts are exact in float32 below 2**24


def delta(eps: Array, tolerance=0.0) -> Array:
  """Delta = sum over pairs i != j of Hamming(sign eps_i, sign eps_j) / (D N (N - 1))."""
  num = eps.shape[0]
  return jnp.sum(hamming_matrix(eps, tolerance)) / (num * (num - 1))


def pair_std(eps: Array, tolerance=0.0) -> Array:
  """Standard deviation of the normalized Hamming distances over the unordered pairs."""
  num = eps.shape[0]
  upper = jnp.triu_indices(num, k=1)
  return jnp.std(hamming_matrix(eps, tolerance)[upper])


# ------------------------------------------------------------------------ occlusions


def occlude(images: Array, boxes: Array, fill=0.0) -> Array:
  """images (N, H, W, C) with box n = (row, col, height, width) of image n set to fill."""
  _, height, width, _ = images.shape
  boxes = jnp.asarray(boxes)
  row, col, box_height, box_width = (boxes[:, k, None] for k in range(4))
  rows, cols = jnp.arange(height)[None], jnp.arange(width)[None]
  in_rows = (rows >= row) & (rows < row + box_height)            # (N, H)
  in_cols = (cols >= col) & (cols < col + box_width)             # (N, W)
  inside = in_rows[:, :, None, None] & in_cols[:, None, :, None]
  return jnp.where(inside, jnp.asarray(fill, images.dtype), images)


def draw_random_boxes(key: Array, boxes: Array, image_shape: Sequence[int],
                 num_random: int = NUM_RANDOM) -> Array:
  """Boxes of the given sizes at uniformly random positions inside the image.

  (num_random, N, 4): boxes of the given heights and widths at uniformly random
  positions fully inside an image of shape (H, W, ...)."""
  boxes = jnp.asarray(boxes)
  height, width = image_shape[:2]
  sizes = boxes[:, 2:]
  row_key, col_key = jax.random.split(key)
  shape = (num_random, boxes.shape[0])
  rows = jax.random.randint(row_key, shape, 0, height - sizes[:, 0] + 1)
  cols = jax.random.randint(col_key, shape, 0, width - sizes[:, 1] + 1)
  return jnp.stack([rows, cols, jnp.broadcast_to(sizes[:, 0], shape),
                    jnp.broadcast_to(sizes[:, 1], shape)], axis=-1).astype(boxes.dtype)


# ------------------------------------------------------------------------ the analysis


def correspondence(model: models.ConvNet, variables, images: Array, boxes,
                   layers: Sequence[str] = DEFAULT_LAYERS, fill=0.0, random_boxes=None,
                   num_random: int = NUM_RANDOM, key: Array | None = None,
                   tolerance=0.0, batch_size: int = 4) -> Correspondence:
  """Delta_l for one part and for random occlusions of the same sizes.

  Args:
    model, variables: the convnet and its variables.
    images: (N, H, W, 3), N >= 2, in the model's input space.
    boxes: (N, 4) integer (row, col, height, width) of the part in each image.
    layers: named layers (default conv5 and fc7, the paper's layers 5 and 7).
    fill: the occluder's value (0.0 = the mean pixel).
    random_boxes: (R, N, 4) boxes for the random baseline; None draws `num_random` sets
      with `key` (see `draw_random_boxes`).
    num_random: number of random draws when random_boxes is None.
    key: jax.random.key for the draws; None means jax.random.key(0).
    tolerance: |eps| <= tolerance has sign 0 (default 0: only exact zeros).
    batch_size: occlusion sets (of N images each) per forward pass.
  """
  layers = tuple(layers)
  part, random_sets = _check(model, images, {'boxes': boxes}, layers, random_boxes,
                             num_random, batch_size)
  if random_sets is None:
    key = jax.random.key(0) if key is None else key
    random_sets = draw_random_boxes(key, part[0], images.shape[1:], num_random)
  box_sets = jnp.concatenate([jnp.asarray(part), jnp.asarray(random_sets)])
  deltas, stds = _deltas(model, variables, jnp.asarray(images, jnp.float32), box_sets,
                         jnp.asarray(fill, jnp.float32), jnp.asarray(tolerance, jnp.float32),
                         layers=layers, batch_size=batch_size)
  return Correspondence(
      delta={name: deltas[name][0] for name in layers},
      pair_std={name: stds[name][0] for name in layers},
      random_mean={name: jnp.mean(deltas[name][1:]) for name in layers},
      random_std={name: jnp.std(deltas[name][1:]) for name in layers},
      random_deltas={name: deltas[name][1:] for name in layers},
      random_boxes=jnp.asarray(random_sets))


def table(model: models.ConvNet, variables, images: Array, parts: dict,
          layers: Sequence[str] = DEFAULT_LAYERS, fill=0.0, num_random: int = NUM_RANDOM,
          key: Array | None = None, tolerance=0.0, batch_size: int = 4) -> dict:
  """Table 1: one row per part (name -> (N, 4) boxes) and a last row 'random'.

  Returns {'rows': part names + ('random',), 'columns': layers, 'mean': (P+1, L),
  'std': (P+1, L)}: a part's mean is its Delta and its std the spread over pairs; the
  random row's are the mean and std of Delta over `num_random` draws. The random boxes
  take the sizes of the first part's boxes.
  """
  layers = tuple(layers)
  names = tuple(parts)
  labelled = {f'boxes of {name!r}': boxes for name, boxes in parts.items()}
  part_sets, _ = _check(model, images, labelled, layers, None, num_random, batch_size)
  key = jax.random.key(0) if key is None else key
  random_sets = draw_random_boxes(key, part_sets[0], images.shape[1:], num_random)
  box_sets = jnp.concatenate([jnp.asarray(part_sets), random_sets])
  deltas, stds = _deltas(model, variables, jnp.asarray(images, jnp.float32), box_sets,
                         jnp.asarray(fill, jnp.float32), jnp.asarray(tolerance, jnp.float32),
                         layers=layers, batch_size=batch_size)
  num_parts = len(names)
  mean = jnp.stack([jnp.concatenate([deltas[name][:num_parts],
                                     jnp.mean(deltas[name][num_parts:])[None]])
                    for name in layers], axis=1)
  std = jnp.stack([jnp.concatenate([stds[name][:num_parts],
                                    jnp.std(deltas[name][num_parts:])[None]])
                   for name in layers], axis=1)
  return {'rows': names + ('random',), 'columns': layers, 'mean': mean, 'std': std}


@functools.partial(jax.jit, static_argnames=('model', 'layers', 'batch_size'))
def _deltas(model, variables, images, box_sets, fill, tolerance, *, layers, batch_size):
  """Delta and pair std per layer for each of S occlusion sets (S, N, 4): (S,) each.

  The originals run in the same forward pass as their occluded copies, so units that the
  occluder cannot reach get eps exactly 0 even where a backend's arithmetic depends on the
  batch size."""
  num_images = images.shape[0]

  def one_set(boxes):
    both = jnp.concatenate([images, occlude(images, boxes, fill)])
    outputs = models.activations(model, variables, both, layers)
    eps = {name: outputs[name][:num_images] - outputs[name][num_images:] for name in layers}
    return ({name: delta(eps[name], tolerance) for name in layers},
            {name: pair_std(eps[name], tolerance) for name in layers})

  return invariance.padded_map(one_set, box_sets, batch_size)


# ------------------------------------------------------------------------- checking


def _check(model, images, parts, layers, random_sets, num_random, batch_size):
  """The part boxes and random boxes, validated, as numpy.

  Validated (P, N, 4) part boxes ({name in messages: boxes}) and (R, N, 4) random
  boxes (or None), as numpy."""
  models.check_images(images, model.spec)
  num_images, height, width, _ = images.shape
  if num_images < 2:
    raise ValueError(f'images: expected at least 2 images (Delta compares pairs), got '
                     f'shape {images.shape}')
  architecture.check_layers(model.spec, layers)
  if not parts:
    raise ValueError('parts: expected at least one part (name -> (N, 4) boxes)')
  part_sets = np.stack([_check_boxes(what, boxes, (num_images, 4), height, width)
                        for what, boxes in parts.items()])
  if random_sets is not None:
    random_sets = _check_boxes('random_boxes', random_sets, (None, num_images, 4),
                               height, width)
  elif not isinstance(num_random, int) or num_random < 2:
    raise ValueError(f'num_random: expected an int >= 2 (a mean and a spread), got '
                     f'{num_random!r}')
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f'batch_size: expected a positive int, got {batch_size!r}')
  return part_sets, random_sets


def _check_boxes(what, boxes, shape, height, width) -> np.ndarray:
  try:
    boxes = np.asarray(boxes)
  except jax.errors.TracerArrayConversionError as error:
    raise ValueError(f'{what}: expected concrete boxes (not traced under jit)') from error
  expected = '(' + ', '.join('R' if size is None else str(size) for size in shape) + ')'
  if boxes.ndim != len(shape) or any(size is not None and size != got
                                     for size, got in zip(shape, boxes.shape)):
    raise ValueError(f'{what}: expected shape {expected} of (row, col, height, width), '
                     f'got {boxes.shape}')
  if boxes.size == 0:
    raise ValueError(f'{what}: expected shape {expected} with R >= 1, got {boxes.shape}')
  if not np.issubdtype(boxes.dtype, np.integer):
    if not np.all(boxes == np.round(boxes)):
      raise ValueError(f'{what}: expected whole pixels, got {boxes}')
    boxes = boxes.astype(np.int32)
  row, col, box_height, box_width = np.moveaxis(boxes, -1, 0)
  if np.any(box_height < 1) or np.any(box_width < 1):
    raise ValueError(f'{what}: expected positive heights and widths, got {boxes}')
  if (np.any(row < 0) or np.any(col < 0) or np.any(row + box_height > height)
      or np.any(col + box_width > width)):
    raise ValueError(f'{what}: expected boxes inside the {height}x{width} image '
                     f'(0 <= row, row + height <= {height}, 0 <= col, col + width <= '
                     f'{width}), got {boxes}')
  return boxes.astype(np.int32)
