"""Every unit of some layers over a dataset, in one streaming pass: what the microscope shows.

    found = survey.survey(model, variables, batches(), layers=('conv1', 'fc6'), k=9)
    unit = found['conv1']
    unit.top              # topk.TopK (C, k): the strongest post-ReLU activations, as topk.search
    unit.bottom           # topk.TopK (C, k): the most negative pre-activations (values < 0 or -inf)
    unit.firing           # (C,) fraction of images in which the unit is positive somewhere
    unit.positive         # (C,) fraction of all its positions (images x H x W) that are positive
    unit.mean, unit.max   # (C,) mean and largest post-ReLU activation over every position

A layer is a conv layer (its post-ReLU map, one value per position) or a dense layer with a
ReLU (fc6, fc7: one position per image). `top` equals `topk.search`'s result for the same
batches (one entry per image, ties to the first position in row-major order and the lower
example). `bottom` ranks each image's most negative pre-activation (the input of the ReLU),
lowest first, with the same tie rules; its `values` are those pre-activations, and an image
in which the unit is nowhere negative does not enter it.

Memory holds one batch and (C, k) arrays per layer, whatever the number of images; the
batches are split over a mesh's 'data' axis as in `topk.search`.
"""

from __future__ import annotations

import functools
from typing import Iterable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from zfjax import architecture, models, parallel, topk
from zfjax.architecture import Conv, Dense

Array = jax.Array


class Survey(NamedTuple):
  """One layer's units over a dataset; arrays have the layer's C units first.

  top: TopK (C, k) of post-ReLU activations (as `topk.search`).
  bottom: TopK (C, k) of the most negative pre-activations, most negative first; entries
    for which no image had a negative pre-activation are unfilled (value +inf, example,
    y, x = -1).
  firing: (C,) fraction of the images in which the unit is positive at some position.
  positive: (C,) fraction of all positions (images x H x W) where it is positive.
  mean: (C,) mean post-ReLU activation over all positions.
  max: (C,) largest post-ReLU activation (0 when it never fires).
  images: how many images were surveyed.
  """
  top: topk.TopK
  bottom: topk.TopK
  firing: Array
  positive: Array
  mean: Array
  max: Array
  images: int


def unit_layers(spec: architecture.Spec) -> tuple[str, ...]:
  """The layers whose units can be surveyed: every conv, and dense layers with a ReLU."""
  return tuple(r.name for r in spec
               if isinstance(r, Conv) or (isinstance(r, Dense) and r.relu))


def check_layers(spec: architecture.Spec, layers) -> tuple[str, ...]:
  """`layers` as a tuple of unit layers of `spec` (ValueError naming the choices)."""
  if layers is None or not isinstance(layers, (str, Iterable)):
    raise ValueError(f'layers must be a layer name or a list of them, got {layers!r}')
  layers = (layers,) if isinstance(layers, str) else tuple(layers)
  valid = unit_layers(spec)
  unknown = [name for name in layers if name not in valid]
  if unknown or not layers:
    raise ValueError(f'unknown layer(s) {unknown or list(layers)}: choose from '
                     f'{", ".join(valid)}')
  return tuple(dict.fromkeys(layers))


def survey(model: models.ConvNet, variables, batches: Iterable,
           layers: Sequence[str] = ('conv5',), k: int = 9,
           mesh: Optional[Mesh] = None) -> dict[str, Survey]:
  """Every unit of `layers` over the batches (arrays or dicts {'image', 'mask'}; read once)."""
  layers = check_layers(model.spec, layers)
  if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
    raise ValueError(f'k must be a positive integer, got {k!r}')
  mesh = mesh or parallel.create_mesh()
  replicated = NamedSharding(mesh, P())
  rows = NamedSharding(mesh, P(parallel.DATA))
  devices = mesh.devices.size
  variables = jax.device_put(variables, replicated)
  widths = {r.name: r.features for r in model.spec if r.name in layers}
  state = jax.device_put({name: _empty(widths[name], k) for name in layers}, replicated)
  seen, size = 0, 0
  for batch in batches:
    images, mask = topk.unpack_batch(batch)
    size = max(size, -(-images.shape[0] // devices) * devices)
    images, mask = topk.pad_batch(images, mask, size)
    state = _update(model, layers, replicated, variables, state,
                    jax.device_put(images, rows), jax.device_put(mask, rows),
                    jnp.asarray(seen, jnp.int32))
    seen += int(np.sum(mask))
  return {name: _finish(state[name], seen) for name in layers}


def pre_activations(model: models.ConvNet, variables, images: Array,
                    layers: Sequence[str]) -> dict[str, Array]:
  """The inputs of the named layers' ReLUs (conv: (B, H, W, C); dense: (B, C))."""
  layers = check_layers(model.spec, layers)
  wanted = frozenset(layers)
  _, state = model.apply(
      variables, images, mutable=['intermediates'],
      capture_intermediates=lambda module, method: (method == '__call__' and
                                                    module.name in wanted))
  captured = state['intermediates']
  return {name: captured[name]['__call__'][0].astype(jnp.float32) for name in layers}


# ----------------------------------------------------------------------------- inside


def _empty(channels: int, k: int) -> dict:
  zeros = jnp.zeros((channels,), jnp.float32)
  return {'top': topk.empty(channels, k), 'bottom': topk.empty(channels, k),
          'firing': zeros, 'positive': zeros, 'sum': zeros, 'max': zeros,
          'positions': jnp.zeros((), jnp.float32)}


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _update(model, layers, replicated, variables, state, images, mask, offset):
  pre = pre_activations(model, variables, images, layers)
  example = offset + jnp.cumsum(mask, dtype=jnp.int32) - 1
  out = {}
  for name in layers:
    maps = pre[name] if pre[name].ndim == 4 else pre[name][:, None, None, :]
    post = jnp.maximum(maps, 0.0)
    k = state[name]['top'].values.shape[1]
    rows = mask[:, None, None, None]
    positive = (post > 0) & rows
    out[name] = {
        'top': topk.merge(state[name]['top'], topk.candidates(post, mask, example), k),
        'bottom': topk.merge(state[name]['bottom'],
                             _negative(topk.candidates(-maps, mask, example)), k),
        'firing': state[name]['firing'] + jnp.sum(jnp.any(positive, axis=(1, 2)), axis=0),
        'positive': state[name]['positive'] + jnp.sum(positive, axis=(0, 1, 2)),
        'sum': state[name]['sum'] + jnp.sum(jnp.where(rows, post, 0.0), axis=(0, 1, 2)),
        'max': jnp.maximum(state[name]['max'],
                           jnp.max(jnp.where(rows, post, 0.0), axis=(0, 1, 2))),
        'positions': state[name]['positions'] + jnp.sum(mask) * maps.shape[1] * maps.shape[2],
    }
  return lax.with_sharding_constraint(out, replicated)


def _negative(candidates: topk.TopK) -> topk.TopK:
  """Candidates of the negated map, kept only where the pre-activation is below zero."""
  keep = candidates.values > 0
  return candidates._replace(values=jnp.where(keep, candidates.values, -jnp.inf))


def _finish(state: dict, images: int) -> Survey:
  """Counts to fractions and means; bottom values back to pre-activations."""
  bottom = state['bottom']
  bottom = bottom._replace(values=-bottom.values)
  positions = jnp.maximum(state['positions'], 1.0)
  return Survey(state['top'], bottom, state['firing'] / max(images, 1),
                state['positive'] / positions, state['sum'] / positions, state['max'], images)
