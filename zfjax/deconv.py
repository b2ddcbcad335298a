"""The deconvnet of Zeiler & Fergus (Sec. 2.1): project one activation back to pixels.

    proj = deconv.project(model, variables, images, layer='conv5', channels=jnp.arange(16))
    # (N, K, H, W, 3): image n, channel channels[k]: the projection of that channel's
    # strongest activation in image n.

Semantics and the choices the paper leaves open: docs/analyses.md (zfjax.deconv).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zfjax import architecture, models
from zfjax.architecture import Conv, Norm, Pool

Array = jax.Array

RULES = ('deconvnet', 'guided', 'backprop')
METHODS = ('literal', 'gradient')


class Units(NamedTuple):
  """Selected activations of a post-ReLU map, with their values.

  Selected activations: for unit m, image `image[m]`, channel `channel[m]`, position
  (`y[m]`, `x[m]`) of the layer's post-ReLU map, and its value there."""
  image: Array
  channel: Array
  y: Array
  x: Array
  value: Array


# --------------------------------------------------------------------------- public API


def project(model: models.ConvNet, variables, images: Array, layer: str, channels,
            rule: str = 'deconvnet', method: str = 'literal',
            chunk_size: int = 64) -> Array:
  """Projections of each channel's strongest activation in each image.

  Args:
    model: a `models.ConvNet` (any spec).
    variables: its variables ({'params': ...}).
    images: (N, H, W, 3) float images in the model's input space.
    layer: a conv layer name ('conv1'..'conv5'); its post-ReLU map is used.
    channels: (K,) channel indices of that layer.
    rule: 'deconvnet' | 'guided' | 'backprop'.
    method: 'literal' | 'gradient' (same numbers; literal is faster).
    chunk_size: units projected at once (bounds memory).
  Returns:
    (N, K, H, W, 3): image n, channel channels[k]: the projection of the channel's
    largest activation in image n (ties: first in row-major order). An all-zero channel
    projects to zeros.
  """
  channels = _check(model, images, layer, channels, rule, method, chunk_size)
  if not channels.size:
    return jnp.zeros((images.shape[0], 0, *images.shape[1:]), images.dtype)
  return _project(model, variables, images, channels, layer=layer, rule=rule,
                  method=method, chunk_size=chunk_size)


def project_units(model: models.ConvNet, variables, images: Array, layer: str,
                  image, channel, y, x, rule: str = 'deconvnet', method: str = 'literal',
                  chunk_size: int = 64) -> Array:
  """Projections of explicit activations.

  Unit m is (image[m], channel[m], y[m], x[m]) of `layer`'s post-ReLU map, seeded with its
  own value. Returns (M, H, W, 3). This is how the top-9 search hands in its finds."""
  channel = _check(model, images, layer, channel, rule, method, chunk_size)
  image, y, x = (jnp.asarray(a, jnp.int32).reshape(-1) for a in (image, y, x))
  if not image.shape == channel.shape == y.shape == x.shape:
    raise ValueError(f'image, channel, y and x must have one entry per unit; got shapes '
                     f'{image.shape}, {channel.shape}, {y.shape}, {x.shape}')
  height, width, _ = architecture.shapes(model.spec, images.shape[1:])[layer]
  _check_range('image', image, images.shape[0])
  _check_range('y', y, height)
  _check_range('x', x, width)
  if not image.size:
    return jnp.zeros((0, *images.shape[1:]), images.dtype)
  return _project_units(model, variables, images, image, channel, y, x, layer=layer,
                        rule=rule, method=method, chunk_size=chunk_size)


def strongest(feature_map: Array, channels: Array) -> Units:
  """Each listed channel's largest activation in each image.

  The largest activation of each listed channel in each image of an (N, H, W, C)
  map, as Units of N * K entries in (image, channel) order. Ties: first in row-major."""
  n, _, width, _ = feature_map.shape
  maps = jnp.moveaxis(feature_map[..., channels], -1, 1)  # (N, K, H, W)
  flat = maps.reshape(n, len(channels), -1)
  where = jnp.argmax(flat, axis=-1)
  value = jnp.take_along_axis(flat, where[..., None], axis=-1)[..., 0]
  image = jnp.broadcast_to(jnp.arange(n)[:, None], where.shape)
  channel = jnp.broadcast_to(channels[None, :], where.shape)
  return Units(image.reshape(-1), channel.reshape(-1), (where // width).reshape(-1),
               (where % width).reshape(-1), value.reshape(-1))


def switches(x: Array, record: Pool) -> Array:
  """Max pooling's switches: where each window's maximum lies.

  For each output of max pool `record` over the NHWC map x, the position of its
  window's maximum inside the window, dy * window + dx (ties: first in row-major
  order). Same shape as the pool's output, int32."""
  n, height, width, c = x.shape
  k, s = record.window, record.stride
  pad_h = architecture.pool_overhang(height, k, s, record.ceil)
  pad_w = architecture.pool_overhang(width, k, s, record.ceil)
  index = lax.broadcasted_iota(jnp.int32, x.shape, 1) * width + lax.broadcasted_iota(
      jnp.int32, x.shape, 2)

  def first_max(a, b):
    (value_a, index_a), (value_b, index_b) = a, b
    take_a = (value_a > value_b) | ((value_a == value_b) & (index_a < index_b))
    return jnp.where(take_a, value_a, value_b), jnp.where(take_a, index_a, index_b)

  _, where = lax.reduce_window(
      (x, index), (jnp.array(-jnp.inf, x.dtype), jnp.array(np.iinfo(np.int32).max)),
      first_max, (1, k, k, 1), (1, s, s, 1), ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
  out_h, out_w = where.shape[1:3]
  dy = where // width - s * jnp.arange(out_h)[:, None, None]
  dx = where % width - s * jnp.arange(out_w)[None, :, None]
  return dy * k + dx


def unpool(signal: Array, where: Array, record: Pool) -> Array:
  """Adjoint of max pooling at recorded switches.

  Each value of `signal` (..., h, w, C) goes to its window's maximum; values that share a
  cell add. Returns the full extent of the windows, ((h - 1) * stride + window) per spatial
  axis."""
  k, s = record.window, record.stride
  spatial = signal.ndim - 3
  out = 0.0
  for dy in range(k):
    for dx in range(k):
      chosen = jnp.where(where == dy * k + dx, signal, 0.0)
      pads = [(0, 0, 0)] * spatial + [(dy, k - 1 - dy, s - 1), (dx, k - 1 - dx, s - 1),
                                      (0, 0, 0)]
      out = out + lax.pad(chosen, jnp.array(0, signal.dtype), pads)
  return out


def transpose_conv(signal: Array, kernel: Array, record: Conv) -> Array:
  """The conv's filters transposed (flipped, in/out swapped), no bias, over the full extent.

  (h, w) -> ((h - 1) * stride + kernel) per axis, before removing padding."""
  k = record.kernel
  return lax.conv_transpose(signal, kernel, (record.stride,) * 2, [(k - 1, k - 1)] * 2,
                            dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                            transpose_kernel=True)


# ------------------------------------------------------------------------- validation


def _check(model, images, layer, channels, rule, method, chunk_size=1) -> Array:
  if (not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool)
      or chunk_size < 1):
    raise ValueError(f'chunk_size must be a positive int, got {chunk_size!r}')
  if rule not in RULES:
    raise ValueError(f'unknown rule {rule!r}; choose one of {RULES}')
  if method not in METHODS:
    raise ValueError(f'unknown method {method!r}; choose one of {METHODS}')
  models.check_images(images, model.spec)
  conv_layers = architecture.conv_names(model.spec)
  if layer not in conv_layers:
    raise ValueError(f'cannot project from layer {layer!r}: choose a conv layer of this '
                     f'model, one of {conv_layers}')
  channels = jnp.asarray(channels)
  if channels.ndim > 1 or not jnp.issubdtype(channels.dtype, jnp.integer) and channels.size:
    raise ValueError(f'channels must be a 1-D array of integer channel indices, got '
                     f'shape {channels.shape} dtype {channels.dtype}')
  channels = channels.astype(jnp.int32).reshape(-1)
  _check_range('channels', channels, architecture.layer(model.spec, layer).features,
               f'{layer} has')
  return channels


def _check_range(name, values, limit, has='there are'):
  if isinstance(values, jax.core.Tracer) or not values.size:
    return
  low, high = int(values.min()), int(values.max())
  if low < 0 or high >= limit:
    raise ValueError(f'{name} out of range: got values in [{low}, {high}] but {has} '
                     f'{limit} (valid: 0..{limit - 1})')


# ------------------------------------------------------------------ the shared forward


def _forward_cache(model, variables, images, layer):
  """One forward pass: every map layer's output up to `layer`, and each pool's switches."""
  names = architecture.layer_names(model.spec)
  below = names[:names.index(layer) + 1]
  maps = models.activations(model, variables, images, below)
  maps['input'] = images
  where = {}
  previous = 'input'
  for name in below:
    record = architecture.layer(model.spec, name)
    if isinstance(record, Pool):
      where[name] = switches(maps[previous], record)
    previous = name
  return maps, where


@functools.partial(jax.jit, static_argnames=('model', 'layer', 'rule', 'method',
                                             'chunk_size'))
def _project(model, variables, images, channels, *, layer, rule, method, chunk_size):
  if method == 'gradient':
    return _gradient_project(model, variables, images, channels, layer, rule, chunk_size)
  maps, where = _forward_cache(model, variables, images, layer)
  units = strongest(maps[layer], channels)
  out = _literal_units(model, variables, maps, where, units, layer, rule, chunk_size)
  return out.reshape(images.shape[0], channels.shape[0], *out.shape[1:])


@functools.partial(jax.jit, static_argnames=('model', 'layer', 'rule', 'method',
                                             'chunk_size'))
def _project_units(model, variables, images, image, channel, y, x, *, layer, rule, method,
                   chunk_size):
  maps, where = _forward_cache(model, variables, images, layer)
  value = maps[layer][image, y, x, channel]
  units = Units(image, channel, y, x, value)
  if method == 'gradient':
    return _gradient_units(model, variables, images, units, layer, rule, chunk_size)
  return _literal_units(model, variables, maps, where, units, layer, rule, chunk_size)


# ------------------------------------------------------------- literal, in the cone


def _literal_units(model, variables, maps, where, units, layer, rule, chunk_size):
  """The deconvnet chain for each unit, restricted to its windows (docs/analyses.md)."""
  spec, params = model.spec, variables['params']
  levels = architecture.windows(spec, layer)  # [(name, Window)], layer ... 'input'
  unit_positions = maps[layer].shape[1:3]
  # Cached arrays, padded so that every unit's window slices without clamping.
  padded = {}
  needed = _needed_caches(spec, levels, rule)
  for name, window in levels:
    lo, hi = _padding(window, unit_positions, maps[name].shape[1:3])
    if (name, 'switch') in needed:
      padded[name, 'switch'] = _pad_spatial(where[name], lo, hi)
    if (name, 'map') in needed:
      padded[name, 'map'] = _pad_spatial(maps[name], lo, hi)

  def one_unit(unit):
    n, c, y, x, value = unit
    depth = maps[layer].shape[-1]
    signal = jnp.zeros((1, 1, 1, depth), maps[layer].dtype).at[0, 0, 0, c].set(value)
    for (out_name, out_window), (in_name, in_window) in zip(levels, levels[1:]):
      record = architecture.layer(spec, out_name)
      start_out = _window_start(out_window, y, x, unit_positions, maps[out_name].shape[1:3])
      if isinstance(record, Conv):
        if rule != 'deconvnet':
          forward = _slice(padded[out_name, 'map'], n, start_out, out_window.size)
          signal = signal * (forward > 0)
        if rule != 'backprop':
          signal = jax.nn.relu(signal)
        signal = transpose_conv(signal, params[out_name]['kernel'].astype(signal.dtype),
                                record)
      elif isinstance(record, Pool):
        chosen = _slice(padded[out_name, 'switch'], n, start_out, out_window.size)
        signal = unpool(signal, chosen, record)
      elif isinstance(record, Norm) and rule != 'deconvnet':
        start_in = _window_start(in_window, y, x, unit_positions, maps[in_name].shape[1:3])
        forward_in = _slice(padded[in_name, 'map'], n, start_in, in_window.size)
        _, normalize_vjp = jax.vjp(lambda t, r=record: model.normalize(t, r), forward_in)
        signal, = normalize_vjp(signal)
      signal = signal * _valid(in_window, y, x, maps[in_name].shape[1:3])
    window = levels[-1][1]
    return _place(signal[0], window.start(y), window.start(x), maps['input'].shape[1:3])

  return lax.map(one_unit, tuple(units), batch_size=chunk_size)


def _needed_caches(spec, levels, rule) -> set:
  needed = set()
  for (out_name, _), (in_name, _) in zip(levels, levels[1:]):
    record = architecture.layer(spec, out_name)
    if isinstance(record, Pool):
      needed.add((out_name, 'switch'))
    elif isinstance(record, Conv) and rule != 'deconvnet':
      needed.add((out_name, 'map'))
    elif isinstance(record, Norm) and rule != 'deconvnet':
      needed.add((in_name, 'map'))
  return needed


def _padding(window, unit_positions, map_size):
  """Cells to add before and after a map so every unit's window lies inside it."""
  lo = max(0, -window.offset)
  hi = max(0, (max(unit_positions) - 1) * window.stride + window.offset + window.size
           - min(map_size))
  return lo, hi


def _pad_spatial(x, lo, hi):
  return jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))


def _window_start(window, y, x, unit_positions, map_size):
  lo, _ = _padding(window, unit_positions, map_size)
  return window.start(y) + lo, window.start(x) + lo


def _slice(padded, n, start, size):
  """(1, size, size, C) window of image n of a padded cache at padded coordinates."""
  return lax.dynamic_slice(padded, (n, start[0], start[1], 0),
                           (1, size, size, padded.shape[-1]))


def _valid(window, y, x, map_size):
  """1 where the window's cells lie inside the map, 0 on padding and overhang."""
  rows = window.start(y) + jnp.arange(window.size)
  cols = window.start(x) + jnp.arange(window.size)
  inside = (((rows >= 0) & (rows < map_size[0]))[:, None]
            & ((cols >= 0) & (cols < map_size[1]))[None, :])
  return inside[None, :, :, None]


def _place(window_values, row, col, image_size):
  """A (s, s, 3) window whose top-left pixel is (row, col), on a zero image.

  A slice of the window padded by the image size (a vmapped slice; an update-slice would
  scatter)."""
  height, width = image_size
  padded = jnp.pad(window_values, ((height, height), (width, width), (0, 0)))
  return lax.dynamic_slice(padded, (height - row, width - col, 0),
                           (height, width, window_values.shape[-1]))


# --------------------------------------------------------------- gradient formulation


@jax.custom_vjp
def _relu_deconvnet(x):
  return jax.nn.relu(x)


_relu_deconvnet.defvjp(lambda x: (jax.nn.relu(x), None), lambda _, g: (jax.nn.relu(g),))


@jax.custom_vjp
def _relu_guided(x):
  return jax.nn.relu(x)


_relu_guided.defvjp(lambda x: (jax.nn.relu(x), x > 0),
                    lambda positive, g: (jax.nn.relu(g) * positive,))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _normalize_passthrough(x, record):
  return models.local_response_norm(x, record.size, record.alpha, record.beta, record.k)


_normalize_passthrough.defvjp(
    lambda x, record: (_normalize_passthrough(x, record), None),
    lambda record, _, g: (g,))


def rule_model(model: models.ConvNet, rule: str) -> models.ConvNet:
  """The same module whose backward pass is the rule's: its gradient is the projection."""
  if rule == 'deconvnet':
    return model.clone(relu=_relu_deconvnet, normalize=_normalize_passthrough)
  if rule == 'guided':
    return model.clone(relu=_relu_guided)
  return model


def _gradient_project(model, variables, images, channels, layer, rule, chunk_size):
  """VJP per image (one forward pass), vmapped over the K channels' seeds."""
  backward_model = rule_model(model, rule)

  def one_image(image):
    def layer_map(x):
      return models.activations(backward_model, variables, x[None], (layer,))[layer][0]
    feature_map, vjp = jax.vjp(layer_map, image)
    units = strongest(feature_map[None], channels)

    def one_channel(unit):
      _, c, y, x, value = unit
      seed = jnp.zeros_like(feature_map).at[y, x, c].set(value)
      return vjp(seed)[0]
    return lax.map(one_channel, tuple(units), batch_size=chunk_size)

  return lax.map(one_image, images)


def _gradient_units(model, variables, images, units, layer, rule, chunk_size):
  """VJP per unit (a forward pass of the unit's image each)."""
  backward_model = rule_model(model, rule)

  def one_unit(unit):
    n, c, y, x, value = unit
    def layer_map(image):
      return models.activations(backward_model, variables, image[None], (layer,))[layer][0]
    feature_map, vjp = jax.vjp(layer_map, images[n])
    return vjp(jnp.zeros_like(feature_map).at[y, x, c].set(value))[0]

  return lax.map(one_unit, tuple(units), batch_size=chunk_size)
