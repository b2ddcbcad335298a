"""The figures' options checked against a trained net, and their defaults.

    layers = options.conv_layers(net, ['conv1', 'conv5'])       # FigureError if unknown
    channels = options.choose_channels(net, 'conv5', None, count=9, seed=0)
    patch, stride = options.default_patch(net.image_size)        # 32, 8 at 224 pixels

Defaults scale with the input size (docs/figures.md): occlusion patch and stride 32 and 8
at 224 pixels (size/4 and size/16 below `PHOTO_SIZE`: 8 and 2 at 32), vertical
translations of +-60 pixels in steps of 5 at 224 (+-9 in steps of 1 at 32).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from zfjax import architecture
from zfjax import input_pipeline
from zfjax import loading

PHOTO_SIZE = 128  # nets taking inputs at least this large get photos by default


class FigureError(ValueError):
  """A figure's argument does not fit the net or its data: one line says which and why."""


class MissingInput(FigureError):
  """A figure needs an input it was not given (the gallery leaves that figure out)."""


def photo_sized(net: loading.Loaded) -> bool:
  """Whether the net takes photo-sized inputs (it gets sample photos by default)."""
  return net.image_size >= PHOTO_SIZE


def is_gray(net: loading.Loaded) -> bool:
  """Whether the net was trained on gray images tiled to RGB (the digits).

  Projections and filters of such a net are shown as their channel sums.
  """
  return net.config.dataset == input_pipeline.DIGITS


def conv_layers(net: loading.Loaded, names: Optional[Sequence[str]], what: str = 'layers',
                default: Optional[Sequence[str]] = None) -> list:
  """`names` (default: `default`, else every conv layer), each a conv layer of the net."""
  convs = list(architecture.conv_names(net.spec))
  layers = list(names or default or convs)
  for layer in layers:
    if layer not in convs:
      raise FigureError(f'{what}: layer {layer!r} does not exist or has no projection; conv '
                        f'layers of this model: {", ".join(convs)}')
  return layers


def named_layers(net: loading.Loaded, names: Optional[Sequence[str]], default: Sequence[str],
                 what: str = 'layers') -> list:
  """`names`, each a layer of the net; default: those of `default` the net has."""
  known = list(architecture.layer_names(net.spec))
  layers = list(names or [])
  if not layers:
    layers = [name for name in default if name in known] or [known[0], known[-2]]
  for layer in layers:
    if layer not in known:
      raise FigureError(f'{what}: layer {layer!r} does not exist; layers of this model: '
                        f'{", ".join(known)}')
  return layers


def choose_channels(net: loading.Loaded, layer: str, channels: Optional[Sequence[int]],
                    count: int, seed: int, what: str = 'num_channels') -> np.ndarray:
  """`channels` (checked against the layer's maps), else `count` random maps, sorted.

  The random maps are a function of (seed, layer name).
  """
  maps = architecture.layer(net.spec, layer).features
  if channels is not None and len(channels):
    bad = [c for c in channels if not 0 <= int(c) < maps]
    if bad:
      raise FigureError(f'channels: channel {bad[0]} does not exist in {layer}, which has '
                        f'{maps} maps (0..{maps - 1})')
    return np.asarray(channels, np.int32)
  if count < 1:
    raise FigureError(f'{what} must be positive, got {count}')
  rng = np.random.default_rng([seed, sum(map(ord, layer))])
  return np.sort(rng.choice(maps, size=min(count, maps), replace=False)).astype(np.int32)


def class_labels(net: loading.Loaded, labels: Union[int, Sequence[int]], count: int
                 ) -> np.ndarray:
  """One label, or one per image, as (count,) int32, each a class of the net."""
  labels = [int(labels)] if np.ndim(labels) == 0 else [int(label) for label in labels]
  if len(labels) == 1:
    labels = labels * count
  if len(labels) != count:
    raise FigureError(f'labels: give one label, or one per image ({count}), got '
                      f'{len(labels)}')
  bad = [label for label in labels if not 0 <= label < net.num_classes]
  if bad:
    raise FigureError(f'label {bad[0]} does not exist: the model has {net.num_classes} '
                      f'classes (0..{net.num_classes - 1})')
  return np.asarray(labels, np.int32)


def positive(value: Optional[int], what: str) -> Optional[int]:
  """`value` when None or >= 1, else FigureError naming `what`."""
  if value is not None and value < 1:
    raise FigureError(f'{what} must be positive, got {value}')
  return value


def amounts(values: Optional[Sequence[float]], default: Sequence[float], what: str
            ) -> np.ndarray:
  """A transform's amounts as float32, `default` when None; FigureError when empty."""
  values = np.asarray(default if values is None else values, np.float32).reshape(-1)
  if not values.size:
    raise FigureError(f'{what}: no amounts given')
  return values


def default_patch(size: int) -> tuple[int, int]:
  """Occluder size and stride for an input size.

  32 and 8 at 224 (size/7, size/28 from `PHOTO_SIZE` up); size/4 and size/16 below it
  (small images of centred objects, like the digits).
  """
  if size >= PHOTO_SIZE:
    return max(1, round(size / 7)), max(1, round(size / 28))
  return max(1, size // 4), max(1, size // 16)


def default_translations(size: int) -> np.ndarray:
  """The paper's -60..60 pixels at 224, scaled to the input, integer steps."""
  reach = max(1, round(60 * size / 224))
  step = max(1, round(5 * size / 224))
  return np.arange(-reach, reach + 1, step).astype(np.float32)


def read_boxes(boxes: Union[Mapping, str, os.PathLike]) -> tuple[dict, str]:
  """({part: (N, 4) boxes}, where they came from) from a mapping or a JSON file or text.

  The JSON: {part: [[row, col, height, width], ...one per image]}.
  """
  if isinstance(boxes, Mapping):
    parts, origin = boxes, 'boxes given'
  else:
    text, origin = str(boxes), 'boxes given as JSON'
    if os.path.exists(text):
      text, origin = pathlib.Path(text).read_text(), f'boxes given in {boxes}'
    try:
      parts = json.loads(text)
    except ValueError:
      raise FigureError('boxes: expected a JSON file or JSON text like {"right eye": [[row, '
                        'col, height, width], ...one per image]}') from None
  if not isinstance(parts, Mapping) or not parts:
    raise FigureError('boxes: expected a JSON object {part name: [[row, col, height, width], '
                      '...one per image]}')
  return {str(name): np.asarray(part) for name, part in parts.items()}, origin


def digit_parts(size: int, count: int) -> dict:
  """The same three boxes (top, centre, bottom band of the centred digit) in every image."""
  box = max(2, size // 4)
  col = (size - box) // 2
  rows = {'top': size // 8, 'centre': (size - box) // 2, 'bottom': size - size // 8 - box}
  return {name: np.tile([[row, col, box, box]], (count, 1)) for name, row in rows.items()}


def row_label(net: loading.Loaded, step: int) -> str:
  """'step S' and, for the in-memory digits, the epoch: Fig. 4's row labels."""
  config = net.config
  if config.dataset == input_pipeline.DIGITS:
    train = input_pipeline.dataset_info(config).num_train
    return f'step {step}\n(epoch {step * config.batch_size / train:.1f})'
  return f'step {step}'


def describe_numbers(values: Any) -> str:
  """A short comma list of numbers for captions ('1,2')."""
  return ','.join(str(int(v)) for v in np.asarray(values).reshape(-1))
