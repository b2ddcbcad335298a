"""Layer specs for the paper's convnets, and the geometry that follows from them.

A spec is a tuple of layer records (`Conv`, `Pool`, `Norm`, `Dense`), read top to bottom as
the forward pass. Everything else -- the Flax module (`zfjax.models`), output shapes,
parameter counts, receptive fields, the deconvnet's windows -- is derived from it, so a
new variant is a few lines here and nothing else.

Layer names follow the paper: conv1..conv5, pool1, norm1, ..., fc6, fc7, fc8. A conv or
dense name stands for its post-ReLU output (fc8: the logits).

Geometry (PAPER.md, Fig. 3 of Zeiler & Fergus, arXiv 1311.2901 v3):

    conv1 7x7/2 pad 1 -> 110x110x96, pool1 3x3/2 ceil -> 55, norm1
    conv2 5x5/2 pad 0 -> 26x26x256,  pool2 3x3/2 ceil -> 13, norm2
    conv3, conv4, conv5 3x3/1 pad 1 -> 13x13 x 384, 384, 256
    pool5 3x3/2 -> 6x6x256 = 9216 -> fc6 4096 -> fc7 4096 -> fc8 C
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence, Union


@dataclasses.dataclass(frozen=True)
class Conv:
  """Convolution + bias + ReLU. `padding` is symmetric zero padding in pixels."""
  name: str
  features: int
  kernel: int
  stride: int = 1
  padding: int = 0


@dataclasses.dataclass(frozen=True)
class Pool:
  """Max pooling.

  `ceil=True`: windows start at 0 and the last may overhang the end (cuda-convnet / torch
  ceil_mode); the overhang is padded with -inf."""
  name: str
  window: int = 3
  stride: int = 2
  ceil: bool = True


@dataclasses.dataclass(frozen=True)
class Norm:
  """Local response normalization across maps, AlexNet's formula.

  b_c = a_c / (k + alpha * sum_{|c'-c| <= size//2} a_c'^2) ** beta.
  (torch.nn.LocalResponseNorm divides alpha by size: torch alpha = alpha * size.)"""
  name: str
  size: int = 5
  alpha: float = 1e-4
  beta: float = 0.75
  k: float = 2.0


@dataclasses.dataclass(frozen=True)
class AvgPool:
  """Adaptive average pooling to `size` x `size`, as torch's AdaptiveAvgPool2d."""
  name: str
  size: int = 6


@dataclasses.dataclass(frozen=True)
class Dense:
  """Fully connected layer on the flattened (HWC order) input. `relu=False` for logits."""
  name: str
  features: int
  dropout: float = 0.0
  relu: bool = True


Layer = Union[Conv, Pool, Norm, AvgPool, Dense]
Spec = tuple  # tuple[Layer, ...]

INPUT_SHAPE = (224, 224, 3)


# ----------------------------------------------------------------------------- specs


def zfnet(num_classes: int = 1000,
          conv_features: Sequence[int] = (96, 256, 384, 384, 256),
          fc_features: Sequence[int] = (4096, 4096),
          dropout: float = 0.5,
          norm_before_pool: bool = False,
          norm: Norm | None = None) -> Spec:
  """ZFNet as in the paper's Fig. 3.

  `norm_before_pool=True` gives pytorchcv's layout (normalize right after conv1/conv2's
  ReLU, then pool); `norm` overrides the normalization's constants (its name is replaced per
  layer)."""
  c1, c2, c3, c4, c5 = conv_features
  norm = norm or Norm('norm')
  def block(i):
    n = dataclasses.replace(norm, name=f'norm{i}')
    p = Pool(f'pool{i}')
    return (n, p) if norm_before_pool else (p, n)
  return (
      Conv('conv1', c1, kernel=7, stride=2, padding=1), *block(1),
      Conv('conv2', c2, kernel=5, stride=2, padding=0), *block(2),
      Conv('conv3', c3, kernel=3, stride=1, padding=1),
      Conv('conv4', c4, kernel=3, stride=1, padding=1),
      Conv('conv5', c5, kernel=3, stride=1, padding=1),
      Pool('pool5'),
  ) + _classifier(num_classes, fc_features, dropout)


def zfnet_wide(num_classes: int = 1000, **kwargs) -> Spec:
  """The paper's model (b): conv3/4/5 with 512/1024/512 maps (Table 2, Table 3)."""
  return zfnet(num_classes, conv_features=(96, 256, 512, 1024, 512), **kwargs)


def alexnet(num_classes: int = 1000,
            conv_features: Sequence[int] = (96, 256, 384, 384, 256),
            fc_features: Sequence[int] = (4096, 4096),
            dropout: float = 0.5) -> Spec:
  """AlexNet as the paper replicated it: one tower, 11x11/4 conv1, normalize then pool.

  Padding 2 on conv1 and conv2 gives AlexNet's 55/27/13/6 maps from a 224 input."""
  c1, c2, c3, c4, c5 = conv_features
  return (
      Conv('conv1', c1, kernel=11, stride=4, padding=2), Norm('norm1'), Pool('pool1'),
      Conv('conv2', c2, kernel=5, stride=1, padding=2), Norm('norm2'), Pool('pool2'),
      Conv('conv3', c3, kernel=3, stride=1, padding=1),
      Conv('conv4', c4, kernel=3, stride=1, padding=1),
      Conv('conv5', c5, kernel=3, stride=1, padding=1),
      Pool('pool5'),
  ) + _classifier(num_classes, fc_features, dropout)


def _classifier(num_classes, fc_features, dropout) -> Spec:
  hidden = tuple(Dense(f'fc{6 + i}', f, dropout=dropout) for i, f in enumerate(fc_features))
  return hidden + (Dense(f'fc{6 + len(fc_features)}', num_classes, relu=False),)


def without(spec: Spec, *names: str) -> Spec:
  """The spec with the named layers removed (Table 3's ablations).

  The last dense layer keeps its name: removing fc6 and fc7 from ZFNet leaves pool5 -> fc8."""
  _check_names(spec, names)
  return tuple(layer for layer in spec if layer.name not in names)


def resize(spec: Spec, **features: int) -> Spec:
  """The spec with the named conv/dense layers given new widths, e.g. resize(s, fc6=8192)."""
  _check_names(spec, features)
  return tuple(dataclasses.replace(layer, features=features[layer.name])
               if layer.name in features else layer for layer in spec)


def _check_names(spec: Spec, names) -> None:
  unknown = sorted(set(names) - set(layer_names(spec)))
  if unknown:
    raise ValueError(f'unknown layer(s) {unknown}; this spec has {layer_names(spec)}')


# -------------------------------------------------------------------------- geometry


def layer_names(spec: Spec) -> tuple[str, ...]:
  return tuple(layer.name for layer in spec)


def check_layers(spec: Spec, layers, what: str = 'layers') -> None:
  """ValueError naming `what` unless `layers` is a non-empty list of this spec's layers."""
  names = layer_names(spec)
  unknown = [name for name in layers if name not in names]
  if not layers or unknown:
    raise ValueError(f'{what}: unknown layer(s) {unknown or list(layers)}; this model has '
                     f'{names}')


def conv_names(spec: Spec) -> tuple[str, ...]:
  return tuple(layer.name for layer in spec if isinstance(layer, Conv))


def layer(spec: Spec, name: str) -> Layer:
  """The layer record called `name`; ValueError naming the valid layers otherwise."""
  for record in spec:
    if record.name == name:
      return record
  raise ValueError(f'unknown layer {name!r}; this spec has {layer_names(spec)}')


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
  return (size + 2 * padding - kernel) // stride + 1


def pool_output_size(size: int, window: int, stride: int, ceil: bool) -> int:
  steps = (size - window) / stride
  return (math.ceil(steps) if ceil else math.floor(steps)) + 1


def pool_overhang(size: int, window: int, stride: int, ceil: bool) -> int:
  """Cells of -inf padding after the end so every pooling window is whole."""
  out = pool_output_size(size, window, stride, ceil)
  return max(0, (out - 1) * stride + window - size)


def shapes(spec: Spec, input_shape: Sequence[int] = INPUT_SHAPE) -> dict[str, tuple[int, ...]]:
  """Output shape (without batch) of every layer: (H, W, C) for maps, (F,) for dense."""
  h, w, c = input_shape
  flat = None
  out = {}
  for record in spec:
    if isinstance(record, Conv):
      h = conv_output_size(h, record.kernel, record.stride, record.padding)
      w = conv_output_size(w, record.kernel, record.stride, record.padding)
      c = record.features
    elif isinstance(record, Pool):
      h = pool_output_size(h, record.window, record.stride, record.ceil)
      w = pool_output_size(w, record.window, record.stride, record.ceil)
    elif isinstance(record, AvgPool):
      h = w = record.size
    elif isinstance(record, Dense):
      flat = record.features
    if flat is None:
      if h < 1 or w < 1:
        raise ValueError(f'input {tuple(input_shape)} is too small for this spec: '
                         f'{record.name} would have size {h}x{w}')
      out[record.name] = (h, w, c)
    else:
      out[record.name] = (flat,)
  return out


def num_params(spec: Spec, input_shape: Sequence[int] = INPUT_SHAPE) -> int:
  """Number of weights and biases."""
  total = 0
  previous = tuple(input_shape)
  for record, shape in shapes(spec, input_shape).items():
    record = layer(spec, record)
    if isinstance(record, Conv):
      total += record.kernel ** 2 * previous[-1] * record.features + record.features
    elif isinstance(record, Dense):
      total += math.prod(previous) * record.features + record.features
    previous = shape
  return total


@dataclasses.dataclass(frozen=True)
class Window:
  """Affine map from a unit's position to the window it sees at a lower layer.

  Affine map from a unit's position at some layer to a window of a lower layer's
  output (or the input image): the unit at (y, x) sees rows `y * stride + offset` up to
  `+ size` (exclusive) and likewise for columns. `offset` may be negative and the window
  may run past the end: those cells are padding."""
  stride: int
  offset: int
  size: int

  def start(self, position):
    return position * self.stride + self.offset


def windows(spec: Spec, name: str) -> list[tuple[str, Window]]:
  """A unit's window at every layer below map layer `name`, down to the pixels.

  For a unit of map layer `name`, its window at every layer below it, top to bottom,
  ending with ('input', window in pixels). The first entry is (name, Window(1, 0, 1)).

  A unit's input window at a conv (kernel k, stride s, pad p) or pool layer grows to
  (size - 1) * s + k cells starting at start * s - p; normalization is pointwise in space.
  """
  below = _layers_below(spec, name)
  current = Window(stride=1, offset=0, size=1)
  out = [(name, current)]
  for record, input_name in below:
    k, s, p = _kernel_stride_pad(record)
    current = Window(stride=current.stride * s, offset=current.offset * s - p,
                     size=(current.size - 1) * s + k)
    out.append((input_name, current))
  return out


def receptive_field(spec: Spec, name: str, y: int, x: int,
                    input_shape: Sequence[int] = INPUT_SHAPE):
  """The pixels that unit (y, x) of map layer `name` sees.

  ((row_start, row_stop), (col_start, col_stop)), stops exclusive. Exact: at every layer the
  window is clipped to the map, since padding cells carry no pixels, so near borders it is
  smaller than the nominal window of `windows` (which the deconvnet uses for its static
  cone)."""
  sizes = shapes(spec, input_shape)
  rows, cols = (y, y + 1), (x, x + 1)
  for record, input_name in _layers_below(spec, name):
    k, s, p = _kernel_stride_pad(record)
    height, width = (input_shape if input_name == 'input' else sizes[input_name])[:2]
    rows = _input_span(rows, k, s, p, height)
    cols = _input_span(cols, k, s, p, width)
  return rows, cols


def _input_span(span, kernel, stride, padding, limit):
  start, stop = span
  return max(0, start * stride - padding), min(limit, (stop - 1) * stride - padding + kernel)


def _kernel_stride_pad(record: Layer) -> tuple[int, int, int]:
  if isinstance(record, Conv):
    return record.kernel, record.stride, record.padding
  if isinstance(record, Pool):
    return record.window, record.stride, 0
  if isinstance(record, Norm):
    return 1, 1, 0
  raise ValueError(f'{record.name} ({type(record).__name__}) has no spatial window: '
                   'projections and receptive fields are defined for the conv part')


def _layers_below(spec: Spec, name: str) -> list[tuple[Layer, str]]:
  """(layer, name of its input) from `name` down to the first layer; input name 'input'."""
  names = layer_names(spec)
  record = layer(spec, name)
  if isinstance(record, Dense) or any(isinstance(r, (Dense, AvgPool))
                                      for r in spec[:names.index(name) + 1]):
    raise ValueError(f'{name} is not a spatial map layer; map layers: {map_names(spec)}')
  i = names.index(name)
  return [(spec[j], names[j - 1] if j else 'input') for j in range(i, -1, -1)]


def map_names(spec: Spec) -> tuple[str, ...]:
  """Names of the layers whose outputs are (H, W, C) maps with a spatial geometry."""
  out = []
  for record in spec:
    if isinstance(record, (Dense, AvgPool)):
      break
    out.append(record.name)
  return tuple(out)


def small_zfnet(num_classes: int = 10,
                conv_features: Sequence[int] = (32, 64, 96, 96, 64),
                fc_features: Sequence[int] = (256, 256),
                dropout: float = 0.5) -> Spec:
  """ZFNet's layer sequence scaled down for 32x32 inputs (the offline digits run).

  ZFNet's layer sequence (conv-pool-norm twice, three convs, pool, two fc) scaled
  down for 32x32 inputs (the offline digits run): 3x3/1 convs, the same 3x3/2 ceil pools
  and normalization: 32 -> 16 -> 8 -> 4x4xC5 into fc6."""
  c1, c2, c3, c4, c5 = conv_features
  return (
      Conv('conv1', c1, kernel=3, stride=1, padding=1), Pool('pool1'), Norm('norm1'),
      Conv('conv2', c2, kernel=3, stride=1, padding=1), Pool('pool2'), Norm('norm2'),
      Conv('conv3', c3, kernel=3, stride=1, padding=1),
      Conv('conv4', c4, kernel=3, stride=1, padding=1),
      Conv('conv5', c5, kernel=3, stride=1, padding=1),
      Pool('pool5'),
  ) + _classifier(num_classes, fc_features, dropout)


# ------------------------------------------------------------- published PyTorch models
# (zfjax.interop loads their state dicts; these specs reproduce their forward passes.)


def torchvision_alexnet(num_classes: int = 1000,
                        conv_features: Sequence[int] = (64, 192, 384, 256, 256),
                        fc_features: Sequence[int] = (4096, 4096),
                        dropout: float = 0.5) -> Spec:
  """torchvision's `alexnet` (the "one weird trick" single-tower AlexNet).

  11x11/4 pad 2 and 5x5/1 pad 2 convs, 3x3/2 floor-mode pools, no normalization,
  AdaptiveAvgPool2d to 6x6 (the identity on 224x224 inputs), then fc 4096, 4096, C.

  Dropout differs only in training: torchvision drops the inputs of fc6 and fc7
  (Dropout, Linear, ReLU, Dropout, Linear, ReLU, Linear), `Dense` drops the outputs of
  fc6 and fc7. At inference dropout is off and the two compute the same logits."""
  c1, c2, c3, c4, c5 = conv_features
  return (
      Conv('conv1', c1, kernel=11, stride=4, padding=2), Pool('pool1', ceil=False),
      Conv('conv2', c2, kernel=5, stride=1, padding=2), Pool('pool2', ceil=False),
      Conv('conv3', c3, kernel=3, stride=1, padding=1),
      Conv('conv4', c4, kernel=3, stride=1, padding=1),
      Conv('conv5', c5, kernel=3, stride=1, padding=1),
      Pool('pool5', ceil=False), AvgPool('avgpool', 6),
  ) + _classifier(num_classes, fc_features, dropout)


PYTORCHCV_NORM = Norm('norm', size=5, alpha=1e-4 / 5, beta=0.75, k=2.0)


def pytorchcv_zfnet(num_classes: int = 1000, norm_before_pool: bool = True,
                    **kwargs) -> Spec:
  """pytorchcv's `zfnet` (and, with conv_features=(96, 256, 512, 1024, 512), `zfnetb`).

  The paper's geometry with torch's default LocalResponseNorm (size 5, alpha 1e-4 / 5 in
  AlexNet's formula, beta 0.75, k 2) right after conv1's and conv2's ReLU, before pooling.
  Other keyword arguments go to `zfnet`."""
  if not norm_before_pool:
    raise ValueError('pytorchcv_zfnet normalizes before pooling; norm_before_pool=False '
                     'is the paper\'s zfnet')
  return zfnet(num_classes, norm_before_pool=True, norm=PYTORCHCV_NORM, **kwargs)


SPECS = {'zfnet': zfnet, 'zfnet_wide': zfnet_wide, 'alexnet': alexnet,
         'small_zfnet': small_zfnet, 'torchvision_alexnet': torchvision_alexnet,
         'pytorchcv_zfnet': pytorchcv_zfnet}


# Table 3's rows (the paper's ablations) as layers:
# (family, conv1..conv5 maps, fc6/fc7 units, removed layers).
ZFNET_MAPS = (96, 256, 384, 384, 256)
WIDE_MAPS = (96, 256, 512, 1024, 512)
FC_UNITS = (4096, 4096)
VARIANTS = {
    'zfnet': ('zfnet', ZFNET_MAPS, FC_UNITS, ()),
    'zfnet-fc2048': ('zfnet', ZFNET_MAPS, (2048, 2048), ()),
    'zfnet-fc8192': ('zfnet', ZFNET_MAPS, (8192, 8192), ()),
    'zfnet-wide': ('zfnet', WIDE_MAPS, FC_UNITS, ()),
    'zfnet-wide-fc8192': ('zfnet', WIDE_MAPS, (8192, 8192), ()),
    'alexnet': ('alexnet', ZFNET_MAPS, FC_UNITS, ()),
    'alexnet-no-conv34': ('alexnet', ZFNET_MAPS, FC_UNITS, ('conv3', 'conv4')),
    'alexnet-no-fc7': ('alexnet', ZFNET_MAPS, FC_UNITS, ('fc7',)),
    'alexnet-no-fc67': ('alexnet', ZFNET_MAPS, FC_UNITS, ('fc6', 'fc7')),
    'alexnet-no-conv34-fc67': ('alexnet', ZFNET_MAPS, FC_UNITS,
                               ('conv3', 'conv4', 'fc6', 'fc7')),
    'alexnet-fc2048': ('alexnet', ZFNET_MAPS, (2048, 2048), ()),
    'alexnet-fc8192': ('alexnet', ZFNET_MAPS, (8192, 8192), ()),
}

def get(name: str, num_classes: int, **kwargs) -> Spec:
  """The spec called `name` (a key of SPECS), for config files."""
  if name not in SPECS:
    raise ValueError(f'unknown model {name!r}; choose one of {sorted(SPECS)}')
  for field, count in (('conv_features', 5), ('fc_features', None)):
    widths = kwargs.get(field)
    if widths is None:
      continue
    if count is not None and len(widths) != count:
      raise ValueError(f'{field} must list {count} widths (conv1..conv5), got {tuple(widths)}')
    if not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
      raise ValueError(f'{field} must be positive integers, got {tuple(widths)}')
  return SPECS[name](num_classes, **kwargs)
