"""An independent PyTorch convnet built from any zfjax layer spec, with its deconvnet.

tools/torch_zfnet.py writes out the paper's ZFNet geometry; this is the same reference
for an arbitrary spec of zfjax.architecture records (Conv, Pool, Norm, AvgPool, Dense),
e.g. the tiny small_zfnet of tests/test_properties.py with non-square images. Only the
records' fields are read: shapes, pooling, normalization and the projections are torch's
own (F.max_pool2d with ceil_mode and return_indices, nn.LocalResponseNorm,
F.conv_transpose2d, autograd), nothing of zfjax.models or zfjax.deconv.

    import torch_convnet as tc    # with tools/ on sys.path, as the tests put it
    model = tc.TorchConvNet(spec, (13, 9, 3)).eval()
    tc.load_flax_params(model, variables['params'])               # zfjax params -> torch
    proj = tc.literal_deconvnet(model, tc.to_nchw(images), 'conv5', [0, 5])  # (N, K, 3, H, W)
    proj = tc.autograd_projection(model, tc.to_nchw(images), 'conv5', [0, 5], rule='guided')
    maps = tc.occlusion_naive(model, image, patch=3, stride=2, fill=0.0, layer='conv5')

Projections follow tools/torch_zfnet.py (its module doc): seed = each channel's strongest
post-ReLU activation (first in row-major order on ties), every other activation zero;
`literal_deconvnet` unpools by scatter-add at the switches (ties: first maximum; ceil
pools' overhang never wins), rectifies, filters with the transposed kernels (no bias) and
passes normalization through; `autograd_projection` is torch autograd with each ReLU's
backward replaced by the rule's ('deconvnet' relu(g) with an identity normalization
backward, 'guided' relu(g) * (x > 0), 'backprop' g * (x > 0); the last two with the
normalization's true gradient). `occlusion_naive` is occlusion sensitivity by brute
force: the whole network on every occluded copy of the image.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from torch_zfnet import (RULES, _DeconvRelu, _GuidedRelu, _IdentityBackward, relative_error,
                         seeds, to_nchw, unpool)

__all__ = ['TorchConvNet', 'load_flax_params', 'literal_deconvnet', 'autograd_projection',
           'occlusion_naive', 'Occlusion', 'relative_error', 'to_nchw', 'RULES']


def _kind(record) -> str:
  return type(record).__name__


class TorchConvNet(nn.Module):
  """The convnet of a zfjax spec in torch, for (H, W, C) inputs of `input_shape`.

  `map_names`: the layers with spatial outputs (up to the first Dense or AvgPool);
  `map_shapes[name]`: their (C, H, W), from torch running a blank input."""

  def __init__(self, spec: Sequence, input_shape: Sequence[int]):
    super().__init__()
    self.records = {record.name: record for record in spec}
    self.order = tuple(record.name for record in spec)
    channels = input_shape[-1]
    self.map_names = []
    for record in spec:
      kind = _kind(record)
      if kind == 'Conv':
        self.add_module(record.name, nn.Conv2d(channels, record.features, record.kernel,
                                               record.stride, record.padding))
        channels = record.features
      elif kind == 'Norm':
        self.add_module(record.name, nn.LocalResponseNorm(
            record.size, alpha=record.alpha * record.size, beta=record.beta, k=record.k))
      elif kind == 'AvgPool':
        self.add_module(record.name, nn.AdaptiveAvgPool2d(record.size))
      elif kind != 'Pool':
        break
      if kind != 'AvgPool':
        self.map_names.append(record.name)
    self.map_names = tuple(self.map_names)
    with torch.no_grad():
      x = torch.zeros(1, input_shape[-1], *input_shape[:2])
      self.map_shapes = {}
      for name in self.order:
        if _kind(self.records[name]) == 'Dense':
          break
        x = self.layer(name)(x)
        self.map_shapes[name] = tuple(x.shape[1:])
    width = x[0].numel()
    self.dense_names = tuple(r.name for r in spec if _kind(r) == 'Dense')
    self.flatten_shape = tuple(x.shape[1:])  # (C, H, W) entering the first dense layer
    for name in self.dense_names:
      self.add_module(name, nn.Linear(width, self.records[name].features))
      width = self.records[name].features

  def layer(self, name: str, rule: str | None = None):
    """Map layer `name` as a callable; `rule` swaps in the rule's backward pass."""
    record, kind = self.records[name], _kind(self.records[name])
    if kind == 'Conv':
      relu = {None: F.relu, 'backprop': F.relu, 'deconvnet': _DeconvRelu.apply,
              'guided': _GuidedRelu.apply}[rule]
      return lambda x: relu(getattr(self, name)(x))
    if kind == 'Pool':
      return lambda x: F.max_pool2d(x, record.window, record.stride, ceil_mode=record.ceil)
    if kind == 'Norm' and rule == 'deconvnet':
      norm = getattr(self, name)
      return lambda x: _IdentityBackward.apply(x, norm(x.detach()))
    return getattr(self, name)

  def maps(self, x: torch.Tensor, upto: str) -> dict[str, torch.Tensor]:
    """Every map layer's output up to and including `upto`."""
    out = {}
    for name in self.order[:self.order.index(upto) + 1]:
      x = out[name] = self.layer(name)(x)
    return out

  def forward(self, x: torch.Tensor, layer: str | None = None):
    """Logits of NCHW images (inference: no dropout); with `layer`, (logits, that map)."""
    last = self.order[len(self.map_shapes) - 1]  # the last layer before the dense ones
    maps = self.maps(x, last)
    x = torch.flatten(maps[last], 1)
    for name in self.dense_names:
      x = getattr(self, name)(x)
      if self.records[name].relu:
        x = F.relu(x)
    return x if layer is None else (x, maps[layer])


def load_flax_params(model: TorchConvNet, params) -> TorchConvNet:
  """Copies zfjax params into the torch model.

  Copy zfjax params (conv kernels HWIO, dense kernels (in, out), the first dense
  layer's rows in HWC order) into `model` (OIHW, (out, in), CHW order)."""
  state = {}
  for name in model.order:
    kind = _kind(model.records[name])
    if kind not in ('Conv', 'Dense'):
      continue
    kernel = np.asarray(params[name]['kernel'], np.float32)
    if kind == 'Conv':
      kernel = kernel.transpose(3, 2, 0, 1)
    else:
      if name == model.dense_names[0]:
        c, h, w = model.flatten_shape
        kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1)
      kernel = kernel.T
    state[f'{name}.weight'] = kernel
    state[f'{name}.bias'] = np.asarray(params[name]['bias'], np.float32)
  model.load_state_dict({k: torch.from_numpy(np.array(v, np.float32))  # a writable copy
                         for k, v in state.items()})
  return model


# ---------------------------------------------------------------------- projections


def literal_deconvnet_image(model: TorchConvNet, image: torch.Tensor, layer: str,
                            channels: Sequence[int]) -> torch.Tensor:
  """(K, C, H, W) deconvnet projections of one (C, H, W) image."""
  with torch.no_grad():
    x, below = image[None], []
    for name in model.order[:model.order.index(layer) + 1]:
      record = model.records[name]
      switches = None
      if _kind(record) == 'Pool':
        switches = F.max_pool2d(x, record.window, record.stride, ceil_mode=record.ceil,
                                return_indices=True)[1]
      below.append((name, x.shape, switches))
      x = model.layer(name)(x)
    signal = seeds(x, list(channels))
    for name, input_shape, switches in reversed(below):
      record = model.records[name]
      kind = _kind(record)
      if kind == 'Conv':
        # The transposed conv's natural extent; output padding restores input rows and
        # columns that the stride left unused.
        extent = [(n - 1) * record.stride - 2 * record.padding + record.kernel
                  for n in signal.shape[-2:]]
        signal = F.conv_transpose2d(F.relu(signal), getattr(model, name).weight,
                                    stride=record.stride, padding=record.padding,
                                    output_padding=tuple(
                                        n - e for n, e in zip(input_shape[-2:], extent)))
      elif kind == 'Pool':
        signal = unpool(signal, switches, input_shape)
      # Norm: passed through.
      assert signal.shape[1:] == input_shape[1:], (name, signal.shape, input_shape)
    return signal


def literal_deconvnet(model: TorchConvNet, images: torch.Tensor, layer: str,
                      channels: Sequence[int]) -> torch.Tensor:
  """(N, K, C, H, W): the deconvnet projection of each channel's strongest activation."""
  return torch.stack([literal_deconvnet_image(model, image, layer, channels)
                      for image in images])


def autograd_projection_image(model: TorchConvNet, image: torch.Tensor, layer: str,
                              channels: Sequence[int], rule: str) -> torch.Tensor:
  """(K, C, H, W): the gradient of each seed w.r.t. the image, ReLU backward per `rule`."""
  if rule not in RULES:
    raise ValueError(f'unknown rule {rule!r}; choose one of {RULES}')
  x = image[None].clone().requires_grad_(True)
  maps = x
  for name in model.order[:model.order.index(layer) + 1]:
    maps = model.layer(name, rule)(maps)
  return torch.stack([
      torch.autograd.grad(maps, x, grad_outputs=seed[None], retain_graph=True)[0][0]
      for seed in seeds(maps.detach(), list(channels))])


def autograd_projection(model: TorchConvNet, images: torch.Tensor, layer: str,
                        channels: Sequence[int], rule: str = 'deconvnet') -> torch.Tensor:
  """(N, K, C, H, W), see `autograd_projection_image`."""
  return torch.stack([autograd_projection_image(model, image, layer, channels, rule)
                      for image in images])


# ------------------------------------------------------------------------ occlusion


class Occlusion(NamedTuple):
  """Brute-force occlusion maps of one image (float64 numpy), occluders (I, J)."""
  logits: np.ndarray         # (I, J, classes) with the occluder at (i, j)
  feature: np.ndarray        # (I, J) summed post-ReLU map `channel` of the feature layer
  channel: int               # the feature layer's map with the unoccluded image's maximum
  unoccluded_logits: np.ndarray  # (classes,)
  unoccluded_feature: float


def occlusion_naive(model: TorchConvNet, image, patch: int, stride: int, fill: float,
                    layer: str) -> Occlusion:
  """Occlusion by brute force: the whole network on every occluded copy of one (H, W, C) NHWC image.

  Occluder (i, j) sets rows i*stride .. i*stride+patch-1 and the same columns to `fill`, for
  i < (H - patch) // stride + 1 (likewise j). The feature map is the map of `layer` holding
  the unoccluded image's largest activation (first channel on ties)."""
  image = np.asarray(image, np.float32)
  height, width = image.shape[:2]
  rows, cols = (height - patch) // stride + 1, (width - patch) // stride + 1
  occluded = np.repeat(image[None], rows * cols + 1, axis=0)  # the last one unoccluded
  for i in range(rows):
    for j in range(cols):
      occluded[i * cols + j, i * stride:i * stride + patch, j * stride:j * stride + patch] = fill
  with torch.no_grad():
    logits, maps = model(to_nchw(occluded), layer)
  channel = int(torch.argmax(maps[-1].flatten(1).max(1).values))
  logits = logits.double().numpy()
  feature = maps[:, channel].double().sum((1, 2)).numpy()
  return Occlusion(logits[:-1].reshape(rows, cols, -1), feature[:-1].reshape(rows, cols),
                   channel, logits[-1], float(feature[-1]))
