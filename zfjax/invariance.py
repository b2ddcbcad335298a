"""Invariance to vertical translation, scale and rotation (Zeiler & Fergus, Sec. 4.4, Fig. 5).

    result = invariance.sweep(model, variables, images, labels, invariance.rotate,
                              invariance.ROTATION_DEGREES)
    result.distance['conv1']   # (N, A): ||f(x) - f(T_a x)||_2 at conv1, image n, amount a
    result.probability         # (N, A): softmax probability of labels[n]
    result.top_class           # (N, A): the most probable class
    sweeps = invariance.paper_sweeps(model, variables, images, labels)  # Fig. 5's three rows

Semantics and the choices the paper leaves open: docs/analyses.md (zfjax.invariance).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zfjax import architecture, models

Array = jax.Array

TRANSLATION_PIXELS = np.arange(-60, 61, 5, dtype=np.float32)
SCALE_FACTORS = np.round(np.linspace(1.0, 1.8, 17), 4).astype(np.float32)
ROTATION_DEGREES = np.arange(0, 360, 10, dtype=np.float32)
DEFAULT_LAYERS = ('conv1', 'fc7')


class Sweep(NamedTuple):
  """One transform's sweep over N images and A amounts."""
  amounts: Array              # (A,)
  distance: dict[str, Array]  # layer -> (N, A) Euclidean distance to the untransformed image
  probability: Array          # (N, A) softmax probability of the true label
  top_class: Array            # (N, A) most probable class


# ------------------------------------------------------------------------- transforms


@jax.jit
def translate(images: Array, rows, cols, fill=0.0) -> Array:
  """Content moved down by `rows` and right by `cols` pixels (may be fractional)."""
  rows = jnp.asarray(rows, jnp.float32)
  cols = jnp.asarray(cols, jnp.float32)
  return _warp(images, lambda r, c: (r - rows, c - cols), fill)


def translate_vertical(images: Array, pixels, fill=0.0) -> Array:
  """Content moved down by `pixels` (up if negative); uncovered rows take `fill`."""
  return translate(images, pixels, 0.0, fill)


@jax.jit
def scale(images: Array, factor, fill=0.0) -> Array:
  """Zoom about the image centre: factor > 1 enlarges the content."""
  factor = jnp.asarray(factor, jnp.float32)
  def source(r, c, cr, cc):
    return cr + (r - cr) / factor, cc + (c - cc) / factor
  return _warp(images, source, fill, centred=True)


@jax.jit
def rotate(images: Array, degrees, fill=0.0) -> Array:
  """Rotation about the image centre, counter-clockwise as displayed; 90 = jnp.rot90."""
  cos, sin = _cos_sin(jnp.asarray(degrees, jnp.float32))
  def source(r, c, cr, cc):
    dr, dc = r - cr, c - cc
    return cr + cos * dr + sin * dc, cc - sin * dr + cos * dc
  return _warp(images, source, fill, centred=True)


def _cos_sin(degrees: Array) -> tuple[Array, Array]:
  """cos and sin of an angle in degrees, exact (0, +-1) at multiples of 90.

  The angle is split into quarter turns, applied by swapping, and a remainder in [-45, 45]."""
  quarter = jnp.round(degrees / 90.0)
  rest = jnp.deg2rad(degrees - 90.0 * quarter)
  c, s = jnp.cos(rest), jnp.sin(rest)
  turns = jnp.mod(quarter, 4).astype(jnp.int32)
  cos = jnp.select([turns == 0, turns == 1, turns == 2], [c, -s, -c], s)
  sin = jnp.select([turns == 0, turns == 1, turns == 2], [s, c, -s], -c)
  return cos, sin


def _warp(images: Array, source: Callable, fill, centred: bool = False) -> Array:
  """Output pixel (r, c) = bilinear sample of the input at source(r, c) [, centre].

  Points outside take `fill`. Works on (H, W, C) or (N, H, W, C)."""
  images = jnp.asarray(images)
  if images.ndim not in (3, 4):
    raise ValueError(f'expected an (H, W, C) image or an (N, H, W, C) batch, got shape '
                     f'{images.shape}')
  if images.ndim == 4:
    return jax.vmap(lambda image: _warp(image, source, fill, centred))(images)
  height, width = images.shape[:2]
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                            jnp.arange(width, dtype=jnp.float32), indexing='ij')
  if centred:
    src_rows, src_cols = source(rows, cols, (height - 1) / 2.0, (width - 1) / 2.0)
  else:
    src_rows, src_cols = source(rows, cols)
  # Sample the channels and a plane of ones with cval 0: the ones give each output's
  # weight inside the image, the rest of the weight goes to `fill` (a traced value is fine,
  # unlike map_coordinates' static cval).
  planes = jnp.concatenate([images, jnp.ones_like(images[..., :1])], axis=-1)
  sample = lambda plane: jax.scipy.ndimage.map_coordinates(
      plane, (src_rows, src_cols), order=1, mode='constant', cval=0.0)
  sampled = jax.vmap(sample, in_axes=2, out_axes=2)(planes)
  inside = sampled[..., -1:]
  return sampled[..., :-1] + jnp.asarray(fill, images.dtype) * (1.0 - inside)


# ----------------------------------------------------------------------------- sweeps


def sweep(model: models.ConvNet, variables, images: Array, labels: Array,
          transform: Callable, amounts, layers: Sequence[str] = DEFAULT_LAYERS,
          fill=0.0, batch_size: int = 4) -> Sweep:
  """Features and predictions of every image under every amount of one transform.

  Args:
    model, variables: the convnet and its variables.
    images: (N, H, W, 3) in the model's input space.
    labels: (N,) true classes.
    transform: `transform(images, amount, fill)` -> images of the same shape, e.g.
      `translate_vertical`, `scale` or `rotate`. Static under jit: pass the same function
      object each time (a fresh lambda or partial recompiles).
    amounts: (A,) amounts, e.g. TRANSLATION_PIXELS, SCALE_FACTORS, ROTATION_DEGREES.
    layers: named layers whose flattened outputs are compared (default conv1 and fc7,
      our reading of the paper's layers 1 and 7).
    fill: the value of pixels from outside the image (0.0 = the mean pixel).
    batch_size: amounts per forward pass (each pass holds batch_size x N images).
  """
  layers = tuple(layers)
  _check(model, images, labels, amounts, layers, transform, batch_size)
  return _sweep(model, variables, jnp.asarray(images, jnp.float32), jnp.asarray(labels),
                jnp.asarray(amounts, jnp.float32), jnp.asarray(fill, jnp.float32),
                transform=transform, layers=layers, batch_size=batch_size)


def paper_sweeps(model: models.ConvNet, variables, images: Array, labels: Array,
                 layers: Sequence[str] = DEFAULT_LAYERS, fill=0.0,
                 batch_size: int = 4) -> dict[str, Sweep]:
  """Fig. 5's three rows on the default grids: {'translation', 'scale', 'rotation'}."""
  grids = {'translation': (translate_vertical, TRANSLATION_PIXELS),
           'scale': (scale, SCALE_FACTORS),
           'rotation': (rotate, ROTATION_DEGREES)}
  return {name: sweep(model, variables, images, labels, transform, amounts, layers, fill,
                      batch_size)
          for name, (transform, amounts) in grids.items()}


@functools.partial(jax.jit, static_argnames=('model', 'transform', 'layers', 'batch_size'))
def _sweep(model, variables, images, labels, amounts, fill, *, transform, layers,
           batch_size) -> Sweep:
  logits_name = model.spec[-1].name
  names = tuple(dict.fromkeys(layers + (logits_name,)))
  num_images = images.shape[0]
  reference = models.activations(model, variables, images, names)

  def at_amount(amount):
    moved = transform(images, amount, fill)
    outputs = models.activations(model, variables, moved, names)
    distance = {name: _distance(outputs[name], reference[name]) for name in layers}
    logits = outputs[logits_name]
    probability = jax.nn.softmax(logits)[jnp.arange(num_images), labels]
    return distance, probability, jnp.argmax(logits, axis=-1)

  distance, probability, top_class = padded_map(at_amount, amounts, batch_size)
  return Sweep(amounts=amounts,
               distance={name: value.T for name, value in distance.items()},
               probability=probability.T, top_class=top_class.T)


def padded_map(f: Callable, xs, batch_size: int):
  """lax.map of f over the leading axis in evened-out chunks, vmapped within each.

  lax.map of f over the leading axis of xs (an array or a pytree of them) in chunks of
  at most batch_size (vmapped within a chunk), all of one size: as few chunks as
  batch_size allows, evened out, the last padded with copies of the last element (fewer
  copies than there are chunks) and the padding dropped. One chunk shape is compiled;
  lax.map would compile a second loop body for a remainder."""
  num = jax.tree.leaves(xs)[0].shape[0]
  chunks = -(-num // batch_size)
  batch_size = -(-num // chunks)
  padding = chunks * batch_size - num
  padded = jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], padding, axis=0)]),
                        xs)
  ys = lax.map(f, padded, batch_size=batch_size)
  return jax.tree.map(lambda y: y[:num], ys)


def _distance(features: Array, reference: Array) -> Array:
  """Euclidean distance between flattened feature vectors, per image."""
  difference = (features - reference).reshape(features.shape[0], -1)
  return jnp.sqrt(jnp.sum(jnp.square(difference), axis=-1))


def _check(model, images, labels, amounts, layers, transform, batch_size) -> None:
  models.check_images(images, model.spec)
  num_images = images.shape[0]
  labels_shape = np.shape(labels)
  if labels_shape != (num_images,):
    raise ValueError(f'labels: expected shape ({num_images},), one class per image, got '
                     f'{labels_shape}')
  if not jnp.issubdtype(jnp.asarray(labels).dtype, jnp.integer):
    raise ValueError(f'labels: expected integer classes, got dtype {jnp.asarray(labels).dtype}')
  num_classes = model.spec[-1].features
  concrete = _concrete(labels)
  if concrete is not None and (concrete.min() < 0 or concrete.max() >= num_classes):
    raise ValueError(f'labels: expected classes in [0, {num_classes}), got {concrete}')
  if np.ndim(amounts) != 1 or np.shape(amounts)[0] == 0:
    raise ValueError(f'amounts: expected a non-empty rank-1 array, got shape '
                     f'{np.shape(amounts)}')
  architecture.check_layers(model.spec, layers)
  if not callable(transform):
    raise ValueError(f'transform: expected a function (images, amount, fill) -> images, '
                     f'got {transform!r}')
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f'batch_size: expected a positive int, got {batch_size!r}')


def _concrete(x):
  """x as a numpy array, or None when it is traced."""
  try:
    return np.asarray(x)
  except jax.errors.TracerArrayConversionError:
    return None
