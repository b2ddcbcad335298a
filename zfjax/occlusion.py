"""Occlusion sensitivity (Zeiler & Fergus, Sec. 4.2, Fig. 7), computed incrementally.

    maps = occlusion.sensitivity(model, variables, image, label, patch=32, stride=8)
    maps.prob[i, j]       # softmax probability of `label` with the occluder at (i, j)
    maps.top_class[i, j]  # the most probable class then
    maps.feature[i, j]    # summed activity of the strongest conv5 map (panel b)
    maps.projection       # that map's strongest activation projected to pixels (panel c)

Occluder (i, j) covers rows i*stride .. i*stride+patch-1 and columns j*stride ..
j*stride+patch-1 of the (H, W, 3) image with `fill` (in the model's input space, so 0.0
is the mean pixel: the paper's gray square). Positions run while the square fits inside
the image: (H - patch) // stride + 1 rows of them.

`feature` follows the map (channel) of `layer` (default: the last conv layer) that holds
the unoccluded image's largest activation there, post-ReLU; the map's whole sum.

Exact incremental evaluation (method='incremental', the default): an occluder changes a
window of each layer whose size is fixed by the patch and the layers' kernels and strides
(its projective field); the window's start moves with the occluder. Each layer recomputes
only that window, from a slice of the unoccluded image's cached map (the halo) with the
lower layer's new window written in, and the fully connected layers see the merged map.
Static window sizes, dynamic offsets: one compiled program, vmapped over positions in
chunks of `chunk_size` so memory stays flat. method='naive' runs the whole network on
every occluded image (the reference the tests hold it to).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zfjax import architecture, deconv, models
from zfjax.architecture import AvgPool, Conv, Dense, Norm, Pool

Array = jax.Array

METHODS = ('incremental', 'naive')


class Sensitivity(NamedTuple):
  """The paper's Fig. 7 panels for one image, over occluder positions (I, J)."""
  prob: Array          # (I, J) probability of the label
  top_class: Array     # (I, J) most probable class
  feature: Array       # (I, J) summed activity of map `channel` of the feature layer
  channel: Array       # () the feature layer's strongest map in the unoccluded image
  projection: Array    # (H, W, 3) deconvnet projection of that map's strongest activation
  unoccluded_prob: Array   # () probability of the label without occluder
  unoccluded_feature: Array  # () summed activity of the map without occluder


def _is_int(value) -> bool:
  """A Python or NumPy integer, not a bool."""
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def positions(size: int, patch: int, stride: int) -> int:
  """Occluder positions along an axis of `size` pixels."""
  return (size - patch) // stride + 1


def sensitivity(model: models.ConvNet, variables, image: Array, label: int,
                patch: int = 32, stride: int = 8, fill: float = 0.0,
                layer: str | None = None, method: str = 'incremental',
                field_threshold: float | None = None,
                chunk_size: int = 64) -> Sensitivity:
  """Occlusion maps of one (H, W, 3) image for class `label` (see module doc).

  field_threshold: None (exact) or tau in (0, 1]: the approximate mode of Krypton
    (Nakandala et al., SIGMOD 2019), projective-field thresholding. Each layer's changed
    window is capped at ceil(tau * the layer's size) cells per axis, centred on the exact
    window; changes outside it are dropped (the cached activations stand in), so deep
    layers recompute less. benchmarks/occlusion.py reports speed and error per tau.
  """
  image = jnp.asarray(image)
  if image.ndim != 3:
    raise ValueError(f'image must be one (H, W, 3) image, got shape {image.shape}; '
                     'for a batch, call once per image')
  models.check_images(image[None], model.spec)
  convs = architecture.conv_names(model.spec)
  layer = layer or convs[-1]
  if layer not in convs:
    raise ValueError(f'unknown feature layer {layer!r}; choose one of {convs}')
  if method not in METHODS:
    raise ValueError(f'unknown method {method!r}; choose one of {METHODS}')
  if field_threshold is not None and not (0 < field_threshold <= 1 and method == 'incremental'):
    raise ValueError(f'field_threshold must be in (0, 1] with the incremental method, got '
                     f'{field_threshold} with method {method!r}')
  if not (_is_int(patch) and _is_int(stride) and patch >= 1 and stride >= 1):
    raise ValueError(f'patch and stride must be positive ints, got patch={patch!r}, '
                     f'stride={stride!r}')
  if not _is_int(chunk_size) or chunk_size < 1:
    raise ValueError(f'chunk_size must be a positive int, got {chunk_size!r}')
  if patch > min(image.shape[:2]):
    raise ValueError(f'patch {patch} is larger than the image {image.shape[:2]}')
  num_classes = architecture.shapes(model.spec, image.shape)[model.spec[-1].name][-1]
  if not isinstance(label, jax.core.Tracer):
    if not _is_int(label) and not (hasattr(label, 'dtype') and np.ndim(label) == 0
                                   and jnp.issubdtype(label.dtype, jnp.integer)):
      raise ValueError(f'label must be an integer class index, got {label!r}')
    if not 0 <= int(label) < num_classes:
      raise ValueError(f'label {label} out of range: the model has {num_classes} classes')
  if not isinstance(fill, jax.core.Tracer):
    if isinstance(fill, (str, bytes)) or fill is None or np.ndim(fill) != 0:
      raise ValueError(f'fill must be a number (in the model\'s input space), got {fill!r}')
    if not math.isfinite(float(fill)):
      raise ValueError(f'fill must be finite, got {fill}')
  return _sensitivity(model, variables, image, jnp.int32(label), jnp.float32(fill),
                      patch=patch, stride=stride, layer=layer, method=method,
                      field_threshold=field_threshold, chunk_size=chunk_size)


@functools.partial(jax.jit, static_argnames=('model', 'patch', 'stride', 'layer', 'method',
                                             'field_threshold', 'chunk_size'))
def _sensitivity(model, variables, image, label, fill, *, patch, stride, layer, method,
                 field_threshold, chunk_size):
  names = architecture.layer_names(model.spec)
  cache = models.activations(model, variables, image[None], names)
  cache = {name: value[0] for name, value in cache.items()}
  cache['input'] = image
  channel = jnp.argmax(cache[layer].reshape(-1, cache[layer].shape[-1]).max(0))
  logits = cache[names[-1]]
  rows = positions(image.shape[0], patch, stride)
  cols = positions(image.shape[1], patch, stride)
  grid = jnp.stack(jnp.meshgrid(jnp.arange(rows), jnp.arange(cols), indexing='ij'), -1)
  starts = grid.reshape(-1, 2) * stride

  if method == 'naive':
    def evaluate(start):
      occluded = lax.dynamic_update_slice(image, jnp.full((patch, patch, 3), fill,
                                                          image.dtype), (start[0], start[1], 0))
      out = models.activations(model, variables, occluded[None], (layer, names[-1]))
      return out[names[-1]][0], out[layer][0, ..., channel].sum()
  else:
    plan = _plan(model.spec, image.shape, patch, field_threshold)

    def evaluate(start):
      return _incremental(model, variables['params'], cache, plan, start, fill, patch,
                          layer, channel)

  out_logits, feature = lax.map(evaluate, starts, batch_size=chunk_size)
  probs = jax.nn.softmax(out_logits)
  projection = deconv.project(model, variables, image[None], layer, channel[None])[0, 0]
  return Sensitivity(
      prob=probs[:, label].reshape(rows, cols),
      top_class=jnp.argmax(out_logits, -1).reshape(rows, cols),
      feature=feature.reshape(rows, cols),
      channel=channel,
      projection=projection,
      unoccluded_prob=jax.nn.softmax(logits)[label],
      unoccluded_feature=cache[layer][..., channel].sum())


# ------------------------------------------------------------------ incremental plan


class _Step(NamedTuple):
  """One map layer's changed window: static size per axis, and the layer geometry."""
  record: object
  input_name: str
  size: tuple[int, int]        # changed-window size at this layer's output
  exact_size: tuple[int, int]  # the same without field thresholding
  map_size: tuple[int, int]    # this layer's output size
  input_size: tuple[int, int]  # its input map's size


def _plan(spec, image_shape, patch, field_threshold=None) -> list[_Step]:
  """Static window sizes layer by layer: a changed run of S cells at a layer's input
  changes at most (S + k - 2) // s + 1 outputs (any alignment); with a field threshold
  tau, at most ceil(tau * n) of the layer's n cells."""
  sizes = architecture.shapes(spec, image_shape)
  steps = []
  window = (patch, patch)
  input_name, input_size = 'input', tuple(image_shape[:2])
  for record in spec:
    if isinstance(record, (Dense, AvgPool)):
      break
    k, s, _ = _kernel_stride_pad(record)
    map_size = sizes[record.name][:2]
    exact = tuple(min(n, (w + k - 2) // s + 1) for w, n in zip(window, map_size))
    window = exact
    if field_threshold is not None:
      window = tuple(min(e, max(1, math.ceil(field_threshold * n)))
                     for e, n in zip(exact, map_size))
    steps.append(_Step(record, input_name, window, exact, map_size, input_size))
    input_name, input_size = record.name, map_size
  return steps


def _kernel_stride_pad(record):
  if isinstance(record, Conv):
    return record.kernel, record.stride, record.padding
  if isinstance(record, Pool):
    return record.window, record.stride, 0
  return 1, 1, 0


def _incremental(model, params, cache, plan, start, fill, patch, layer, channel):
  """Logits and feature sum for the occluder whose top-left pixel is `start`."""
  values = jnp.full((patch, patch, 3), fill, cache['input'].dtype)
  feature = None
  for step in plan:
    record = step.record
    k, s, p = _kernel_stride_pad(record)
    # First output cell whose window reaches the changed input cells, kept inside the map.
    first = -((-(start + p - k + 1)) // s)
    centred = first + (jnp.array(step.exact_size) - jnp.array(step.size)) // 2
    new_start = jnp.clip(centred, 0, jnp.array(step.map_size) - jnp.array(step.size))
    if isinstance(record, Norm):
      new_values = model.normalize(values[None], record)[0]
      new_start = start
    else:
      region = _merged_region(cache[step.input_name], values, start, new_start, step, k, s,
                              p, record)
      new_values = _layer_valid(model, record, params, region)
    values, start = new_values, new_start
    if record.name == layer:
      feature = _merged_sum(cache[layer][..., channel], values[..., channel], start)
  last = plan[-1].record.name
  x = _write(cache[last], values, start)[None]
  for record in model.spec[len(plan):]:
    if isinstance(record, AvgPool):
      x = models.adaptive_avg_pool(x, record.size)
    else:
      x = x.reshape(1, -1) @ params[record.name]['kernel'] + params[record.name]['bias']
      if record.relu:
        x = model.relu(x)
  return x[0], feature


def _merged_region(cached_input, values, start, new_start, step, k, s, p, record):
  """The input cells that the new output window reads: the cached input map, padded
  as the layer pads it, with the changed window `values` (at `start`) written in."""
  extent = tuple((size - 1) * s + k for size in step.size)
  after = tuple(max(p, (m - 1) * s + k - n - p) for m, n in
                zip(step.map_size, step.input_size))
  pad_value = -jnp.inf if isinstance(record, Pool) else 0.0
  padded = jnp.pad(cached_input, ((p, after[0]), (p, after[1]), (0, 0)),
                   constant_values=pad_value)
  region_start = new_start * s  # in padded coordinates
  region = lax.dynamic_slice(padded, (region_start[0], region_start[1], 0),
                             (*extent, cached_input.shape[-1]))
  offset = start + p - region_start  # values' top-left cell inside the region
  placed = _place(values, offset, extent)
  inside = _place(jnp.ones(values.shape[:2] + (1,), bool), offset, extent)
  return jnp.where(inside, placed, region)


def _place(values, offset, extent):
  """values (h, w, c) at `offset` on a zero (extent, c) canvas (cells outside dropped)."""
  h, w = values.shape[:2]
  padded = jnp.pad(values, ((extent[0], extent[0]), (extent[1], extent[1]), (0, 0)))
  return lax.dynamic_slice(padded, (extent[0] - offset[0], extent[1] - offset[1], 0),
                           (*extent, values.shape[-1]))


def _layer_valid(model, record, params, region):
  """The layer on an already padded region, without further padding."""
  if isinstance(record, Conv):
    kernel = params[record.name]['kernel']
    return model.relu(_conv_as_matmul(region, kernel, record.stride)
                      + params[record.name]['bias'])
  return lax.reduce_window(region, -jnp.inf, lax.max, (record.window, record.window, 1),
                           (record.stride, record.stride, 1), 'VALID')


def _conv_as_matmul(region, kernel, stride):
  """VALID convolution of one (h, w, c) region as patches @ kernel. Vmapped over
  occluder positions this is one large matmul; XLA's CPU convolution is several times
  slower on batches of small windows (benchmarks/occlusion.py)."""
  k = kernel.shape[0]
  out_h = (region.shape[0] - k) // stride + 1
  out_w = (region.shape[1] - k) // stride + 1
  patches = jnp.concatenate(
      [region[dy:dy + (out_h - 1) * stride + 1:stride, dx:dx + (out_w - 1) * stride + 1:stride]
       for dy in range(k) for dx in range(k)], axis=-1)
  return patches @ kernel.reshape(-1, kernel.shape[-1])


def _write(full, values, start):
  inside = _place(jnp.ones(values.shape[:2] + (1,), bool), start, full.shape[:2])
  return jnp.where(inside, _place(values, start, full.shape[:2]), full)


def _merged_sum(full_channel, window_channel, start):
  """Sum of a map whose window at `start` is replaced by new values."""
  old = lax.dynamic_slice(full_channel, tuple(start), window_channel.shape)
  return full_channel.sum() - old.sum() + window_channel.sum()
