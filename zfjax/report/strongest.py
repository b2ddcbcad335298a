"""Each feature map's strongest activation over a dataset, projected; over a run's checkpoints.

    steps = strongest.checkpoint_steps('/tmp/zf_digits')          # e.g. (100, 200, 400)
    result = strongest.over_checkpoints(model, strongest.restore_steps(workdir, steps),
                                        batches, {'conv1': [0, 5], 'conv5': [3, 17]})
    result.steps                      # (R,) the checkpoints, one row each
    result.layers['conv5'].projection  # (R, C, S, S, 3) the strongest activation, projected

The material of Fig. 4 (feature evolution during training, Sec. 4.1) and of Fig. 6's
layer-2 features. For each chosen map, the strongest activation across the whole dataset
(`topk.search` with k=1: the largest post-ReLU value of the map over every image and
position; ties go to the earlier example, then the first position in row-major order) is
projected to pixel space (`topk.project`, seeded with the activation's own value) and cut
to the unit's receptive-field window, beside the image patch under it (`topk.crops`).

`batches` is a function returning a fresh iterable of batches (arrays or dicts with
'image' and optional 'mask', as `topk.search` takes): it is read twice per checkpoint,
once to search and once to gather the winning images. `restore_steps` reads checkpoints
one at a time (a generator), so memory holds one set of parameters.
"""

from __future__ import annotations

import pathlib
from typing import Callable, Iterable, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from zfjax import checkpoints, models, topk


class MissingStepError(ValueError):
  """A step was asked for that the run has no checkpoint of."""


class Strongest(NamedTuple):
  """Each chosen map's strongest activation over a dataset.

  The leading axis is the channels; in an `Evolution`, (checkpoints, channels).
  """
  channels: np.ndarray    # (C,) the maps
  value: np.ndarray       # (C,) the activation (-inf if the dataset was empty)
  example: np.ndarray     # (C,) its example number in the batches' order
  y: np.ndarray           # (C,) its position in the layer's map
  x: np.ndarray
  projection: np.ndarray  # (C, S, S, 3) deconvnet projection, in the receptive-field window
  patch: np.ndarray       # (C, S, S, 3) the image under that window (model input space)
  valid: np.ndarray       # (C, S, S) window cells inside the exact receptive field
  top: np.ndarray         # (C,) image row of the window's top-left cell (may be negative)
  left: np.ndarray        # (C,) image column of it


class Evolution(NamedTuple):
  """One row per checkpoint: steps (R,), and per layer a `Strongest` of (R, C, ...) arrays."""
  steps: np.ndarray
  layers: dict


def strongest(model: models.ConvNet, variables, batches: Callable[[], Iterable],
              channels_by_layer: Mapping[str, Sequence[int]], rule: str = 'deconvnet',
              ) -> dict[str, Strongest]:
  """For each layer and listed channel, its strongest activation over the batches, projected.

  One search pass and one gathering pass over the data serve all layers.
  """
  layers = tuple(channels_by_layer)
  results = topk.search(model, variables, batches(), layers=layers, k=1)
  images = topk.gather_images(batches(), [results[layer] for layer in layers])
  out = {}
  for layer in layers:
    channels = np.asarray(channels_by_layer[layer], np.int32).reshape(-1)
    entries = results[layer]
    patches = topk.crops(model, entries, images, layer, channels=channels)
    projections = topk.project(model, variables, entries, images, layer, channels=channels,
                               rule=rule)
    pick = lambda a: np.asarray(a)[channels, 0]
    out[layer] = Strongest(
        channels=channels, value=pick(entries.values), example=pick(entries.example),
        y=pick(entries.y), x=pick(entries.x),
        projection=np.asarray(projections.pixels)[:, 0],
        patch=np.asarray(patches.pixels)[:, 0], valid=np.asarray(patches.valid)[:, 0],
        top=np.asarray(patches.top)[:, 0], left=np.asarray(patches.left)[:, 0])
  return out


def over_checkpoints(model: models.ConvNet, checkpoints_: Iterable[tuple[int, dict]],
                     batches: Callable[[], Iterable],
                     channels_by_layer: Mapping[str, Sequence[int]], rule: str = 'deconvnet',
                     on_checkpoint: Optional[Callable[[int], None]] = None) -> Evolution:
  """`strongest` at every checkpoint of (step, variables) pairs, stacked in that order.

  `on_checkpoint(step)` is called before each (e.g. to report progress).
  """
  steps, rows = [], []
  for step, variables in checkpoints_:
    if on_checkpoint is not None:
      on_checkpoint(step)
    steps.append(int(step))
    rows.append(strongest(model, variables, batches, channels_by_layer, rule))
  if not rows:
    raise ValueError('over_checkpoints needs at least one checkpoint')
  layers = {layer: Strongest(*(np.stack([row[layer][i] for row in rows])
                               for i in range(len(Strongest._fields))))
            for layer in channels_by_layer}
  return Evolution(np.asarray(steps), layers)


# ---------------------------------------------------------------------- checkpoints


def checkpoint_steps(path) -> tuple[int, ...]:
  """The complete checkpoints' steps, ascending, of a workdir or its checkpoints/ dir."""
  path = pathlib.Path(path).absolute()
  if (path / checkpoints.CHECKPOINTS).is_dir():
    path = path / checkpoints.CHECKPOINTS
  if not path.is_dir():
    raise FileNotFoundError(f'no checkpoints directory at {path}')
  manager = checkpoints.create_manager(path, read_only=True, async_save=False)
  try:
    steps = tuple(sorted(int(s) for s in manager.all_steps()))
  finally:
    manager.close()
  if not steps:
    raise FileNotFoundError(f'no complete checkpoint in {path}')
  return steps


def select_steps(available: Sequence[int], wanted: Optional[Sequence[int]] = None,
                 ) -> tuple[int, ...]:
  """`wanted` (all of `available` if None); MissingStepError naming the missing ones."""
  if wanted is None:
    return tuple(available)
  missing = sorted(set(wanted) - set(available))
  if missing:
    raise MissingStepError(f'no checkpoint of step(s) {missing}; available: '
                           f'{list(available)}')
  return tuple(sorted(set(wanted)))


def restore_steps(path, steps: Sequence[int]) -> Iterable[tuple[int, dict]]:
  """(step, {'params': params}) for each step, read lazily one at a time."""
  for step in steps:
    _, params = checkpoints.restore_params(path, step)
    yield step, {'params': params}
