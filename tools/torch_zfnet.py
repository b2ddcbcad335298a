"""An independent PyTorch ZFNet and deconvnet: the reference for tests, the peer for benchmarks.

Plain torch (no zfjax, no torchvision). Geometry of the paper's Fig. 3 (see PAPER.md):

    conv1 7x7/2 pad 1 (96) ReLU, pool1 max 3x3/2 ceil, norm1,
    conv2 5x5/2 pad 0 (256) ReLU, pool2, norm2,
    conv3/4/5 3x3/1 pad 1 (384, 384, 256) ReLU, pool5 3x3/2 ceil,
    flatten (CHW), fc6 ReLU dropout, fc7 ReLU dropout, fc8.

    model = TorchZFNet(num_classes=10, fc_features=(64, 64)).eval()
    load_flax_params(model, variables['params'])              # zfjax params -> torch
    proj = literal_deconvnet(model, images, 'conv5', [0, 5])  # (N, K, 3, 224, 224)

Every ReLU is its own non-inplace `nn.ReLU` module (relu1..relu5, relu6, relu7): Captum's
Deconvolution and GuidedBackprop hook `nn.ReLU` modules and miss functional ReLUs, and
`model.relu5` is the post-ReLU conv5 map for Captum's layer selectors.

Projections (images NCHW; one projection per (image, channel): the strongest activation of
that channel in the post-ReLU map of the layer, first in row-major order on ties, seeded
with its own value, every other activation of the layer zero):

- `literal_deconvnet`: Zeiler & Fergus written out. Forward with switches
  (`F.max_pool2d(return_indices=True)`, ties -> first maximum in row-major order), then down:
  unpool by scatter-add at the switches (overlapping windows can share a switch: their
  values add; `F.max_unpool2d` would overwrite), rectify, transposed convolution with the
  same weights and no bias; normalization passed through.
- `autograd_projection(rule=...)`: the same seed through torch autograd with each ReLU's
  backward replaced: 'deconvnet' relu(g), normalization identity (equals the literal
  version); 'guided' relu(g) * (x > 0) (Springenberg et al.), normalization's true
  gradient; 'backprop' the plain gradient g * (x > 0) (Simonyan et al.).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

CONV_GEOMETRY = (  # (kernel, stride, padding) of conv1..conv5
    (7, 2, 1), (5, 2, 0), (3, 1, 1), (3, 1, 1), (3, 1, 1))
POOL_WINDOW, POOL_STRIDE = 3, 2
RULES = ('deconvnet', 'guided', 'backprop')
CONV_LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')


# ------------------------------------------------------------------------------- model


class TorchZFNet(nn.Module):
  """ZFNet in torch, the layer order of the paper (pool, then normalize) or pytorchcv's.

  Args:
    num_classes: width of fc8.
    conv_features: widths of conv1..conv5.
    fc_features: widths of the hidden fully connected layers (fc6, fc7).
    dropout: dropout rate after each hidden fc layer.
    norm_before_pool: pytorchcv's layout (conv, ReLU, norm, pool) instead of the paper's.
    lrn_size, lrn_alpha, lrn_beta, lrn_k: AlexNet's constants; `lrn_alpha` in AlexNet's
      formula (torch's LocalResponseNorm gets alpha * size, since it divides by size).
    input_size: image side, to size fc6.
    norm_backward: 'true' (torch's gradient) or 'identity': the normalization's backward
      passes the gradient through unchanged, as the deconvnet does (so Captum's
      NeuronDeconvolution on this model computes the paper's deconvnet).
  """

  def __init__(self, num_classes: int = 1000,
               conv_features: Sequence[int] = (96, 256, 384, 384, 256),
               fc_features: Sequence[int] = (4096, 4096), dropout: float = 0.5,
               norm_before_pool: bool = False, lrn_size: int = 5, lrn_alpha: float = 1e-4,
               lrn_beta: float = 0.75, lrn_k: float = 2.0, input_size: int = 224,
               norm_backward: str = 'true'):
    super().__init__()
    channels = (3, *conv_features)
    for i, (kernel, stride, padding) in enumerate(CONV_GEOMETRY, start=1):
      self.add_module(f'conv{i}', nn.Conv2d(channels[i - 1], channels[i], kernel, stride,
                                            padding))
      self.add_module(f'relu{i}', nn.ReLU(inplace=False))
    norm = {'true': nn.LocalResponseNorm, 'identity': IdentityBackwardLRN}[norm_backward]
    for i in (1, 2):
      self.add_module(f'norm{i}', norm(lrn_size, alpha=lrn_alpha * lrn_size, beta=lrn_beta,
                                       k=lrn_k))
    block = lambda i: (f'norm{i}', f'pool{i}') if norm_before_pool else (f'pool{i}', f'norm{i}')
    self.order = ('conv1', *block(1), 'conv2', *block(2), 'conv3', 'conv4', 'conv5', 'pool5')
    self.map_shapes = map_shapes(self.order, channels, input_size)
    c, h, w = self.map_shapes['pool5']
    widths = (c * h * w, *fc_features, num_classes)
    self.fc_names = tuple(f'fc{6 + i}' for i in range(len(widths) - 1))
    for i, name in enumerate(self.fc_names):
      self.add_module(name, nn.Linear(widths[i], widths[i + 1]))
      if i < len(widths) - 2:
        self.add_module(f'relu{6 + i}', nn.ReLU(inplace=False))
        self.add_module(f'drop{6 + i}', nn.Dropout(dropout))

  def features(self, x: torch.Tensor) -> torch.Tensor:
    """The pool5 map (N, C, 6, 6) of NCHW images."""
    for name in self.order:
      x = self.layer(name)(x)
    return x

  def layer(self, name: str):
    """The callable for a map layer: conv + its ReLU module, pool, or norm."""
    if name.startswith('conv'):
      return lambda x: getattr(self, 'relu' + name[4:])(getattr(self, name)(x))
    if name.startswith('pool'):
      return max_pool
    return getattr(self, name)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = torch.flatten(self.features(x), 1)
    for i, name in enumerate(self.fc_names):
      x = getattr(self, name)(x)
      if i < len(self.fc_names) - 1:
        x = getattr(self, f'drop{6 + i}')(getattr(self, f'relu{6 + i}')(x))
    return x


class IdentityBackwardLRN(nn.LocalResponseNorm):
  """LocalResponseNorm forward, identity backward (the deconvnet's normalization)."""

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return _IdentityBackward.apply(x, super().forward(x.detach()))


def map_shapes(order: Sequence[str], channels: Sequence[int],
               size: int) -> dict[str, tuple[int, int, int]]:
  """(C, H, W) of every map layer's output."""
  out, c = {}, channels[0]
  for name in order:
    if name.startswith('conv'):
      kernel, stride, padding = CONV_GEOMETRY[int(name[4:]) - 1]
      size = (size + 2 * padding - kernel) // stride + 1
      c = channels[int(name[4:])]
    elif name.startswith('pool'):
      size = math.ceil((size - POOL_WINDOW) / POOL_STRIDE) + 1
    out[name] = (c, size, size)
  return out


def max_pool(x: torch.Tensor, return_indices: bool = False):
  """3x3/2 max pooling, ceil mode (the last window may overhang)."""
  return F.max_pool2d(x, POOL_WINDOW, POOL_STRIDE, ceil_mode=True,
                      return_indices=return_indices)


# ------------------------------------------------------------------------- zfjax params


def load_flax_params(model: TorchZFNet, params) -> TorchZFNet:
  """Copy zfjax's params {'conv1': {'kernel' HWIO, 'bias'}, ..., 'fc6'.

  {'kernel' (in, out)}} into `model`. fc6's rows are permuted from zfjax's HWC flattening to
  torch's CHW."""
  state = {}
  for i in range(1, 6):
    kernel = np.asarray(params[f'conv{i}']['kernel'])
    state[f'conv{i}.weight'] = kernel.transpose(3, 2, 0, 1)
    state[f'conv{i}.bias'] = np.asarray(params[f'conv{i}']['bias'])
  c, h, w = model.map_shapes['pool5']
  for i, name in enumerate(model.fc_names):
    kernel = np.asarray(params[name]['kernel'])
    if i == 0:
      kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1)
    state[f'{name}.weight'] = kernel.T
    state[f'{name}.bias'] = np.asarray(params[name]['bias'])
  model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
                         for k, v in state.items()})
  return model


def random_flax_params(num_classes: int = 10,
                       conv_features: Sequence[int] = (96, 256, 384, 384, 256),
                       fc_features: Sequence[int] = (64, 64), seed: int = 0,
                       bias_range: tuple[float, float] = (0.0, 0.1)) -> dict:
  """Random zfjax-layout params that keep every layer alive.

  zfjax-layout params (numpy) with He-normal kernels and small random biases, uniform
  on `bias_range` (default small positive): with images on a [-100, 100] scale every conv
  layer has nonzero activations (the paper's normal(1e-2) init leaves conv5 nearly dead).
  Negative biases make post-ReLU zeros, hence tied pooling windows, on blank input."""
  rng = np.random.default_rng(seed)
  params, channels = {}, (3, *conv_features)
  for i, (kernel, _, _) in enumerate(CONV_GEOMETRY, start=1):
    fan_in = kernel * kernel * channels[i - 1]
    params[f'conv{i}'] = {
        'kernel': _normal(rng, (kernel, kernel, channels[i - 1], channels[i]), fan_in),
        'bias': rng.uniform(*bias_range, channels[i]).astype(np.float32)}
  widths = (channels[-1] * 6 * 6, *fc_features, num_classes)
  for i in range(len(widths) - 1):
    params[f'fc{6 + i}'] = {'kernel': _normal(rng, (widths[i], widths[i + 1]), widths[i]),
                            'bias': rng.uniform(*bias_range, widths[i + 1]).astype(np.float32)}
  return params


def _normal(rng, shape, fan_in):
  return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)


def random_images(n: int, seed: int = 0, scale: float = 100.0, size: int = 224) -> np.ndarray:
  """(n, size, size, 3) float32 NHWC images uniform on [-scale, scale]."""
  rng = np.random.default_rng(seed)
  return rng.uniform(-scale, scale, (n, size, size, 3)).astype(np.float32)


def to_nchw(images) -> torch.Tensor:
  """NHWC numpy/jax images -> NCHW float32 torch tensor."""
  nhwc = np.asarray(images, np.float32)
  return torch.from_numpy(np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2)))


# ---------------------------------------------------------------------- the deconvnet


def forward_with_switches(model: TorchZFNet, image: torch.Tensor, layer: str,
                          ties: str = 'first'):
  """Run one (1, 3, H, W) image up to `layer`.

  Its post-ReLU map and, for every pool below it, (name, switches, input shape). `ties`:
  'first' (torch's and the paper's rule) or 'last' maximum of a window in row-major order
  (only to show that tests can tell)."""
  switches = []
  x = image
  for name in model.order[:model.order.index(layer) + 1]:
    if name.startswith('pool'):
      shape = x.shape
      indices = max_pool(x, return_indices=True)[1] if ties == 'first' else last_switches(x)
      x = max_pool(x)
      switches.append((name, indices, shape))
    else:
      x = model.layer(name)(x)
  return x, switches


def window_switches(x: torch.Tensor, last: bool = False) -> torch.Tensor:
  """Switches of 3x3/2 ceil-mode max pooling written out (unfold + argmax).

  The flat H*W index of each window's first (or `last`) maximum in row-major order."""
  n, c, h, w = x.shape
  out_h, out_w = (math.ceil((s - POOL_WINDOW) / POOL_STRIDE) + 1 for s in (h, w))
  pad_h, pad_w = ((o - 1) * POOL_STRIDE + POOL_WINDOW - s for o, s in ((out_h, h), (out_w, w)))
  padded = F.pad(x, (0, pad_w, 0, pad_h), value=-math.inf).reshape(n * c, 1, h + pad_h, w + pad_w)
  windows = F.unfold(padded, POOL_WINDOW, stride=POOL_STRIDE)  # (n*c, 9, out_h*out_w)
  if last:
    offset = POOL_WINDOW ** 2 - 1 - torch.argmax(windows.flip(1), dim=1)
  else:
    offset = torch.argmax(windows, dim=1)
  rows = torch.arange(out_h).repeat_interleave(out_w) * POOL_STRIDE + offset // POOL_WINDOW
  cols = torch.arange(out_w).repeat(out_h) * POOL_STRIDE + offset % POOL_WINDOW
  return (rows * w + cols).reshape(n, c, out_h, out_w)


def last_switches(x: torch.Tensor) -> torch.Tensor:
  return window_switches(x, last=True)


def strongest(maps: torch.Tensor, channels: Sequence[int]) -> tuple[torch.Tensor, ...]:
  """The flat argmax and value of each listed channel's map.

  For a (1, C, H, W) map: the (K,) flat argmax (first in row-major order on ties) and
  values of the given channels."""
  flat = maps[0, list(channels)].reshape(len(channels), -1)
  where = torch.argmax(flat, dim=1)
  return where, flat.gather(1, where[:, None])[:, 0]


def seeds(maps: torch.Tensor, channels: Sequence[int]) -> torch.Tensor:
  """(K, C, H, W): seed k keeps channel k's strongest activation, everything else zero."""
  where, values = strongest(maps, channels)
  k, c, h, w = len(channels), *maps.shape[1:]
  out = torch.zeros(k, c, h * w, dtype=maps.dtype)
  out[torch.arange(k), torch.as_tensor(list(channels)), where] = values
  return out.reshape(k, c, h, w)


def unpool(signal: torch.Tensor, switches: torch.Tensor, input_shape) -> torch.Tensor:
  """Unpooling: each value of a signal added back at its switch.

  Put each value of a (K, C, h, w) signal back at its switch in a (K, C, H, W) map,
  ADDING values whose windows share a switch (the adjoint of max-pool selection)."""
  k, c = signal.shape[:2]
  h, w = input_shape[-2:]
  index = switches.expand(k, -1, -1, -1).reshape(k, c, -1)
  out = torch.zeros(k, c, h * w, dtype=signal.dtype)
  out.scatter_add_(2, index, signal.reshape(k, c, -1))
  return out.reshape(k, c, h, w)


def transposed_conv(model: TorchZFNet, name: str, signal: torch.Tensor,
                    input_size: int) -> torch.Tensor:
  """A signal filtered by conv `name`'s transposed filters.

  Filter a signal with conv `name`'s filters transposed (no bias), output padding
  where the stride left input rows unused (conv1: 110 -> 224)."""
  kernel, stride, padding = CONV_GEOMETRY[int(name[4:]) - 1]
  out_size = (signal.shape[-1] - 1) * stride - 2 * padding + kernel
  return F.conv_transpose2d(signal, getattr(model, name).weight, stride=stride,
                            padding=padding, output_padding=input_size - out_size)


def literal_deconvnet_image(model: TorchZFNet, image: torch.Tensor, layer: str,
                            channels: Sequence[int], ties: str = 'first') -> torch.Tensor:
  """(K, 3, H, W) projections of one (3, H, W) image: unpool, rectify, filter to pixels."""
  with torch.no_grad():
    maps, switches = forward_with_switches(model, image[None], layer, ties)
    signal = seeds(maps, channels)
    below = model.order[:model.order.index(layer) + 1]
    sizes = _input_sizes(model, image.shape[-1])
    for name in reversed(below):
      if name.startswith('conv'):
        signal = transposed_conv(model, name, F.relu(signal), sizes[name])
      elif name.startswith('pool'):
        _, indices, shape = next(s for s in switches if s[0] == name)
        signal = unpool(signal, indices, shape)
      # norm: passed through.
    return signal


def literal_deconvnet(model: TorchZFNet, images: torch.Tensor, layer: str,
                      channels: Sequence[int], ties: str = 'first') -> torch.Tensor:
  """(N, K, 3, H, W) projections of channels' strongest activations in NCHW images.

  `ties='last'` breaks pooling ties the other way (a deliberately wrong variant)."""
  return torch.stack([literal_deconvnet_image(model, image, layer, list(channels), ties)
                      for image in images])


def _input_sizes(model: TorchZFNet, image_size: int) -> dict[str, int]:
  """Spatial size of each layer's input."""
  sizes, previous = {}, image_size
  for name in model.order:
    sizes[name] = previous
    previous = model.map_shapes[name][-1]
  return sizes


# ----------------------------------------------------------- autograd with modified ReLU


class _DeconvRelu(torch.autograd.Function):
  """ReLU whose backward is relu(g) (the deconvnet's rectification)."""

  @staticmethod
  def forward(ctx, x):
    return x.clamp(min=0)

  @staticmethod
  def backward(ctx, g):
    return g.clamp(min=0)


class _GuidedRelu(torch.autograd.Function):
  """ReLU whose backward is relu(g) * (x > 0) (guided backpropagation)."""

  @staticmethod
  def forward(ctx, x):
    ctx.save_for_backward(x)
    return x.clamp(min=0)

  @staticmethod
  def backward(ctx, g):
    (x,) = ctx.saved_tensors
    return g.clamp(min=0) * (x > 0).to(g.dtype)


class _IdentityBackward(torch.autograd.Function):
  """y = f(x) forward, dy/dx = identity backward (the deconvnet's normalization)."""

  @staticmethod
  def forward(ctx, x, y):
    return y.clone()

  @staticmethod
  def backward(ctx, g):
    return g, None


def rule_layer(model: TorchZFNet, name: str, rule: str):
  """The callable for map layer `name` with the backward pass of `rule`."""
  if rule not in RULES:
    raise ValueError(f'unknown rule {rule!r}; choose one of {RULES}')
  if name.startswith('conv'):
    relu = {'deconvnet': _DeconvRelu.apply, 'guided': _GuidedRelu.apply,
            'backprop': F.relu}[rule]
    return lambda x: relu(getattr(model, name)(x))
  if name.startswith('norm') and rule == 'deconvnet':
    norm = getattr(model, name)
    return lambda x: _IdentityBackward.apply(x, norm(x.detach()))
  return model.layer(name)


def autograd_projection_image(model: TorchZFNet, image: torch.Tensor, layer: str,
                              channels: Sequence[int], rule: str = 'deconvnet') -> torch.Tensor:
  """(K, 3, H, W): gradient of each channel's strongest activation, times that activation, w.r.t.

  the image, each ReLU's backward replaced according to `rule`."""
  x = image[None].clone().requires_grad_(True)
  maps = x
  for name in model.order[:model.order.index(layer) + 1]:
    maps = rule_layer(model, name, rule)(maps)
  grads = [torch.autograd.grad(maps, x, grad_outputs=seed[None], retain_graph=True)[0][0]
           for seed in seeds(maps.detach(), channels)]
  return torch.stack(grads)


def autograd_projection(model: TorchZFNet, images: torch.Tensor, layer: str,
                        channels: Sequence[int], rule: str = 'deconvnet') -> torch.Tensor:
  """(N, K, 3, H, W), see `autograd_projection_image`."""
  return torch.stack([autograd_projection_image(model, image, layer, list(channels), rule)
                      for image in images])


def guided_backprop(model, images, layer, channels):
  """Guided backpropagation (Springenberg et al. 2015): (N, K, 3, H, W)."""
  return autograd_projection(model, images, layer, channels, 'guided')


def plain_gradient(model, images, layer, channels):
  """Plain gradient (Simonyan et al. 2014) seeded with the activation: (N, K, 3, H, W)."""
  return autograd_projection(model, images, layer, channels, 'backprop')


# ------------------------------------------------------------------------- comparisons


def relative_error(actual, reference) -> float:
  """max |actual - reference| / max |reference| (0 when both are zero)."""
  actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
  scale = np.abs(reference).max()
  err = np.abs(actual - reference).max()
  return float(err / scale) if scale > 0 else float(err)


def channel_argmax(model: TorchZFNet, images: torch.Tensor, layer: str,
                   channels: Iterable[int]) -> np.ndarray:
  """(N, K, 2) (y, x) of each channel's strongest activation per image (first on ties)."""
  with torch.no_grad():
    x = images
    for name in model.order[:model.order.index(layer) + 1]:
      x = model.layer(name)(x)
  channels = list(channels)
  width = x.shape[-1]
  where = torch.argmax(x[:, channels].reshape(x.shape[0], len(channels), -1), dim=2)
  return torch.stack([where // width, where % width], dim=-1).cpu().numpy()


CAPTUM_METHODS = {'deconvnet': 'NeuronDeconvolution', 'guided': 'NeuronGuidedBackprop',
                  'backprop': 'NeuronGradient'}


def captum_projection(model: TorchZFNet, images: torch.Tensor, layer: str,
                      channels: Sequence[int], rule: str = 'deconvnet',
                      batch_images: bool = True, where=None) -> torch.Tensor:
  """Projections by Captum's neuron attributions, rescaled by the activation.

  (N, K, 3, H, W) projections by Captum's NeuronDeconvolution / NeuronGuidedBackprop /
  NeuronGradient on the post-ReLU map (`model.relu<i>`), rescaled by the activation
  (Captum seeds with 1). One backward pass per (image, channel), or with `batch_images`
  one per channel over all images (a callable neuron selector picks each image's own
  argmax). `where`: precomputed (N, K, 2) argmax locations (`channel_argmax`). Runs on
  the device of `images` (the model's), and returns there.

  Captum only modifies ReLUs: its deconvolution equals `literal_deconvnet` when the model
  was built with norm_backward='identity'; guided and backprop need norm_backward='true'."""
  import captum.attr  # pylint: disable=import-outside-toplevel
  method = getattr(captum.attr, CAPTUM_METHODS[rule])(model, getattr(model, 'relu' + layer[4:]))
  if where is None:
    where = channel_argmax(model, images, layer, channels)
  spots = np.asarray(where.cpu() if isinstance(where, torch.Tensor) else where)
  where = torch.as_tensor(spots, device=images.device)
  values = _activation_values(model, images, layer, channels, where)
  out = torch.zeros(images.shape[0], len(channels), *images.shape[1:], device=images.device)
  rows = torch.arange(images.shape[0], device=images.device)
  for k, c in enumerate(channels):
    if batch_images:
      ys, xs = where[:, k, 0], where[:, k, 1]
      select = lambda maps, c=c, ys=ys, xs=xs: maps[rows, c, ys, xs]
      out[:, k] = method.attribute(images, select)
    else:
      for n in range(images.shape[0]):
        y, x = (int(v) for v in spots[n, k])
        out[n, k] = method.attribute(images[n:n + 1], (c, y, x))[0]
  return out * values[:, :, None, None, None]


def _activation_values(model, images, layer, channels, where) -> torch.Tensor:
  """(N, K) activation values at the (N, K, 2) locations."""
  with torch.no_grad():
    x = images
    for name in model.order[:model.order.index(layer) + 1]:
      x = model.layer(name)(x)
  n = torch.arange(images.shape[0], device=x.device)[:, None]
  channels = torch.as_tensor(list(channels), device=x.device)[None]
  return x[n, channels, where[..., 0], where[..., 1]]
