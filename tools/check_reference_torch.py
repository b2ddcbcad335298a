"""Check a zfjax reference file (python -m zfjax.reference) with an independent PyTorch ZFNet.

    python tools/check_reference_torch.py ref.npz [--rtol 1e-4]

Self-contained on purpose: torch, numpy and the standard library only (no zfjax, not
tools/torch_zfnet.py), so that it checks zfjax rather than repeating it. It reads the
spec and settings from the file's metadata, rebuilds the network from the stored
parameters, recomputes every array and prints, per array, the max absolute error and the
max relative error (max |a - b| / max |b|), then PASS or FAIL. Exit status 1 on failure.

How each array is recomputed (docs/reference.md has the definitions):
- params, images: regenerated from the documented numpy generators (exact).
- activations: conv (zero padding) + ReLU; max pooling written out as unfold + argmax
  over windows padded with -inf (ceil mode), which also gives the switches (first
  maximum in row-major order); AlexNet's LRN written out; fc6 reads the map in HWC order.
- deconv/deconvnet: the literal deconvnet: unpool by scatter-add at the switches, ReLU,
  conv_transpose2d with the same weights and no bias; normalization passed through.
- deconv/guided, deconv/backprop: torch autograd of the seeded map, ReLU backward
  replaced by relu(g) * (x > 0) (guided) or left alone (backprop), LRN's true gradient.
- occlusion: every occluded image run through the whole network (brute force).
Integer arrays (seed positions, classes, channels) must match exactly.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np
import torch
from torch.nn import functional as F

torch.set_grad_enabled(False)


# --------------------------------------------------------------------------- layers


def conv(x, params, record):
  """Conv + bias (NCHW), weights from HWIO; no ReLU."""
  weight = torch.from_numpy(params[record['name']]['kernel']).permute(3, 2, 0, 1)
  bias = torch.from_numpy(params[record['name']]['bias'])
  return F.conv2d(x, weight.contiguous(), bias, stride=record['stride'],
                  padding=record['padding'])


def pool_windows(x, record):
  """(N, C, window*window, out_h, out_w) windows of x, and the padded width.

  The overhang (ceil mode) is padded with -inf.
  """
  n, c, h, w = x.shape
  k, s = record['window'], record['stride']
  rounding = math.ceil if record['ceil'] else math.floor
  out_h, out_w = (rounding((size - k) / s) + 1 for size in (h, w))
  pad_h, pad_w = (max(0, (o - 1) * s + k - size) for o, size in ((out_h, h), (out_w, w)))
  padded = F.pad(x, (0, pad_w, 0, pad_h), value=-math.inf)
  windows = F.unfold(padded.reshape(n * c, 1, h + pad_h, w + pad_w), k, stride=s)
  return windows.reshape(n, c, k * k, out_h, out_w), w + pad_w


def max_pool(x, record):
  """(pooled, switches) of a max pool.

  Switches are flat indices into x's (H, W) of each window's first maximum in row-major
  order (torch.argmax returns the first maximum).
  """
  k, s = record['window'], record['stride']
  windows, _ = pool_windows(x, record)
  where = torch.argmax(windows, dim=2, keepdim=True)
  pooled = torch.gather(windows, 2, where)[:, :, 0]  # differentiable, routes to `where`
  out_h, out_w = pooled.shape[-2:]
  rows = torch.arange(out_h)[:, None] * s + where[:, :, 0] // k
  cols = torch.arange(out_w)[None, :] * s + where[:, :, 0] % k
  return pooled, rows * x.shape[-1] + cols


def local_response_norm(x, record):
  """b_c = a_c / (k + alpha * sum_{c' = c - size//2}^{c + (size-1)//2} a_c'^2) ** beta."""
  size, half = record['size'], record['size'] // 2
  squares = F.pad(x * x, (0, 0, 0, 0, half, size - 1 - half))
  total = sum(squares[:, i:i + x.shape[1]] for i in range(size))
  return x / (record['k'] + record['alpha'] * total) ** record['beta']


class GuidedRelu(torch.autograd.Function):
  """ReLU; backward relu(g) * (x > 0)."""

  @staticmethod
  def forward(ctx, x):
    ctx.save_for_backward(x)
    return x.clamp(min=0)

  @staticmethod
  def backward(ctx, g):
    (x,) = ctx.saved_tensors
    return g.clamp(min=0) * (x > 0).to(g.dtype)


def relu_for(rule):
  return GuidedRelu.apply if rule == 'guided' else F.relu


# ---------------------------------------------------------------------- the network


def forward(spec, params, images, upto=None, rule='backprop'):
  """Run NHWC numpy/torch images through the spec.

  Returns {name: output} (maps NCHW, dense (N, F)) and {pool name: (switches, input
  shape)}.
  """
  x = torch.as_tensor(images).permute(0, 3, 1, 2)
  outputs, switches = {}, {}
  for record in spec:
    kind, name = record['type'], record['name']
    if kind == 'Conv':
      x = relu_for(rule)(conv(x, params, record))
    elif kind == 'Pool':
      shape = x.shape
      x, where = max_pool(x, record)
      switches[name] = (where, shape)
    elif kind == 'Norm':
      x = local_response_norm(x, record)
    elif kind == 'Dense':
      if x.ndim == 4:
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # HWC order
      x = x @ torch.from_numpy(params[name]['kernel']) + torch.from_numpy(
          params[name]['bias'])
      if record['relu']:
        x = relu_for(rule)(x)
    else:
      raise ValueError(f'layer type {kind} ({name}) is not supported by this checker')
    outputs[name] = x
    if name == upto:
      break
  return outputs, switches


def strongest(feature_map, channels):
  """(N, K) flat positions and values of each channel's largest activation.

  In an NCHW map; the first in row-major order on ties.
  """
  flat = feature_map[:, channels].reshape(feature_map.shape[0], len(channels), -1)
  where = torch.argmax(flat, dim=2)
  return where, torch.gather(flat, 2, where[..., None])[..., 0]


def seed_maps(feature_map, n, channels):
  """(K, C, H, W): for image n, channel k's strongest activation alone."""
  where, values = strongest(feature_map[n:n + 1], channels)
  k = len(channels)
  _, c, h, w = feature_map.shape
  out = torch.zeros(k, c, h * w)
  out[torch.arange(k), torch.as_tensor(channels), where[0]] = values[0]
  return out.reshape(k, c, h, w)


def literal_deconvnet(spec, params, images, layer, channels):
  """(N, K, H, W, 3): unpool (scatter-add), rectify, transposed filters; norm skipped."""
  outputs, switches = forward(spec, params, images, upto=layer)
  names = [r['name'] for r in spec]
  below = spec[:names.index(layer) + 1]
  input_sizes = [images.shape[1]] + [outputs[r['name']].shape[-1] for r in below[:-1]]
  result = []
  for n in range(images.shape[0]):
    signal = seed_maps(outputs[layer], n, channels)
    for record, input_size in reversed(list(zip(below, input_sizes))):
      if record['type'] == 'Conv':
        weight = torch.from_numpy(params[record['name']]['kernel']).permute(3, 2, 0, 1)
        k, s, p = record['kernel'], record['stride'], record['padding']
        size = (signal.shape[-1] - 1) * s - 2 * p + k
        signal = F.conv_transpose2d(F.relu(signal), weight.contiguous(), stride=s,
                                    padding=p, output_padding=input_size - size)
      elif record['type'] == 'Pool':
        where, shape = switches[record['name']]
        kk, c = signal.shape[:2]
        index = where[n:n + 1].expand(kk, -1, -1, -1).reshape(kk, c, -1)
        out = torch.zeros(kk, c, shape[-2] * shape[-1])
        out.scatter_add_(2, index, signal.reshape(kk, c, -1))
        signal = out.reshape(kk, c, shape[-2], shape[-1])
    result.append(signal.permute(0, 2, 3, 1))
  return torch.stack(result).numpy()


def gradient_projection(spec, params, images, layer, channels, rule):
  """(N, K, H, W, 3): the gradient of the seeded map w.r.t. each image."""
  result = []
  for n in range(images.shape[0]):
    with torch.enable_grad():
      x = torch.from_numpy(images[n:n + 1].copy()).requires_grad_(True)
      feature_map = forward(spec, params, x, upto=layer, rule=rule)[0][layer]
      seeds = seed_maps(feature_map.detach(), 0, channels)
      grads = [torch.autograd.grad(feature_map, x, seed[None], retain_graph=True)[0][0]
               for seed in seeds]
    result.append(torch.stack(grads))
  return torch.stack(result).numpy()


def occlusion_maps(spec, params, image, label, patch, stride, fill, feature_layer):
  """prob, top_class, feature and channel by one forward pass per occluder position."""
  h, w = image.shape[:2]
  rows, cols = (h - patch) // stride + 1, (w - patch) // stride + 1
  outputs, _ = forward(spec, params, image[None])
  features = outputs[feature_layer][0]  # (C, H, W)
  channel = int(torch.argmax(features.permute(1, 2, 0).reshape(-1, features.shape[0])
                             .max(0).values))
  occluded = np.repeat(image[None], rows * cols, axis=0)
  for i in range(rows):
    for j in range(cols):
      occluded[i * cols + j, i * stride:i * stride + patch, j * stride:j * stride + patch] = fill
  prob, top, feature = [], [], []
  for batch in np.array_split(occluded, max(1, len(occluded) // 16)):
    out, _ = forward(spec, params, batch)
    logits = out[spec[-1]['name']]
    prob.append(torch.softmax(logits.double(), -1)[:, label].float())
    top.append(torch.argmax(logits, -1))
    feature.append(out[feature_layer][:, channel].sum((1, 2)))
  shape = (rows, cols)
  return {'prob': torch.cat(prob).reshape(shape).numpy(),
          'top_class': torch.cat(top).reshape(shape).numpy().astype(np.int32),
          'feature': torch.cat(feature).reshape(shape).numpy(),
          'channel': np.asarray(channel, np.int32)}


# ----------------------------------------------------------------------- generators


def regenerate(metadata, spec, image_size, num_images):
  """Params and images from the generators the metadata documents."""
  generators = metadata['generators']
  rng = np.random.default_rng(generators['param_seed'])
  bias_low, bias_high = generators['bias_range']
  params, channels, size, flat = {}, 3, image_size, None
  for record in spec:
    kind = record['type']
    if kind == 'Conv':
      shape = (record['kernel'], record['kernel'], channels, record['features'])
      size = (size + 2 * record['padding'] - record['kernel']) // record['stride'] + 1
      channels = record['features']
    elif kind == 'Dense':
      shape = (flat or size * size * channels, record['features'])
      flat = record['features']
    else:
      if kind == 'Pool':
        rounding = math.ceil if record['ceil'] else math.floor
        size = rounding((size - record['window']) / record['stride']) + 1
      continue
    fan_in = int(np.prod(shape[:-1]))
    kernel = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    bias = rng.uniform(bias_low, bias_high, record['features'])
    params[record['name']] = {'kernel': kernel.astype(np.float16).astype(np.float32),
                              'bias': bias.astype(np.float16).astype(np.float32)}
  images = np.random.default_rng(generators['image_seed']).uniform(
      *generators['image_range'], (num_images, image_size, image_size, 3)).astype(np.float32)
  return params, images


# -------------------------------------------------------------------------- checking


def load(path):
  with np.load(path, allow_pickle=False) as data:
    arrays = {name: data[name] for name in data.files}
  return arrays, json.loads(str(arrays.pop('metadata')))


def recompute(arrays, metadata):
  """{name: torch/numpy recomputation} for every array of the file."""
  spec = metadata['spec']
  params = {}
  for name, value in arrays.items():
    if name.startswith('params/'):
      _, layer, kind = name.split('/')
      params.setdefault(layer, {})[kind] = value
  images = arrays['images']
  out = {}
  fresh_params, fresh_images = regenerate(metadata, spec, images.shape[1], images.shape[0])
  for layer, pair in fresh_params.items():
    for kind, value in pair.items():
      out[f'params/{layer}/{kind}'] = value
  out['images'] = fresh_images

  outputs, _ = forward(spec, params, images)
  for name, value in outputs.items():
    out[f'activations/{name}'] = (value.permute(0, 2, 3, 1) if value.ndim == 4
                                  else value).numpy()

  channels = [int(c) for c in arrays['deconv/channels']]
  out['deconv/channels'] = np.asarray(metadata['channels'], np.int32)
  for layer in metadata['projected_layers']:
    where, values = strongest(outputs[layer], channels)
    width = outputs[layer].shape[-1]
    out[f'deconv/seeds/{layer}/position'] = torch.stack(
        [where // width, where % width], -1).numpy().astype(np.int32)
    out[f'deconv/seeds/{layer}/value'] = values.numpy()
    for rule in metadata['rules']:
      if rule == 'deconvnet':
        out[f'deconv/{rule}/{layer}'] = literal_deconvnet(spec, params, images, layer,
                                                          channels)
      else:
        out[f'deconv/{rule}/{layer}'] = gradient_projection(spec, params, images, layer,
                                                            channels, rule)

  settings = metadata['occlusion']
  image = images[settings['image']]
  label = int(torch.argmax(outputs[spec[-1]['name']][settings['image']]))
  out['occlusion/label'] = np.asarray(label, np.int32)
  maps = occlusion_maps(spec, params, image, label, settings['patch'], settings['stride'],
                        settings['fill'], settings['feature_layer'])
  for name, value in maps.items():
    out[f'occlusion/{name}'] = value
  return out


def compare(arrays, recomputed, rtol):
  """Rows (name, shape, max abs error, max relative error, ok)."""
  rows = []
  for name in sorted(set(arrays) | set(recomputed)):
    if name not in arrays or name not in recomputed:
      rows.append((name, 'missing in ' + ('file' if name not in arrays else 'check'),
                   math.nan, math.nan, False))
      continue
    stored, fresh = arrays[name], np.asarray(recomputed[name])
    if stored.shape != fresh.shape:
      rows.append((name, f'{stored.shape} vs {fresh.shape}', math.nan, math.nan, False))
      continue
    stored64, fresh64 = stored.astype(np.float64), fresh.astype(np.float64)
    error = float(np.abs(stored64 - fresh64).max()) if stored.size else 0.0
    scale = float(np.abs(fresh64).max()) if fresh.size else 0.0
    relative = error / scale if scale > 0 else error
    exact = np.issubdtype(stored.dtype, np.integer) or name.startswith(('params/', 'images'))
    ok = error == 0 if exact else relative <= rtol
    rows.append((name, str(stored.shape), error, relative, ok))
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('path', help='a reference .npz from python -m zfjax.reference')
  parser.add_argument('--rtol', type=float, default=1e-4,
                      help='max relative error (max |a - b| / max |b|) per float array')
  args = parser.parse_args(argv)
  arrays, metadata = load(args.path)
  if metadata.get('format') != 'zfjax-reference' or metadata.get('format_version') != 1:
    print(f'FAIL: not a zfjax reference file of format version 1: {args.path}')
    return 1
  rows = compare(arrays, recompute(arrays, metadata), args.rtol)
  width = max(len(row[0]) for row in rows)
  print(f'{"array":<{width}}  {"shape":<22} {"max abs err":>12} {"max rel err":>12}')
  for name, shape, error, relative, ok in rows:
    print(f'{name:<{width}}  {shape:<22} {error:12.3e} {relative:12.3e}'
          f'{"" if ok else "  <-- FAIL"}')
  failed = [row[0] for row in rows if not row[4]]
  worst = max((row[3] for row in rows if not math.isnan(row[3])), default=0.0)
  if failed:
    print(f'FAIL: {len(failed)} of {len(rows)} arrays outside tolerance (rtol {args.rtol:g}; '
          f'integer arrays, params and images exact): {", ".join(failed)}')
    return 1
  print(f'PASS: {len(rows)} arrays within tolerance (rtol {args.rtol:g}; integer arrays, '
        f'params and images exact); worst relative error {worst:.3e}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
