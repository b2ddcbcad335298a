"""The deconvnet of Zeiler & Fergus (Sec. 2.1): project one activation back to pixels.

    proj = deconv.project(model, variables, images, layer='conv5', channels=jnp.arange(16))
    # (N, K, H, W, 3): image n, channel channels[k]: the projection of that channel's
    # strongest activation in image n.

Semantics and the choices the paper leaves open: docs/analyses.md (zfjax.deconv).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zfjax import architecture, models
from zfjax import deconv_ops as ops
from zfjax.architecture import Conv, Norm, Pool
from zfjax.deconv_ops import switches, transpose_conv, unpool  # noqa: F401 (the ops, here too)

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
  value, where = ops.first_maximum(flat, axis=-1)
  image = jnp.broadcast_to(jnp.arange(n)[:, None], where.shape)
  channel = jnp.broadcast_to(channels[None, :], where.shape)
  return Units(image.reshape(-1), channel.reshape(-1), (where // width).reshape(-1),
               (where % width).reshape(-1), value.reshape(-1))


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


def _forward(model, variables, images, top):
  """One forward pass up to `top`: every map layer's output up to it, each pool's switches."""
  names = architecture.layer_names(model.spec)
  below = names[:names.index(top) + 1]
  maps = dict(models.activations(model, variables, images, below), input=images)
  pools = {(name, 'switch') for name in below
           if isinstance(architecture.layer(model.spec, name), Pool)}
  return maps, _switches(model.spec, maps, pools)


@functools.partial(jax.jit, static_argnames=('model', 'layer', 'rule', 'method',
                                             'chunk_size'))
def _project(model, variables, images, channels, *, layer, rule, method, chunk_size):
  if method == 'gradient':
    return _gradient_project(model, variables, images, channels, layer, rule, chunk_size)
  maps, where = _forward(model, variables, images, layer)
  units = strongest(maps[layer], channels)
  cache = _padded_cache(model.spec, images, maps, where,
                        _needed(model.spec, [layer], rule, values=False))
  out = _literal_units(model, variables, cache, units, layer, rule, chunk_size)
  return out.reshape(images.shape[0], channels.shape[0], *out.shape[1:])


@functools.partial(jax.jit, static_argnames=('model', 'layer', 'rule', 'method',
                                             'chunk_size'))
def _project_units(model, variables, images, image, channel, y, x, *, layer, rule, method,
                   chunk_size):
  maps, where = _forward(model, variables, images, layer)
  units = Units(image, channel, y, x, maps[layer][image, y, x, channel])
  if method == 'gradient':
    return _gradient_units(model, variables, images, units, layer, rule, chunk_size)
  cache = _padded_cache(model.spec, images, maps, where,
                        _needed(model.spec, [layer], rule, values=False))
  return _literal_units(model, variables, cache, units, layer, rule, chunk_size)


def _needed(spec, layers, rule, values=True) -> set:
  """(name, 'map' | 'switch'): what the chains of `layers`' units read.

  With values, the layers' own maps too (the units' values come from them)."""
  needed = {(layer, 'map') for layer in layers} if values else set()
  for layer in layers:
    levels = architecture.windows(spec, layer)
    for (out_name, _), (in_name, _) in zip(levels, levels[1:]):
      record = architecture.layer(spec, out_name)
      if isinstance(record, Pool):
        needed.add((out_name, 'switch'))
      elif isinstance(record, Conv) and rule != 'deconvnet':
        needed.add((out_name, 'map'))
      elif isinstance(record, Norm) and rule != 'deconvnet':
        needed.add((in_name, 'map'))
  return needed


def _pads(spec, image_shape) -> dict:
  """{name: (before, after)}: the cells to pad each map with.

  Enough that the window of every unit of every conv layer slices without clamping."""
  sizes = {name: shape[:2] for name, shape in architecture.shapes(spec, image_shape).items()}
  sizes['input'] = tuple(image_shape[:2])
  pads = {}
  for layer in architecture.conv_names(spec):
    for name, window in architecture.windows(spec, layer):
      before = max(0, -window.offset)
      after = max(0, (max(sizes[layer]) - 1) * window.stride + window.offset + window.size
                  - min(sizes[name]))
      old = pads.get(name, (0, 0))
      pads[name] = (max(old[0], before), max(old[1], after))
  return pads


def cache_bytes(spec, image_shape, layers: Sequence[str], rule: str = 'deconvnet',
                values: bool = True) -> int:
  """Bytes per image of a `forward_cache(..., layers, rule, values)` (float32 images)."""
  shapes, pads = architecture.shapes(spec, image_shape), _pads(spec, image_shape)
  total = 0
  for name, kind in _needed(spec, layers, rule, values):
    (height, width, channels), (before, after) = shapes[name], pads[name]
    total += (height + before + after) * (width + before + after) * channels * 4
  return total


def _padded_cache(spec, images, maps, where, needed) -> 'Cache':
  """The needed maps and switches, padded (`Cache`)."""
  pads = _pads(spec, images.shape[1:])
  pad = lambda x, name, value=0: jnp.pad(x, ((0, 0), pads[name], pads[name], (0, 0)),
                                         constant_values=value)
  return Cache(images, {n: pad(maps[n], n) for n, kind in needed if kind == 'map'},
               {n: pad(where[n], n, -1) for n, kind in needed if kind == 'switch'})


# ------------------------------------------------------------- literal, in the cone
# The chain runs on a batch of B units at once: the signal is (B, h, w, C), the units'
# windows at one layer. A transposed convolution is one GEMM of the signal (B*h*w, Cout)
# against the kernels (Cout, k*k*Cin), giving every cell's kernel patch, and an overlap-add
# of those patches (docs/analyses.md).


def _literal_units(model, variables, cache, units, layer, rule, chunk_size, place=True,
                   count=None):
  """The deconvnet chain for each unit, restricted to its windows (docs/analyses.md).

  cache: a `Cache` holding what the chain reads. (M, H, W, 3) projections on zero images;
  place=False: (M, S, S, 3), the input window. count (traced): only the chunks holding
  the first `count` units run, the others' rows are zero (`deconv_ops.in_chunks`)."""
  spec, params = model.spec, variables['params']
  levels = architecture.windows(spec, layer)  # [(name, Window)], layer ... 'input'
  image_shape = cache.images.shape[1:]
  sizes = {name: shape[:2] for name, shape in architecture.shapes(spec, image_shape).items()}
  sizes['input'] = image_shape[:2]
  pads = _pads(spec, image_shape)
  masked = _masked_levels(spec, levels)
  depth = architecture.layer(spec, layer).features

  def window_of(cached, name, window, n, y, x):
    start = (window.start(y) + pads[name][0], window.start(x) + pads[name][0])
    return ops.windows(cached[name], n, start, window.size)

  def chain(batch):
    n, c, y, x, value = batch
    signal = (jax.nn.one_hot(c, depth, dtype=value.dtype) * value[:, None])[:, None, None]
    for (out_name, out_window), (in_name, in_window) in zip(levels, levels[1:]):
      record = architecture.layer(spec, out_name)
      if isinstance(record, Conv):
        if rule != 'deconvnet':
          signal = signal * (window_of(cache.maps, out_name, out_window, n, y, x) > 0)
        if rule != 'backprop':
          signal = jax.nn.relu(signal)
        signal = ops.transpose_conv_batch(
            signal, params[out_name]['kernel'].astype(signal.dtype), record.stride)
      elif isinstance(record, Pool):
        chosen = window_of(cache.switches, out_name, out_window, n, y, x)
        signal = ops.unpool(signal, chosen, record)
      elif isinstance(record, Norm) and rule != 'deconvnet':
        forward_in = window_of(cache.maps, in_name, in_window, n, y, x)
        _, normalize_vjp = jax.vjp(lambda t, r=record: model.normalize(t, r), forward_in)
        signal, = normalize_vjp(signal)
      if in_name in masked:
        signal = signal * ops.inside(in_window, y, x, sizes[in_name])
    # (B, 3, size, size): conv1's overlap-add writes each colour's rows whole.
    return signal.transpose(0, 3, 1, 2)

  pixels = ops.in_chunks(chain, tuple(units), min(chunk_size, LITERAL_BATCH), count)
  window = levels[-1][1]
  if not place:  # the window, zero outside the image
    return pixels.transpose(0, 2, 3, 1) * ops.inside(window, units.y, units.x, sizes['input'])
  on_image = functools.partial(ops.place, image_size=sizes['input'])
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


# --------------------------------------------------- one forward pass, many projections


class Cache(NamedTuple):
  """What projecting units of some layers needs from one forward pass of a batch.

  images: the batch (N, H, W, 3); maps: {name: (N, h', w', C)} the post-ReLU maps the
  projections read (each layer's own, for its units' values, unless made with
  values=False; and what the rule needs); switches: {pool name: (N, h', w', C)} of the
  pools below them (int32: int8 ones ran the chain ~20% slower). Each array is padded
  around its rows and columns so that every unit's window slices from it without clamping
  (switches with -1, which no cell matches: unpooling drops what falls outside a map)."""
  images: Array
  maps: dict
  switches: dict


FORWARD_IMAGES = 8  # images per step of a cache's forward pass: bounds its maps' memory


def forward_cache(model: models.ConvNet, variables, images: Array, layers: Sequence[str],
                  rule: str = 'deconvnet', values: bool = True) -> Cache:
  """One forward pass of `images`, kept for projecting units of `layers` (`project_cached`).

  Holds only what those projections with `rule` read, and runs the forward pass only as
  high as that. values=False leaves out the layers' own maps: `project_cached` is then
  given each unit's value (the top-k search's), and with the deconvnet rule the pass stops
  at the highest pool below them (pool2 for ZFNet's conv3..conv5)."""
  layers = tuple(dict.fromkeys(layers))
  for layer in layers:
    _check(model, images, layer, [], rule, 'literal')
  return _cache(model, variables, images, layers=layers, rule=rule, values=bool(values))


def project_cached(model: models.ConvNet, variables, cache: Cache, layer: str, image,
                   channel, y, x, rule: str = 'deconvnet', chunk_size: int = 64,
                   value=None, count: Optional[int] = None) -> Array:
  """`project_units` from a `forward_cache`, each projection cut to its window.

  Unit m is (image[m], channel[m], y[m], x[m]) of `layer`'s post-ReLU map, seeded with
  value[m], by default its value in the cache. Returns (M, S, S, 3): the projection inside
  the window of the input that the unit's cone spans (`architecture.windows(spec,
  layer)[-1]`, top-left at window.start(y), window.start(x); cells outside the image are
  zero), which is where `project_units`'s full-size projection is nonzero.

  count: only the first `count` units are projected, the others are padding (their rows
  come back zero): one compiled program serves calls of any fill, and runs only the
  chunks (LITERAL_BATCH units) that hold real units. Default: all of them."""
  missing = sorted(name for name, kind in _needed(model.spec, [layer], rule, value is None)
                   if name not in (cache.maps if kind == 'map' else cache.switches))
  if missing:
    raise ValueError(f'the cache holds no {", ".join(map(repr, missing))} for projecting {layer!r} '
                     f'with rule {rule!r}: make it with forward_cache(..., layers=[..., '
                     f'{layer!r}], rule={rule!r})'
                     + (' or pass value=' if value is None else ''))
  image, channel, y, x = (jnp.asarray(a, jnp.int32).reshape(-1) for a in (image, channel,
                                                                          y, x))
  if value is None:
    before = _pads(model.spec, cache.images.shape[1:])[layer][0]
    value = cache.maps[layer][image, y + before, x + before, channel]
  value = jnp.asarray(value, cache.images.dtype).reshape(-1)
  if count is not None and (not isinstance(count, (int, np.integer)) or isinstance(
      count, bool) or not 0 <= count <= image.shape[0]):
    raise ValueError(f'count must be an int from 0 to the number of units '
                     f'({image.shape[0]}), got {count!r}')
  return _project_cached(model, variables, cache, Units(image, channel, y, x, value),
                         None if count is None else jnp.int32(count), layer=layer,
                         rule=rule, chunk_size=chunk_size)


def cache_inputs(spec, layers: Sequence[str], rule: str = 'deconvnet',
                 values: bool = True) -> tuple[str, ...]:
  """The map layers a cache for `layers` is made from: the maps it keeps, each pool's input.

  In the spec's order ('input' left out): what `cache_from_maps` reads of a
  `models.activations` pass."""
  names = architecture.layer_names(spec)
  wanted = {name if kind == 'map' else (('input',) + names)[names.index(name)]
            for name, kind in _needed(spec, layers, rule, values)}
  return tuple(name for name in names if name in wanted)


def cache_from_maps(model: models.ConvNet, images: Array, maps: dict, layers: Sequence[str],
                    rule: str = 'deconvnet', values: bool = True) -> Cache:
  """`forward_cache` from a forward pass already made (maps: at least `cache_inputs`).

  Lets a pass that needs the maps anyway (the top-k search) keep the cache too."""
  needed = _needed(model.spec, layers, rule, values)
  inputs = {name: x for name, x in dict(maps, input=images).items()
            if name in ('input',) + cache_inputs(model.spec, layers, rule, values)}
  # A few images at a time: each window's nine slices then read the map from the cache.
  where = ops.in_chunks(lambda part: _switches(model.spec, part, needed), inputs,
                        FORWARD_IMAGES)
  return _padded_cache(model.spec, images, maps, where, needed)


def _switches(spec, maps, needed) -> dict:
  """{pool: its switches} for the pools in `needed`, from their inputs in `maps`."""
  names = ('input',) + architecture.layer_names(spec)
  return {name: ops.switches(maps[names[names.index(name) - 1]], architecture.layer(spec, name))
          for name, kind in needed if kind == 'switch'}


@functools.partial(jax.jit, static_argnames=('model', 'layers', 'rule', 'values'))
def _cache(model, variables, images, *, layers, rule, values):
  needed = _needed(model.spec, layers, rule, values)
  inputs = cache_inputs(model.spec, layers, rule, values)
  if not inputs:  # conv1's units with their values given: the chain reads nothing
    return Cache(images, {}, {})

  def step(chunk):  # a few images at a time: bounds the maps' memory
    maps = dict(models.activations(model, variables, chunk[0], inputs), input=chunk[0])
    return ({n: maps[n] for n, kind in needed if kind == 'map'},
            _switches(model.spec, maps, needed))

  maps, where = ops.in_chunks(step, (images,), FORWARD_IMAGES)
  return _padded_cache(model.spec, images, maps, where, needed)


@functools.partial(jax.jit, static_argnames=('model', 'layer', 'rule', 'chunk_size'))
def _project_cached(model, variables, cache, units, count, *, layer, rule, chunk_size):
  return _literal_units(model, variables, cache, units, layer, rule, chunk_size,
                        place=False, count=count)


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

  Its convolutions are lax's own. Its forward values equal the literal method's forward
  pass up to float32 rounding (on CPUs that pass computes large maps' convolutions by
  `fast_ops.cpu_conv`: matrix products or Winograd), so a switch can differ only where a
  pooling window's two largest values tie within rounding."""
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
