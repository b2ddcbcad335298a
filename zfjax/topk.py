"""The paper's Fig. 2: each feature map's top-k activations over a dataset, projected.

    results = topk.search(model, variables, batches(), layers=('conv1', 'conv5'), k=9)
    top = results['conv5']            # TopK of (C, k) arrays: values, example, y, x
    images = topk.gather_images(batches(), results)    # the images of every entry
    patches = topk.crops(model, top, images, 'conv5', channels=[3, 17])
    projections = topk.project(model, variables, top, images, 'conv5', channels=[3, 17])
    # patches.pixels, projections.pixels: (2, 9, S, S, 3), S = 139 for ZFNet's conv5;
    # row c, column j: the j-th strongest activation of channel channels[c].

Semantics and the choices the paper leaves open: docs/analyses.md (zfjax.topk).
"""

from __future__ import annotations

import functools
from typing import Iterable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from zfjax import architecture, deconv, deconv_ops, models, parallel
from zfjax.architecture import Conv

Array = jax.Array

_NO_EXAMPLE = np.iinfo(np.int32).max  # sorts after every real example


class TopK(NamedTuple):
  """One layer's search result, arrays of shape (C, k).

  For channel c, its j-th strongest activation has value `values[c, j]` at (`y[c, j]`, `x[c,
  j]`) of the layer's map in example `example[c, j]`. Unfilled entries: value -inf, example
  = y = x = -1."""
  values: Array
  example: Array
  y: Array
  x: Array


class Images(NamedTuple):
  """Images of some examples: `image[m]` (H, W, 3) is example `example[m]` (ascending)."""
  example: Array
  image: Array


class Kept(NamedTuple):
  """A batch's projection cache, kept by `search(..., keep=...)` for `project_layers`.

  examples: (B,) NumPy int, the example number of each row of cache.images (-1: padding).
  cache: the `deconv.Cache` of those rows for projecting the searched conv layers, its
    switches narrowed to int8 where they fit (`project_layers` widens them back)."""
  examples: np.ndarray
  cache: deconv.Cache


class Patches(NamedTuple):
  """Square windows of images or projections, one per top-k entry, for a grid figure.

  pixels: (C, k, S, S, 3), zero where `valid` is False.
  valid: (C, k, S, S) bool: the pixel lies in the unit's exact receptive field (all False
    for unfilled entries).
  top, left: (C, k) int32: the image pixel under pixels[c, j, 0, 0] (may be negative).
  """
  pixels: Array
  valid: Array
  top: Array
  left: Array


# ---------------------------------------------------------------------------- search


def search(model: models.ConvNet, variables, batches: Iterable, layers: Sequence[str] = (
    'conv5',), k: int = 9, mesh: Optional[Mesh] = None, keep: Optional[list] = None,
           keep_rule: str = 'deconvnet') -> dict[str, TopK]:
  """The k strongest activations of every channel of each layer over a dataset.

  Args:
    model: a `models.ConvNet`.
    variables: its variables ({'params': ...}).
    batches: iterable of (B, H, W, 3) arrays or dicts {'image', optional 'mask'}; read once.
    layers: map layer names (a single name is fine).
    k: entries per channel.
    mesh: a mesh with axis 'data' (default: `parallel.create_mesh()`, all devices).
    keep: a list, or None. Given, each batch's cache for projecting the searched conv
      layers with `keep_rule` is appended to it (a `Kept`), made from the search's own
      forward pass: `project_layers(..., kept=keep)` then runs none. It holds every
      image's cache (switches as int8: 0.7 MiB an image for ZFNet at 224x224 with the
      deconvnet rule) and the images: for datasets that fit in memory.
    keep_rule: the rule the kept caches serve ('deconvnet', 'guided' or 'backprop').
  Returns:
    {layer: TopK} with (C, k) arrays, replicated over the mesh (docs/analyses.md).
  """
  layers = _check_layers(model, layers)
  if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
    raise ValueError(f'k must be a positive integer, got {k!r}')
  if not isinstance(batches, Iterable) or isinstance(batches, (np.ndarray, jax.Array, dict)):
    raise ValueError(f'batches must be an iterable of image batches (a list, a generator; '
                     f'one array of images: [images]), got {type(batches).__name__}')
  conv_layers = tuple(name for name in layers if name in architecture.conv_names(model.spec))
  if keep is not None and not (isinstance(keep, list) and conv_layers):
    raise ValueError(f'keep must be a list (the caches are appended to it) and layers must '
                     f'include a conv layer; got keep={type(keep).__name__}, '
                     f'layers={list(layers)}')
  if keep is not None and keep_rule not in deconv.RULES:
    raise ValueError(f'unknown keep_rule {keep_rule!r}; choose one of {deconv.RULES}')
  kept_for = None if keep is None else (conv_layers, keep_rule)
  mesh = mesh or parallel.create_mesh()
  replicated = NamedSharding(mesh, P())
  rows = NamedSharding(mesh, P(parallel.DATA))
  devices = mesh.devices.size
  variables = jax.device_put(variables, replicated)
  state = jax.device_put(
      {name: empty(_channels(model.spec, name), k) for name in layers}, replicated)
  seen, size = 0, 0
  for batch in batches:
    images, mask = unpack_batch(batch)
    size = max(size, -(-images.shape[0] // devices) * devices)
    images, mask = pad_batch(images, mask, size)
    state, cache = _update(model, layers, replicated, kept_for, variables, state,
                           jax.device_put(images, rows), jax.device_put(mask, rows),
                           jnp.asarray(seen, jnp.int32))
    if keep is not None:  # its switches are int8 while kept, where they fit
      keep.append(Kept(np.where(mask, seen + np.cumsum(mask) - 1, -1), cache))
    seen += int(np.sum(mask))
  return state


def empty(channels: int, k: int) -> TopK:
  """A top-k with no entries yet: values -inf, indices -1."""
  return TopK(jnp.full((channels, k), -jnp.inf, jnp.float32),
              *(jnp.full((channels, k), -1, jnp.int32) for _ in range(3)))


def candidates(feature_map: Array, mask: Array, example: Array) -> TopK:
  """Each image's strongest location per channel of a (B, H, W, C) map, as (C, B) arrays.

  Ties: first in row-major order. Masked rows: value -inf, example past every real one."""
  return _candidates(*strongest_positions(feature_map), feature_map.shape[2], mask, example)


def strongest_positions(feature_map: Array) -> tuple[Array, Array]:
  """(B, C) value and flat row-major position of each image's maximum per channel."""
  flat = feature_map.reshape(feature_map.shape[0], -1, feature_map.shape[-1])
  value, where = deconv_ops.first_maximum(flat, axis=1)              # (B, C)
  return value.astype(jnp.float32), where


def _candidates(value: Array, where: Array, width: int, mask: Array, example: Array) -> TopK:
  """`candidates` from `strongest_positions` of a map `width` columns wide."""
  b, c = value.shape
  value = jnp.where(mask[:, None], value, -jnp.inf)
  example = jnp.where(mask, example, _NO_EXAMPLE)
  return TopK(value.T, jnp.broadcast_to(example[None, :], (c, b)).astype(jnp.int32),
              (where // width).T, (where % width).T)


def merge(a: TopK, b: TopK, k: int) -> TopK:
  """The k best of two (C, *) candidate sets by (value descending, example ascending).

  Entries left at -inf become unfilled (example, y, x = -1)."""
  joined = [jnp.concatenate(pair, axis=1) for pair in zip(a, b)]
  negated, example, y, x = lax.sort((-joined[0], *joined[1:]), dimension=1, num_keys=2)
  values = -negated[:, :k]
  filled = values > -jnp.inf
  return TopK(values, *(jnp.where(filled, v[:, :k], -1) for v in (example, y, x)))


SEARCH_BYTES = 3 << 19  # input per step of the search's forward pass: two 224x224 images


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _update(model, layers, replicated, kept_for, variables, state, images, mask, offset):
  """The merged top-k after one batch, and its kept cache (None unless kept_for).

  The forward pass, each image's strongest positions and the cache run a few images at a
  time (SEARCH_BYTES of input, at least one image): conv1's map of a whole batch (4.6 MiB
  an image for ZFNet at 224x224) was written, rectified and pooled through memory, at 20%
  of the batch's time. Small images go a whole batch at once."""
  names = layers + (deconv.cache_inputs(model.spec, *kept_for, values=False) if kept_for
                    else ())

  def step(chunk):
    maps = models.activations(model, variables, chunk, tuple(dict.fromkeys(names)))
    best = {name: strongest_positions(maps[name]) for name in layers}
    if not kept_for:
      return best, None
    cache = deconv.cache_from_maps(model, chunk, maps, *kept_for, values=False)
    return best, cache._replace(switches=_compact(model.spec, cache.switches))

  per_step = max(1, SEARCH_BYTES // (images[0].size * images.dtype.itemsize))
  best, cache = deconv_ops.in_chunks(step, images, per_step)
  example = offset + jnp.cumsum(mask, dtype=jnp.int32) - 1
  shapes = architecture.shapes(model.spec, images.shape[1:])
  out = {}
  for name in layers:
    k = state[name].values.shape[1]
    out[name] = merge(state[name], _candidates(*best[name], shapes[name][1], mask, example),
                      k)
  return lax.with_sharding_constraint(out, replicated), cache


def unpack_batch(batch):
  """(images, mask) of a batch: an array, or a dict with 'image' and optionally 'mask'."""
  if isinstance(batch, dict):
    if 'image' not in batch:
      raise ValueError(f"a dict batch needs an 'image' entry; got keys {sorted(batch)}")
    images, mask = batch['image'], batch.get('mask')
  else:
    images, mask = batch, None
  if getattr(images, 'ndim', None) != 4 or images.shape[-1] != 3:
    raise ValueError(f'expected batches of (B, H, W, 3) images, got shape '
                     f'{getattr(images, "shape", type(images).__name__)} (ten-crop batches: '
                     f'flatten the crops into the batch axis)')
  mask = np.ones(images.shape[0], bool) if mask is None else np.asarray(mask, bool)
  if mask.shape != images.shape[:1]:
    raise ValueError(f'mask must have shape {images.shape[:1]}, got {mask.shape}')
  return images, mask


def pad_batch(images, mask, size):
  """Pads a batch to `size` rows with zero images and mask False."""
  extra = size - images.shape[0]
  if not extra:
    return images, mask
  pad = ((0, extra), (0, 0), (0, 0), (0, 0))
  images = np.pad(images, pad) if isinstance(images, np.ndarray) else jnp.pad(images, pad)
  return images, np.pad(mask, (0, extra))


def _check_layers(model, layers) -> tuple[str, ...]:
  if layers is None or not isinstance(layers, (str, Iterable)):
    raise ValueError(f'layers must be a map layer name or a list of them, got {layers!r}')
  layers = (layers,) if isinstance(layers, str) else tuple(layers)
  valid = architecture.map_names(model.spec)
  unknown = [name for name in layers if name not in valid]
  if unknown or not layers:
    raise ValueError(f'cannot search layer(s) {unknown or layers}: choose map layers of '
                     f'this model, from {valid}')
  return tuple(dict.fromkeys(layers))


def _channels(spec, name) -> int:
  """Maps of layer `name`: those of the last conv at or below it."""
  names = architecture.layer_names(spec)
  convs = [r for r in spec[:names.index(name) + 1] if isinstance(r, Conv)]
  return convs[-1].features


# --------------------------------------------------------------------- second pass


def gather_images(batches: Iterable, examples) -> Images:
  """The images of the given example numbers, from a second pass over the batches.

  The images of the given example numbers (any shape, or a TopK, or a list or dict of
  them; -1 is ignored), from a second pass over the same batches, or from the list that
  `search(..., keep=...)` filled (its caches hold the images: no second pass). Holds one
  batch and the wanted images; stops reading once it has them all."""
  wanted = np.unique(_example_numbers(examples))
  wanted = wanted[wanted >= 0]
  found, seen = None, 0
  for images, number in _numbered(batches) if wanted.size else ():
    take = (number >= 0) & np.isin(number, wanted)
    seen = max(seen, int(number.max(initial=-1)) + 1)
    if take.any():
      picked = np.asarray(images)[take]
      if found is None:
        found = np.zeros((wanted.size, *picked.shape[1:]), picked.dtype)
      found[np.searchsorted(wanted, number[take])] = picked
    if seen > wanted[-1]:
      break
  if wanted.size and seen <= wanted[-1]:
    raise ValueError(f'the batches hold {seen} examples but example {wanted[-1]} was asked '
                     'for: pass the same batches, in the same order, as to search')
  if found is None:
    found = np.zeros((0, *architecture.INPUT_SHAPE), np.float32)
  return Images(jnp.asarray(wanted, jnp.int32), jnp.asarray(found))


def _numbered(batches: Iterable):
  """(images, example number of each row, -1 for padding) of batches or of `Kept` caches."""
  seen = 0
  for batch in batches:
    if isinstance(batch, Kept):
      yield batch.cache.images, np.asarray(batch.examples)
      continue
    images, mask = unpack_batch(batch)
    yield images, np.where(mask, seen + np.cumsum(mask) - 1, -1)
    seen += int(mask.sum())


def _example_numbers(examples) -> np.ndarray:
  if isinstance(examples, TopK):
    return np.asarray(examples.example).ravel()
  if isinstance(examples, dict):
    examples = list(examples.values())
  if isinstance(examples, (list, tuple)):
    parts = [_example_numbers(e) for e in examples]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)
  return np.asarray(examples).ravel()


# ------------------------------------------------------------------ patches for Fig. 2


def crops(model: models.ConvNet, result: TopK, images: Images, layer: str,
          channels=None) -> Patches:
  """The image patch under each entry's receptive field (see `Patches`).

  `channels` picks rows of the result (default: all); images from `gather_images`."""
  entries, _ = _select(result, channels)
  return crop_entries(model, entries, images, layer)


def crop_entries(model: models.ConvNet, entries: TopK, images: Images, layer: str) -> Patches:
  """The image patch under each of `entries` (a TopK of any shape; unfilled: zeros)."""
  geometry = _geometry(model.spec, layer, entries, images)
  rows = _rows(images, entries.example)
  pixels = _cut(images.image, rows, geometry.top, geometry.left, geometry.valid)
  return geometry._replace(pixels=pixels)


def project(model: models.ConvNet, variables, result: TopK, images: Images, layer: str,
            channels=None, rule: str = 'deconvnet', method: str = 'literal',
            images_per_call: int = 16, units_per_call: int = 64) -> Patches:
  """The deconvnet projection of each entry, cut to the crops' windows.

  The deconvnet projection of each entry (`deconv.project_units`, seeded with the
  activation's own value), cut to the same windows as `crops`; see `project_entries`.
  Unfilled entries give zero patches."""
  entries, channels = _select(result, channels)
  channel = np.broadcast_to(channels[:, None], entries.example.shape)
  patches = project_entries(model, variables, entries, channel, images, layer, rule=rule,
                            method=method, images_per_call=images_per_call,
                            units_per_call=units_per_call)
  return patches._replace(pixels=jnp.asarray(patches.pixels))


def project_entries(model: models.ConvNet, variables, entries: TopK, channel, images: Images,
                    layer: str, rule: str = 'deconvnet', method: str = 'literal',
                    images_per_call: int = 16, units_per_call: int = 64) -> Patches:
  """Projections of entries of any shape: entry i is `channel[i]` at entries' example, y, x.

  Entries are sorted by image and projected in calls of at most `images_per_call` images
  (one forward pass each) and `units_per_call` units. Every call is padded to the same
  shapes (`units_per_call` units, and the most distinct images any call needs rounded up
  to a power of two), so a layer's projection compiles once or a few times. Unfilled
  entries (example -1) give zero patches. Pixels come back as a NumPy array."""
  geometry = _geometry(model.spec, layer, entries, images)
  shape = entries.example.shape
  flat = TopK(*(np.asarray(a).reshape(-1) for a in entries))
  channel = np.asarray(channel, np.int32).reshape(-1)
  top, left = (np.asarray(a).reshape(-1) for a in (geometry.top, geometry.left))
  valid = np.asarray(geometry.valid).reshape(-1, *geometry.valid.shape[-2:])
  rows = np.asarray(_rows(images, flat.example))
  filled = np.flatnonzero(flat.example >= 0)
  order = filled[np.argsort(rows[filled], kind='stable')]
  size = valid.shape[-1]
  pixels = np.zeros((flat.example.size, size, size, images.image.shape[-1]), np.float32)
  calls = _calls(rows[order], images_per_call, units_per_call)
  needed = max([np.unique(rows[order[a:b]]).size for a, b in calls], default=1)
  call_size = min(1 << (needed - 1).bit_length(), max(needed, images_per_call))
  for start, stop in calls:
    chosen = order[start:stop]
    call_rows, local = np.unique(rows[chosen], return_inverse=True)
    unit = lambda a, chosen=chosen: _pad_to(a[chosen], units_per_call)
    projection = deconv.project_units(
        model, variables, images.image[_pad_to(call_rows, call_size)], layer,
        _pad_to(local.reshape(-1), units_per_call), unit(channel), unit(flat.y),
        unit(flat.x), rule=rule, method=method, chunk_size=units_per_call)
    cut = _cut(projection, jnp.arange(units_per_call), unit(top), unit(left), unit(valid))
    pixels[chosen] = np.asarray(cut)[:chosen.size]
  return geometry._replace(pixels=pixels.reshape(*shape, *pixels.shape[1:]))


CACHE_BYTES = 1 << 27  # project_layers' forward caches hold at most this many bytes


def project_layers(model: models.ConvNet, variables, wanted: dict, images: Images,
                   rule: str = 'deconvnet', images_per_call: Optional[int] = None,
                   units_per_call: int = 64, kept: Optional[Sequence[Kept]] = None) -> dict:
  """Projections of entries of several layers, each image's forward pass shared by all.

  `wanted`: {layer: (entries, channel)}, entries a TopK of any shape and channel of the
  same shape (as `project_entries`). Images are taken `images_per_call` at a time (sorted,
  padded to that many; by default as many as a cache of CACHE_BYTES holds, evened out over
  all of `images`, so that calls given as many images share their compiled programs
  whichever images the entries name): one forward pass (`deconv.forward_cache`) as high as the
  projections read (with the deconvnet rule, the highest pool below the layers: each
  entry is seeded with its own value), then every entry of every layer on those images in
  calls of `units_per_call` (`deconv.project_cached`, each projection computed only on
  its window; a part-filled call runs only the chunks that hold entries). kept: the
  caches `search(..., keep=...)` kept with this rule (one per batch, covering every
  entry's example): no forward pass at all, `images` then only gives the geometry.
  Returns {layer: Patches} with NumPy pixels, equal to `project_entries`'s."""
  layers = tuple(wanted)
  if not layers:
    return {}
  geometry, flat = {}, {}
  for layer, (entries, channel) in wanted.items():
    geometry[layer] = _geometry(model.spec, layer, entries, images)
    example = np.asarray(entries.example).reshape(-1)
    key = example if kept is not None else np.asarray(_rows(images, example))
    flat[layer] = (np.asarray(channel, np.int32).reshape(-1), np.flatnonzero(example >= 0),
                   key, *(np.asarray(a).reshape(-1) for a in (entries.y, entries.x,
                                                              entries.values)))
  pixels = {layer: np.zeros((flat[layer][2].size, *geometry[layer].valid.shape[-2:],
                             images.image.shape[-1]), np.float32) for layer in layers}
  if kept is None:
    groups = _forward_caches(model, variables, images, flat, rule, images_per_call)
  else:
    groups = ((np.asarray(part.examples), part.cache._replace(switches=jax.tree.map(
        lambda w: w.astype(jnp.int32), part.cache.switches))) for part in kept)
  covered = {layer: 0 for layer in layers}
  for group, cache in groups:  # the keys (image rows or examples) of a cache's rows
    row_of = {key: row for row, key in enumerate(group) if key >= 0}
    for layer in layers:
      channel, filled, key, y, x, value = flat[layer]
      chosen = filled[np.isin(key[filled], list(row_of))]
      covered[layer] += chosen.size
      for first in range(0, chosen.size, units_per_call):
        part = chosen[first:first + units_per_call]
        unit = lambda a, part=part: _pad_to(a[part], units_per_call)
        rows = np.array([row_of[k] for k in key[part]])
        windows = deconv.project_cached(
            model, variables, cache, layer, _pad_to(rows, units_per_call), unit(channel),
            unit(y), unit(x), rule=rule, chunk_size=units_per_call, value=unit(value),
            count=part.size)
        pixels[layer][part] = np.asarray(windows)[:part.size]
  missing = [layer for layer in layers if covered[layer] != flat[layer][1].size]
  if missing:
    raise ValueError(f'the kept caches do not hold every example that the entries of '
                     f'{missing} name: pass the list that search(..., keep=...) filled '
                     f'in the search that found them')
  # Windows are zero outside the image, unfilled entries never written: no mask to apply.
  return {layer: geometry[layer]._replace(pixels=pixels[layer].reshape(
      *np.shape(wanted[layer][0].example), *pixels[layer].shape[1:])) for layer in layers}


def _compact(spec, switches: dict) -> dict:
  """Switches (window positions, -1 outside a map) as int8 where every position fits."""
  return {name: where.astype(jnp.int8) if architecture.layer(spec, name).window ** 2 <= 128
          else where for name, where in switches.items()}


def _forward_caches(model, variables, images, flat, rule, images_per_call):
  """(rows of `images`, their `deconv.forward_cache`) for every image an entry names."""
  layers = tuple(flat)
  needed = np.unique(np.concatenate([flat[layer][2][flat[layer][1]] for layer in layers]))
  if images_per_call is None:
    # Evened out over all the images given, not the ones needed: calls on batches of one
    # size then share their compiled programs, whichever images their entries name.
    per_image = deconv.cache_bytes(model.spec, images.image.shape[1:], layers, rule,
                                   values=False)
    available = images.image.shape[0]
    calls = -(-available // max(1, CACHE_BYTES // max(per_image, 1)))
    images_per_call = max(1, -(-available // max(calls, 1)))
  for start in range(0, needed.size, images_per_call):
    group = needed[start:start + images_per_call]
    yield group, deconv.forward_cache(model, variables,
                                      images.image[_pad_to(group, images_per_call)], layers,
                                      rule=rule, values=False)


def paste(patches: Patches, image_shape: Sequence[int]) -> Array:
  """Patches back on zero canvases of `image_shape` (H, W, 3): (C, k, H, W, 3).

  For small selections (a full-size canvas per entry)."""
  height, width = image_shape[:2]
  size = patches.valid.shape[-1]

  def one(pixels, top, left):
    padded = jnp.pad(pixels, ((height, height), (width, width), (0, 0)))
    return lax.dynamic_slice(padded, (height - top, width - left, 0),
                             (height, width, pixels.shape[-1]))

  lead = patches.top.shape
  out = jax.vmap(one)(patches.pixels.reshape(-1, size, size, patches.pixels.shape[-1]),
                      patches.top.reshape(-1), patches.left.reshape(-1))
  return out.reshape(*lead, *out.shape[1:])


def _select(result: TopK, channels) -> tuple[TopK, np.ndarray]:
  """The result's rows for `channels` (default: all), and those channel numbers."""
  if channels is None:
    return result, np.arange(result.example.shape[0], dtype=np.int32)
  channels = np.asarray(channels, np.int32).reshape(-1)
  return TopK(*(jnp.asarray(a)[channels] for a in result)), channels


def _geometry(spec, layer, entries: TopK, images: Images) -> Patches:
  """Window placement and exact-field mask of each entry (pixels left empty)."""
  input_shape = tuple(images.image.shape[1:])
  window = architecture.windows(spec, layer)[-1][1]
  height, width, _ = architecture.shapes(spec, input_shape)[layer]
  row_fields = np.array([architecture.receptive_field(spec, layer, y, 0, input_shape)[0]
                         for y in range(height)])                           # (H_layer, 2)
  col_fields = np.array([architecture.receptive_field(spec, layer, 0, x, input_shape)[1]
                         for x in range(width)])
  filled = np.asarray(entries.example) >= 0
  y, x = (np.where(filled, np.asarray(a), 0) for a in (entries.y, entries.x))
  top, left = window.start(y), window.start(x)
  offsets = np.arange(window.size)
  rows = top[..., None] + offsets                                          # (C, k, S)
  cols = left[..., None] + offsets
  inside_rows = (rows >= row_fields[y][..., :1]) & (rows < row_fields[y][..., 1:])
  inside_cols = (cols >= col_fields[x][..., :1]) & (cols < col_fields[x][..., 1:])
  valid = inside_rows[..., :, None] & inside_cols[..., None, :] & filled[..., None, None]
  return Patches(None, jnp.asarray(valid), jnp.asarray(top, jnp.int32),
                 jnp.asarray(left, jnp.int32))


def _rows(images: Images, example) -> Array:
  """Row of `images` holding each example (0 for unfilled entries)."""
  example = np.asarray(example)
  known = np.append(np.asarray(images.example), -1)  # a sentinel row that matches nothing
  rows = np.minimum(np.searchsorted(known[:-1], example), known.size - 1)
  wanted = example >= 0
  missing = wanted & (known[rows] != example)
  if missing.any():
    raise ValueError(f'examples {np.unique(example[missing])[:8].tolist()} are not among '
                     'the gathered images: call gather_images with this result')
  return jnp.asarray(np.where(wanted, rows, 0), jnp.int32)


@jax.jit
def _cut(images: Array, rows: Array, top: Array, left: Array, valid: Array) -> Array:
  """(..., S, S, C) windows of images[rows] at (top, left), zero where not valid.

  Indices outside the image read a clipped pixel that `valid` then zeroes."""
  size = valid.shape[-1]
  height, width = images.shape[1:3]
  offsets = jnp.arange(size)
  r = jnp.clip(top[..., None] + offsets, 0, height - 1)
  c = jnp.clip(left[..., None] + offsets, 0, width - 1)
  pixels = images[rows[..., None, None], r[..., :, None], c[..., None, :]]
  return jnp.where(valid[..., None], pixels, 0.0).astype(jnp.float32)


def _calls(rows: np.ndarray, max_images: int, max_units: int) -> list[tuple[int, int]]:
  """Splits entries sorted by image row into runs bounded in images and units.

  Splits entries sorted by image row into runs [start, stop) of at most `max_images`
  distinct rows and `max_units` entries (host bookkeeping, linear in the entries)."""
  if not rows.size:
    return []
  starts, distinct = [0], 1
  for i in range(1, rows.size):
    new_image = rows[i] != rows[i - 1]
    if i - starts[-1] == max_units or (new_image and distinct == max_images):
      starts.append(i)
      distinct = 1
    elif new_image:
      distinct += 1
  return list(zip(starts, starts[1:] + [rows.size]))


def _pad_to(values, size: int) -> np.ndarray:
  """values (n, ...) padded to `size` rows by repeating the first (n >= 1)."""
  values = np.asarray(values)
  return np.concatenate([values, np.repeat(values[:1], size - len(values), axis=0)])
