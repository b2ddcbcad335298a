"""Occlusion sensitivity (Zeiler & Fergus, Sec. 4.2, Fig. 7), computed incrementally.

    maps = occlusion.sensitivity(model, variables, image, label, patch=32, stride=8)
    maps.prob[i, j]       # softmax probability of `label` with the occluder at (i, j)
    maps.top_class[i, j]  # the most probable class then
    maps.feature[i, j]    # summed activity of the strongest conv5 map (panel b)
    maps.projection       # that map's strongest activation projected to pixels (panel c)

Semantics and the choices the paper leaves open: docs/analyses.md (zfjax.occlusion).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zfjax import architecture, deconv, fast_ops, invariance, models
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
                field_threshold: float | None = None, winograd: bool | str = 'auto',
                chunk_size: int = 256) -> Sensitivity:
  """Occlusion maps of one (H, W, 3) image for class `label` (docs/analyses.md).

  The incremental method recomputes, per occluder, the window of each layer that the
  occluder changes; without a field threshold, occluders near the image's border (smaller
  windows) may go in groups of their own, each with its windows' sizes (_groups).

  field_threshold: None (exact) or tau in (0, 1]: the approximate mode of Krypton
    (Nakandala et al., SIGMOD 2019), projective-field thresholding. Each layer's changed
    window is capped at ceil(tau * the layer's size) cells per axis, centred on the cells
    that change there; changes outside it are dropped (the cached activations stand in), so
    deep layers recompute less. benchmarks/occlusion.py reports speed and error per tau.
  winograd: 'auto' (the default), True or False. Winograd's minimal filtering computes the
    windows of the convolutions with ceil(kernel / stride) = 3 (docs/analyses.md): faster,
    equal to the exact maps up to float32 rounding (tests hold it to an independent torch
    reference within 1e-4 in probability; benchmarks/occlusion.py reports the difference).
    'auto' uses it wherever it applies: with the incremental method, on each such
    convolution whose window rounds up to whole tiles inside its map (the others stay
    direct); with method='naive' nowhere. True asks for it, so it needs the incremental
    method. False is the exact direct mode (equal to method='naive' up to float32 rounding).
  chunk_size: at most this many positions go through the map layers together (vmapped),
    per step of a loop; fewer steps run faster and hold more memory. The dense layers
    take max(chunk_size, 1024) positions a step after the loops, while every position's
    last map fits in 256 MiB (ZFNet at 224: 7281 positions), else chunk_size in them.
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
  use_winograd = _use_winograd(winograd, method)
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
                      field_threshold=field_threshold, winograd=use_winograd,
                      chunk_size=chunk_size)


def _use_winograd(winograd, method) -> bool:
  """Whether windows go by Winograd: 'auto' with the incremental method, or True."""
  is_auto = isinstance(winograd, str) and winograd == 'auto'
  if not (is_auto or isinstance(winograd, (bool, np.bool_))) or (
      not is_auto and winograd and method != 'incremental'):
    raise ValueError(f"winograd must be 'auto', True or False, and True only with the "
                     f'incremental method; got {winograd!r} with method {method!r}')
  return method == 'incremental' and bool(winograd)


@functools.partial(jax.jit, static_argnames=('model', 'patch', 'stride', 'layer', 'method',
                                             'field_threshold', 'winograd', 'chunk_size'))
def _sensitivity(model, variables, image, label, fill, *, patch, stride, layer, method,
                 field_threshold, winograd, chunk_size):
  names = architecture.layer_names(model.spec)
  cache = models.activations(model, variables, image[None], names)
  cache = {name: value[0] for name, value in cache.items()}
  cache['input'] = image
  channel = jnp.argmax(cache[layer].reshape(-1, cache[layer].shape[-1]).max(0))
  logits = cache[names[-1]]
  rows = positions(image.shape[0], patch, stride)
  cols = positions(image.shape[1], patch, stride)

  if method == 'naive':
    grid = np.stack(np.meshgrid(np.arange(rows), np.arange(cols), indexing='ij'), -1)
    def evaluate(start):
      occluded = lax.dynamic_update_slice(image, jnp.full((patch, patch, 3), fill,
                                                          image.dtype), (start[0], start[1], 0))
      out = models.activations(model, variables, occluded[None], (layer, names[-1]))
      return out[names[-1]][0], out[layer][0, ..., channel].sum()

    per_position = jnp.asarray(grid.reshape(-1, 2) * stride, jnp.int32)
    out_logits, feature = invariance.padded_map(evaluate, per_position, chunk_size)
  else:
    map_layers = _maps(model.spec, image.shape)
    head = functools.partial(_head, model, variables['params'], model.spec[len(map_layers):])
    last_map = cache[map_layers[-1][0].name]
    head_after = rows * cols * last_map.size * last_map.dtype.itemsize <= _HEAD_AFTER_BYTES
    outs, indices, kernels = [], [], {}
    for plan, windows, index in _groups(model.spec, image.shape, patch, stride,
                                        field_threshold, winograd):
      params = _group_params(variables['params'], plan, kernels)
      evaluate = functools.partial(_incremental, model, params, cache, plan, fill=fill,
                                   patch=patch, layer=layer, channel=channel)
      if not head_after:
        evaluate = functools.partial(_then_head, head, evaluate)
      outs.append(invariance.padded_map(evaluate, windows, chunk_size))
      indices.append(index)
    order = np.argsort(np.concatenate(indices))
    outputs, feature = (jnp.concatenate(parts)[order] for parts in zip(*outs))
    out_logits = (invariance.padded_map(head, outputs, max(chunk_size, _HEAD_CHUNK))
                  if head_after else outputs)  # the last maps, or logits already
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

# Border groups (_groups): a split must save this share of the convolutions' multiply-adds,
# and each class hold this many positions along its axis (each group compiles a loop body).
_MIN_SAVING = 0.05
_MIN_CLASS = 8
# The dense layers take every group's positions together, up to this many per step (75 MB
# of activations for ZFNet): one fc6 product at 625 positions ran at 200 GFLOP/s where four
# per group, beside the groups' convolutions, averaged half that. They do so while the
# last maps of all positions fit in _HEAD_AFTER_BYTES (ZFNet: 36 KiB a position, 7281
# positions); beyond that, each group's loop runs them, so memory stays flat.
_HEAD_CHUNK = 1024
_HEAD_AFTER_BYTES = 1 << 28


class _Step(NamedTuple):
  """One map layer's changed window: static size per axis, and the layer geometry."""
  record: object
  input_name: str
  size: tuple[int, int]        # changed-window size at this layer's output
  exact_size: tuple[int, int]  # the same without field thresholding
  map_size: tuple[int, int]    # this layer's output size
  input_size: tuple[int, int]  # its input map's size
  tile: tuple[int, ...]        # Winograd output tile (m_h, m_w); (): direct convolution
  computed_size: tuple[int, int]  # the window computed: size rounded up to whole tiles


class _Window(NamedTuple):
  """Where one occluder's windows of a step lie, (2,) int32 each (row, column).

  Static geometry, laid out once in NumPy for all positions: the vmapped program only loads
  it (computed in the program, its index arithmetic was fused into every gathered cell)."""
  at: Array            # first cell of the computed window of new values
  region_start: Array  # first cell of the input region it reads (in padded coordinates)
  offset: Array        # the lower window's new values' first cell inside that region


def _groups(spec, image_shape, patch, stride, field_threshold=None, winograd=False):
  """The occluder positions in groups, each with static windows: [(plan, windows, index)].

  index: the group's positions, numbered row-major in the (I, J) grid. An occluder near the
  image's border changes fewer cells, so without a field threshold each axis's positions
  may split in two classes by the cells they change (smallest first): each group, a class
  of rows times one of columns, computes windows of its own size. Per axis, the split with
  the fewest convolution multiply-adds (_macs) is taken if it saves _MIN_SAVING of them
  and each class holds _MIN_CLASS positions or more; otherwise one group."""
  starts = [np.arange(positions(n, patch, stride)) * stride for n in image_shape[:2]]
  channels = {name: shape[-1] for name, shape in architecture.shapes(spec, image_shape).items()}
  channels['input'] = image_shape[-1]

  def cost(rows, cols):
    plan, _ = _group(spec, image_shape, patch, rows, cols, field_threshold, winograd)
    return len(rows) * len(cols) * _macs(plan, channels)

  classes = [[s] for s in starts]
  if field_threshold is None:
    classes = [_split(spec, image_shape, patch, 0, starts[0], lambda c: cost(c, starts[1])),
               _split(spec, image_shape, patch, 1, starts[1], lambda c: cost(starts[0], c))]
  groups = []
  for rows in classes[0]:
    for cols in classes[1]:
      plan, windows = _group(spec, image_shape, patch, rows, cols, field_threshold, winograd)
      windows = [_Window(*(_grid(*pair) for pair in window)) for window in windows]
      index = (rows // stride)[:, None] * len(starts[1]) + cols // stride
      groups.append((plan, windows, index.ravel()))
  return groups


def _split(spec, image_shape, patch, axis, starts, cost):
  """One axis's occluder starts as classes: [starts], or split in two (_groups).

  Ordered by the cells they change (their windows' sizes summed over the layers), the
  first t and the rest, each of _MIN_CLASS or more: the t of the least summed cost(class),
  if that saves _MIN_SAVING of cost(starts)."""
  size = lambda s: sum(exact for exact, _, _ in _axis(spec, image_shape, axis, s[None], patch))
  order = sorted(starts, key=size)
  splits = [(np.sort(order[:t]), np.sort(order[t:]))
            for t in range(_MIN_CLASS, len(order) - _MIN_CLASS + 1)]
  costs = [cost(small) + cost(large) for small, large in splits]
  if costs and min(costs) <= (1 - _MIN_SAVING) * cost(starts):
    return list(splits[int(np.argmin(costs))])
  return [starts]


def _plan(spec, image_shape, patch, field_threshold=None, winograd=False, stride=1):
  """The static windows of one group of all occluders `stride` apart (_group)."""
  starts = [np.arange(positions(n, patch, stride)) * stride for n in image_shape[:2]]
  return _group(spec, image_shape, patch, *starts, field_threshold, winograd)[0]


@functools.lru_cache(maxsize=64)
def _maps(spec, image_shape):
  """(record, its input's name, input size, output size) of each map layer, in order."""
  sizes = architecture.shapes(spec, image_shape)
  maps, input_name = [], 'input'
  for record in spec:
    if isinstance(record, (Dense, AvgPool)):
      break
    maps.append((record, input_name, sizes.get(input_name, image_shape)[:2],
                 sizes[record.name][:2]))
    input_name = record.name
  return maps


def _axis(spec, image_shape, axis, starts, patch, field_threshold=None):
  """Per map layer along one axis, for occluders at `starts`: (exact, size, first).

  Each occluder's run of changed cells [lo, hi] at a layer (inside its map) is the cells
  whose input window reaches the lower layer's run. exact: the longest run; size: exact,
  or with a field threshold tau at most ceil(tau * n) of the layer's n cells; first: each
  occluder's window start (N,), its run's start (centred on the run where capped), kept
  inside the map. A capped window passes on only its part of the run."""
  lo, hi = starts, starts + patch - 1
  out = []
  for record, _, _, map_size in _maps(spec, image_shape):
    k, s, p = _kernel_stride_pad(record)
    n = map_size[axis]
    lo, hi = np.maximum(-((-(lo + p - k + 1)) // s), 0), np.minimum((hi + p) // s, n - 1)
    exact = max(1, int((hi - lo).max()) + 1)
    size = exact if field_threshold is None else min(
        exact, max(1, math.ceil(field_threshold * n)))
    first = np.clip(lo + np.maximum(hi - lo + 1 - size, 0) // 2, 0, n - size)
    lo, hi = np.maximum(lo, first), np.minimum(hi, first + size - 1)
    out.append((exact, size, first))
  return out


def _group(spec, image_shape, patch, rows, cols, field_threshold, winograd):
  """Plan and windows of the occluders whose top-left pixels are rows x cols (row-major).

  The plan: per map layer, the changed window's static size (the longest run of changed
  cells per axis, _axis), with Winograd the window computed rounded up to whole tiles
  (_winograd_tile; its extra cells recompute unchanged values). The windows: per layer,
  the fields of a _Window as (row, column) pairs of arrays, rows (R,) and columns (C,):
  where each occluder's computed window lies, kept inside the map."""
  per_axis = [_axis(spec, image_shape, axis, np.asarray(starts), patch, field_threshold)
              for axis, starts in enumerate((rows, cols))]
  steps, windows = [], []
  at = (np.asarray(rows), np.asarray(cols))
  for (record, input_name, input_size, map_size), *sizes in zip(_maps(spec, image_shape),
                                                               *per_axis):
    exact, size, first = (tuple(x) for x in zip(*sizes))
    k, s, p = _kernel_stride_pad(record)
    tile = _winograd_tile(size, map_size) if (
        winograd and isinstance(record, Conv) and -(-k // s) == 3) else ()
    computed = tuple(-(-w // m) * m for w, m in zip(size, tile)) if tile else size
    steps.append(_Step(record, input_name, size, exact, map_size, input_size, tile, computed))
    if isinstance(record, Norm):  # per cell: the same window (only `at` is read)
      windows.append((at, at, tuple(np.zeros_like(a) for a in at)))
      continue
    new_at = tuple(np.clip(f, 0, n - c) for f, n, c in zip(first, map_size, computed))
    region = tuple(a * s for a in new_at)
    windows.append((new_at, region, tuple(a + p - r for a, r in zip(at, region))))
    at = new_at
  return steps, windows


def _grid(rows, cols):
  """(R * C, 2) int32: per-row and per-column values for each of rows x cols, row-major."""
  return jnp.asarray(np.stack(np.broadcast_arrays(rows[:, None], cols[None]), -1).reshape(
      -1, 2), jnp.int32)


def _macs(plan, channels) -> int:
  """Multiply-adds of one occluder's convolution windows (Winograd: its tiles' products)."""
  total = 0
  for step in plan:
    if isinstance(step.record, Conv):
      k, s, _ = _kernel_stride_pad(step.record)
      taps = math.prod((m + 2) * s / m for m in step.tile) if step.tile else k * k
      total += (math.prod(step.computed_size) * taps * channels[step.input_name]
                * step.record.features)
  return total


def _winograd_tile(window, map_size) -> tuple[int, ...]:
  """The cheapest Winograd tile for a window, (m_h, m_w); () if none fits.

  F(m_h x m_w, 3 x 3) takes (m_h + 2)(m_w + 2) products a tile, so the multiplies
  factor by axis: per axis, the m in 2..4 with the fewest tiles times (m + 2) (on a tie
  the smaller m, which rounds least), among those whose rounded-up window fits the map.
  A 7 x 9 window goes by 4 x 3 tiles: 17% fewer products than by 4 x 4 or 3 x 3."""
  tile = []
  for w, n in zip(window, map_size):
    costs = {m: -(-w // m) * (m + 2) for m in (2, 3, 4) if -(-w // m) * m <= n}
    if not costs:
      return ()
    tile.append(min(costs, key=costs.get))
  return tuple(tile)


def _kernel_stride_pad(record):
  if isinstance(record, Conv):
    return record.kernel, record.stride, record.padding
  if isinstance(record, Pool):
    return record.window, record.stride, 0
  return 1, 1, 0


def _group_params(params, plan, kernels):
  """params with the Winograd-transformed kernel of each of the plan's tiled convolutions.

  kernels: the transformed kernels by (layer, tile), shared between groups (filled in)."""
  params = dict(params)
  for step in plan:
    if step.tile:
      name, key = step.record.name, (step.record.name, step.tile)
      if key not in kernels:
        kernels[key] = fast_ops.winograd_kernel(params[name]['kernel'], step.tile,
                                                  step.record.stride)
      params[name] = dict(params[name], kernel=kernels[key])
  return params


def _incremental(model, params, cache, plan, windows, *, fill, patch, layer, channel):
  """Last map and feature sum for one occluder; its windows (a _Window per step), _group."""
  values = jnp.full((patch, patch, 3), fill, cache['input'].dtype)
  feature = None
  for step, window in zip(plan, windows):
    record = step.record
    if isinstance(record, Norm):
      values = model.normalize(values[None], record)[0]
      continue
    k, s, p = _kernel_stride_pad(record)
    # Winograd reads the region of its kernel zero-padded to 3s taps (fast_ops.winograd_conv).
    region = _merged_region(cache[step.input_name], values, window, step,
                            3 * s if step.tile else k, s, p)
    values = _layer_valid(model, step, params, region)
    if record.name == layer:
      feature = _merged_sum(cache[layer][..., channel], values[..., channel], window.at)
  return _write(cache[plan[-1].record.name], values, windows[-1].at), feature


def _then_head(head, evaluate, windows):
  """evaluate's last map through the dense layers: logits and feature sum."""
  last_map, feature = evaluate(windows)
  return head(last_map), feature


def _head(model, params, records, x):
  """Logits of one occluder from its last map, by the layers after the maps (records)."""
  x = x[None]
  for record in records:
    if isinstance(record, AvgPool):
      x = models.adaptive_avg_pool(x, record.size)
    else:
      x = x.reshape(1, -1) @ params[record.name]['kernel'] + params[record.name]['bias']
      if record.relu:
        x = model.relu(x)
  return x[0]


def _merged_region(cached_input, values, window, step, k, s, p):
  """The input cells that the layer's computed window reads.

  The cached input map, padded as the layer pads it, with the new `values` of the lower
  window written in."""
  extent = tuple((n - 1) * s + k for n in step.computed_size)
  after = tuple(max(p, (m - 1) * s + k - n - p) for m, n in
                zip(step.map_size, step.input_size))
  pad_value = -jnp.inf if isinstance(step.record, Pool) else 0.0
  padded = jnp.pad(cached_input, ((p, after[0]), (p, after[1]), (0, 0)),
                   constant_values=pad_value)
  region = lax.dynamic_slice(padded, (window.region_start[0], window.region_start[1], 0),
                             (*extent, cached_input.shape[-1]))
  placed = _place(values, window.offset, extent)
  inside = _place(jnp.ones(values.shape[:2] + (1,), bool), window.offset, extent)
  return jnp.where(inside, placed, region)


def _place(values, offset, extent):
  """values (h, w, c) at `offset` on a zero (extent, c) canvas (cells outside dropped)."""
  h, w = values.shape[:2]
  padded = jnp.pad(values, ((extent[0], extent[0]), (extent[1], extent[1]), (0, 0)))
  return lax.dynamic_slice(padded, (extent[0] - offset[0], extent[1] - offset[1], 0),
                           (*extent, values.shape[-1]))


def _layer_valid(model, step, params, region):
  """The step's layer on an already padded region.

  The step's layer on an already padded region, without further padding (with a
  Winograd tile, `params` holds the transformed kernel)."""
  record = step.record
  if isinstance(record, Conv):
    kernel = params[record.name]['kernel']
    if step.tile:
      conv = fast_ops.winograd_conv(region, kernel, step.tile, record.stride)
    elif region.shape[-1] < 8:  # conv1: im2col would copy 3 floats at a time
      conv = lax.conv_general_dilated(region[None], kernel, (record.stride,) * 2, 'VALID',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))[0]
    else:
      conv = _conv_as_matmul(region, kernel, record.stride)
    return model.relu(conv + params[record.name]['bias'])
  # Max pooling is separable: rows, then columns (the same values). XLA:CPU's reduce_window
  # costs about its window's area per output; two 1-D passes measured 4x faster on these
  # windows.
  w, s = record.window, record.stride
  rows = lax.reduce_window(region, -jnp.inf, lax.max, (w, 1, 1), (s, 1, 1), 'VALID')
  return lax.reduce_window(rows, -jnp.inf, lax.max, (1, w, 1), (1, s, 1), 'VALID')


def _conv_as_matmul(region, kernel, stride):
  """VALID convolution of one (h, w, c) region as patches @ kernel.

  Vmapped over occluder positions this is one large matmul; XLA's CPU convolution measured
  1.4-2x slower on batches of small windows with hundreds of channels (conv2-5), but faster
  with conv1's three (whose im2col copies three floats at a time)."""
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
