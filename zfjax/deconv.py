"""The deconvnet of Zeiler & Fergus (Sec. 2.1): project one activation back to pixels.

    proj = deconv.project(model, variables, images, layer='conv5', channels=jnp.arange(16))
    # (N, K, H, W, 3): image n, channel channels[k]: the projection of that channel's
    # strongest activation in image n.

Semantics and the choices the paper leaves open: docs/analyses.md (zfjax.deconv).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zfjax import architecture, models
from zfjax.architecture import Conv, Norm, Pool

Array = jax.Array

RULES = ('deconvnet', 'guided', 'backprop')
METHODS = ('literal', 'gradient')
# Units per batch of the literal method: its GEMMs' patches (~8 MB a unit from conv5) then
# stay near the caches; 64 at once ran ~20% slower on a 2-core CPU (8 to 16 were best).
LITERAL_BATCH = 16


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
    chunk_size: units projected at once (bounds memory); the literal method takes at
      most LITERAL_BATCH at once.
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
  order). Same shape as the pool's output, int32.

  Each window position's cells are one strided slice of x (padded with -inf over the
  overhang); the switch is the first position whose cell equals the window's maximum.
  (Elementwise work that XLA fuses: a reduce_window over (value, index) pairs, the same
  numbers, ran 3-8x slower on CPUs.)"""
  n, height, width, c = x.shape
  k, s = record.window, record.stride
  pad_h = architecture.pool_overhang(height, k, s, record.ceil)
  pad_w = architecture.pool_overhang(width, k, s, record.ceil)
  padded = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), constant_values=-jnp.inf)
  out_h, out_w = (height + pad_h - k) // s + 1, (width + pad_w - k) // s + 1

  def cells(position):
    dy, dx = divmod(position, k)
    return lax.slice(padded, (0, dy, dx, 0),
                     (n, dy + (out_h - 1) * s + 1, dx + (out_w - 1) * s + 1, c), (1, s, s, 1))

  best = functools.reduce(jnp.maximum, [cells(p) for p in range(k * k)])
  where = jnp.zeros(best.shape, jnp.int32)
  for position in reversed(range(k * k)):
    where = jnp.where(cells(position) == best, position, where)
  return where


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
# The chain runs on a batch of B units at once: the signal is (B, h, w, C), the units'
# windows at one layer. A transposed convolution is one GEMM of the signal (B*h*w, Cout)
# against the kernels (Cout, k*k*Cin), giving every cell's kernel patch, and an overlap-add
# of those patches (docs/analyses.md).


def _literal_units(model, variables, maps, where, units, layer, rule, chunk_size,
                   place=True):
  """The deconvnet chain for each unit, restricted to its windows (docs/analyses.md).

  (M, H, W, 3) projections on zero images; place=False: (M, S, S, 3), the input window."""
  spec, params = model.spec, variables['params']
  levels = architecture.windows(spec, layer)  # [(name, Window)], layer ... 'input'
  unit_positions = maps[layer].shape[1:3]
  sizes = {name: maps[name].shape[1:3] for name, _ in levels}
  # Cached arrays, padded so that every unit's window slices without clamping. Switches
  # are padded with -1, which no cell matches: unpooling drops the signal outside the map.
  padded = {}
  for name, window in levels:
    lo_hi = _padding(window, unit_positions, sizes[name])
    if (name, 'switch') in _needed_caches(spec, levels, rule):
      padded[name, 'switch'] = _pad_spatial(where[name], *lo_hi, value=-1)
    if (name, 'map') in _needed_caches(spec, levels, rule):
      padded[name, 'map'] = _pad_spatial(maps[name], *lo_hi)
  masked = _masked_levels(spec, levels)

  def chain(batch):
    n, c, y, x, value = batch
    depth = maps[layer].shape[-1]
    signal = (jax.nn.one_hot(c, depth, dtype=value.dtype) * value[:, None])[:, None, None]
    for (out_name, out_window), (in_name, in_window) in zip(levels, levels[1:]):
      record = architecture.layer(spec, out_name)
      start_out = _window_start(out_window, y, x, unit_positions, sizes[out_name])
      if isinstance(record, Conv):
        if rule != 'deconvnet':
          forward = _windows(padded[out_name, 'map'], n, start_out, out_window.size)
          signal = signal * (forward > 0)
        if rule != 'backprop':
          signal = jax.nn.relu(signal)
        signal = _transpose_conv_batch(
            signal, params[out_name]['kernel'].astype(signal.dtype), record.stride)
      elif isinstance(record, Pool):
        chosen = _windows(padded[out_name, 'switch'], n, start_out, out_window.size)
        signal = unpool(signal, chosen, record)
      elif isinstance(record, Norm) and rule != 'deconvnet':
        start_in = _window_start(in_window, y, x, unit_positions, sizes[in_name])
        forward_in = _windows(padded[in_name, 'map'], n, start_in, in_window.size)
        _, normalize_vjp = jax.vjp(lambda t, r=record: model.normalize(t, r), forward_in)
        signal, = normalize_vjp(signal)
      if in_name in masked:
        signal = signal * _valid(in_window, y, x, sizes[in_name])
    # (B, 3, size, size): conv1's overlap-add writes each colour's rows whole.
    return signal.transpose(0, 3, 1, 2)

  pixels = _in_chunks(chain, tuple(units), min(chunk_size, LITERAL_BATCH))
  if not place:
    return pixels.transpose(0, 2, 3, 1)
  window = levels[-1][1]
  on_image = functools.partial(_place, image_size=sizes['input'])
  return jax.vmap(on_image)(pixels, window.start(units.y), window.start(units.x))


def _masked_levels(spec, levels) -> set:
  """The windows whose cells outside the map must be zeroed.

  Those that a transposed convolution writes and another one reads next (through
  normalizations, pointwise in space). Elsewhere nothing has to be done: unpooling drops
  what lies outside its map (padded switches) and routes nothing to a pool's overhang, and
  the pixels are cut to the image."""
  kinds = [type(architecture.layer(spec, name)) for name, _ in levels[:-1]] + [None]
  masked = set()
  for i, (name, _) in enumerate(levels[1:], start=1):
    below = next((kind for kind in kinds[i:] if kind is not Norm), None)
    if kinds[i - 1] is Conv and below is Conv:
      masked.add(name)
  return masked


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


def _pad_spatial(x, lo, hi, value=0):
  return jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)), constant_values=value)


def _window_start(window, y, x, unit_positions, map_size):
  lo, _ = _padding(window, unit_positions, map_size)
  return window.start(y) + lo, window.start(x) + lo


def _windows(padded, n, start, size):
  """(B, size, size, C): unit b's window of image n[b] of a padded cache.

  A loop of slices, not a vmapped slice: XLA would fuse that gather into its consumers
  and repeat it there (nine times in an unpooling)."""
  def one(unit):
    i, row, col = unit
    return lax.dynamic_slice(padded, (i, row, col, 0), (1, size, size, padded.shape[-1]))[0]
  return lax.map(one, (n, *start))


def _valid(window, y, x, map_size):
  """(B, size, size, 1): 1 where unit b's window lies inside the map, else 0.

  0 on padding and on a ceil-mode pool's overhang."""
  rows = window.start(y)[:, None] + jnp.arange(window.size)
  cols = window.start(x)[:, None] + jnp.arange(window.size)
  inside = (((rows >= 0) & (rows < map_size[0]))[:, :, None]
            & ((cols >= 0) & (cols < map_size[1]))[:, None, :])
  return inside[..., None]


def _transpose_conv_batch(signal, kernel, stride):
  """`transpose_conv` of a (B, h, w, Cout) signal, as a GEMM and an overlap-add.

  The GEMM gives each cell's kernel patches, kernel[dy, dx] @ signal[b, i, j]; the
  overlap-add puts patch (dy, dx) at (i * stride + dy, j * stride + dx). The adds run along
  the patches' minor axis: channels when there are many, columns when there are few (the
  3 colours of conv1), so the GEMM writes the patches in that order."""
  k, _, cin, cout = kernel.shape
  b, h, w, _ = signal.shape
  kernels, rows = kernel.reshape(k * k * cin, cout), signal.reshape(b * h * w, cout)
  if cin >= _CHANNELS_MINOR:
    patches = jnp.dot(rows, kernels.T, precision=lax.Precision.HIGHEST)
    patches = patches.reshape(b, h, w, k, k, cin)
    return _overlap_add(lambda dy, dx: patches[:, :, :, dy, dx], k, stride, axis=1)
  patches = jnp.dot(kernels, rows.T, precision=lax.Precision.HIGHEST)
  patches = patches.reshape(k, k, cin, b, h, w)
  return _overlap_add(lambda dy, dx: patches[dy, dx], k, stride, axis=2).transpose(1, 2, 3, 0)


_CHANNELS_MINOR = 16  # Cin from which the overlap-add runs along channels


def _overlap_add(tap, k, stride, axis):
  """The taps of a k x k kernel added at their places.

  tap(dy, dx) is an array with spatial axes (axis, axis + 1), (h, w); its cell (i, j) goes
  to (i * stride + dy, j * stride + dx), and values that meet add: the result has
  ((h - 1) * stride + k, (w - 1) * stride + k) there. Computed one output phase (rows
  ry mod stride, columns rx mod stride) at a time, each a sum of shifted taps with no
  interleaved zeros; the phases then interleave."""
  shape = tap(0, 0).shape
  h, w = shape[axis:axis + 2]
  reach = -(-k // stride)  # taps per phase and axis, at most
  rows = []
  for ry in range(stride):
    phases = []
    for rx in range(stride):
      terms = []
      for dy in range(ry, k, stride):
        for dx in range(rx, k, stride):
          pad = [(0, 0)] * len(shape)
          pad[axis] = (dy // stride, reach - 1 - dy // stride)
          pad[axis + 1] = (dx // stride, reach - 1 - dx // stride)
          terms.append(jnp.pad(tap(dy, dx), pad))
      phases.append(functools.reduce(jnp.add, terms))
    rows.append(jnp.stack(phases, axis=axis + 2))
  out = jnp.stack(rows, axis=axis + 1)  # (..., M, stride, N, stride, ...)
  m, n = h + reach - 1, w + reach - 1
  out = out.reshape(*shape[:axis], m * stride, n * stride, *shape[axis + 2:])
  return lax.slice_in_dim(lax.slice_in_dim(out, 0, (h - 1) * stride + k, axis=axis), 0,
                          (w - 1) * stride + k, axis=axis + 1)


def _in_chunks(fn, xs, size):
  """fn, which takes a batch, over the leading axis of xs in batches of at most `size`."""
  total = xs[0].shape[0]
  full = total - total % size
  outs = []
  if full:
    chunks = jax.tree.map(lambda a: a[:full].reshape(full // size, size, *a.shape[1:]), xs)
    out = lax.map(fn, chunks)
    outs.append(out.reshape(full, *out.shape[2:]))
  if full < total:
    outs.append(fn(jax.tree.map(lambda a: a[full:], xs)))
  return outs[0] if len(outs) == 1 else jnp.concatenate(outs)


def _place(window_values, row, col, image_size):
  """A (3, s, s) window whose top-left pixel is (row, col), on a zero (H, W, 3) image.

  A slice of the window padded by the image size (a vmapped slice; an update-slice would
  scatter)."""
  height, width = image_size
  padded = jnp.pad(window_values, ((0, 0), (height, height), (width, width)))
  return lax.dynamic_slice(padded, (0, height - row, width - col),
                           (window_values.shape[0], height, width)).transpose(1, 2, 0)

# --------------------------------------------------- one forward pass, many projections


class Cache(NamedTuple):
  """What projecting units of some layers needs from one forward pass of a batch.

  images: the batch (N, H, W, 3); maps: {name: (N, h, w, C)} the post-ReLU maps those
  projections read (each layer's own, for its units' values, and what the rule needs);
  switches: {pool name: switches} of the pools below them."""
  images: Array
  maps: dict
  switches: dict


def forward_cache(model: models.ConvNet, variables, images: Array, layers: Sequence[str],
                  rule: str = 'deconvnet') -> Cache:
  """One forward pass of `images` up to the highest of `layers`, kept for `project_cached`.

  Holds only what the projections of those layers' units with `rule` read."""
  layers = tuple(dict.fromkeys(layers))
  for layer in layers:
    _check(model, images, layer, [], rule, 'literal')
  return _cache(model, variables, images, layers=layers, rule=rule)


def project_cached(model: models.ConvNet, variables, cache: Cache, layer: str, image,
                   channel, y, x, rule: str = 'deconvnet', chunk_size: int = 64) -> Array:
  """`project_units` from a `forward_cache`, each projection cut to its window.

  Unit m is (image[m], channel[m], y[m], x[m]) of `layer`'s post-ReLU map, seeded with
  its value in the cache. Returns (M, S, S, 3): the projection inside the window of the
  input that the unit's cone spans (`architecture.windows(spec, layer)[-1]`, top-left at
  window.start(y), window.start(x); cells outside the image are zero), which is where
  `project_units`'s full-size projection is nonzero."""
  if layer not in cache.maps:
    raise ValueError(f'the cache holds no {layer!r}: make it with forward_cache(..., '
                     f'layers=[..., {layer!r}])')
  image, channel, y, x = (jnp.asarray(a, jnp.int32).reshape(-1) for a in (image, channel,
                                                                          y, x))
  return _project_cached(model, variables, cache, image, channel, y, x, layer=layer,
                         rule=rule, chunk_size=chunk_size)


@functools.partial(jax.jit, static_argnames=('model', 'layers', 'rule'))
def _cache(model, variables, images, *, layers, rule):
  names = architecture.layer_names(model.spec)
  maps, where = _forward_cache(model, variables, images, max(layers, key=names.index))
  keep_maps, keep_switches = set(layers), set()
  for layer in layers:
    for name, kind in _needed_caches(model.spec, architecture.windows(model.spec, layer),
                                     rule):
      (keep_maps if kind == 'map' else keep_switches).add(name)
  return Cache(images, {n: maps[n] for n in keep_maps if n != 'input'},
               {n: where[n] for n in keep_switches})


@functools.partial(jax.jit, static_argnames=('model', 'layer', 'rule', 'chunk_size'))
def _project_cached(model, variables, cache, image, channel, y, x, *, layer, rule,
                    chunk_size):
  images = cache.images
  shapes = architecture.shapes(model.spec, images.shape[1:])
  maps = {name: jax.ShapeDtypeStruct((images.shape[0], *shape), images.dtype)
          for name, shape in shapes.items()}
  maps.update(cache.maps, input=images)
  value = cache.maps[layer][image, y, x, channel]
  units = Units(image, channel, y, x, value)
  return _literal_units(model, variables, maps, cache.switches, units, layer, rule,
                        chunk_size, place=False)


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
  """The same module whose backward pass is the rule's: its gradient is the projection.

  Its convolutions are lax's own, so the forward values (and the switches that near-ties
  decide) are those of the literal method's forward pass."""
  model = model.clone(convolution=lax.conv_general_dilated)
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
