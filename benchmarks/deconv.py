"""Deconvnet projections: zfjax's `deconv.project` against Captum on the same weights.

    python benchmarks/deconv.py                # 4 images x 64 conv5 channels = 256 projections
    python benchmarks/deconv.py --quick        # 1 image x 8 channels, a smoke run
    python benchmarks/deconv.py --method gradient --rule guided --torch_threads 2

The strongest activation of each of `--channels` channels of `--layer` in each of
`--images` random 224x224 images (uniform on [-100, 100]), projected to pixels. Random
He-normal weights (tools/torch_zfnet.random_flax_params), the full ZFNet (fc 4096, 1000
classes), copied into the torch model with `load_flax_params`, so both sides compute the
same projections.

zfjax: one `deconv.project` call for all N x K projections; the first call (trace,
compile, run) is timed separately from the best of `--repeats` later calls.
Captum: NeuronDeconvolution (rule deconvnet), NeuronGuidedBackprop (guided) or
NeuronGradient (backprop) on `model.relu<i>` (the post-ReLU map), neuron selected at each
image's own argmax. Captum runs one forward and one backward pass per call:
'per_neuron' asks for one (image, channel) per call (a (c, y, x) tuple selector, Captum's
usual use); 'batched' asks for one channel over all images per call (a callable selector
picking each image's argmax). The argmax locations are found before timing (one forward
pass, not charged to Captum). For rule deconvnet the torch model's normalization has an
identity backward (Captum hooks only ReLUs; the paper's deconvnet passes normalization
through), so both sides compute the same numbers and the script reports their agreement.
Both run on the same device: Captum on `--torch_device` (by default a GPU when torch sees
one), zfjax on JAX's default device (then the GPU too).

FLOPs: the transposed convolutions of one projection's cone (`cone_flops`: for each conv
layer in it, 2 x window cells x output channels x k x k x input channels; 0.47 GFLOP from
conv5), which is also what zfjax's literal method multiplies (its GEMMs run on the same
windows). Against them, the rate zfjax reaches and its share of a large matmul's rate
(an `--matmul`-cube float32 `jnp` matmul, timed in the same run: the FLOP limit).

Memory: RSS of this process (see benchmarks/common.py): the peak above the RSS before
each timed run, and the process high-water mark. Imports no TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / 'tools'), str(ROOT / 'benchmarks')]

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import torch  # pylint: disable=wrong-import-position

import common  # pylint: disable=wrong-import-position
import torch_zfnet as tz  # pylint: disable=wrong-import-position
from zfjax import architecture, deconv, models  # pylint: disable=wrong-import-position
from zfjax.architecture import Conv  # pylint: disable=wrong-import-position


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--images', type=int, default=4)
  parser.add_argument('--channels', type=int, default=64, help='first K channels')
  parser.add_argument('--layer', default='conv5', choices=tz.CONV_LAYERS)
  parser.add_argument('--method', default='literal', choices=('literal', 'gradient'))
  parser.add_argument('--rule', default='deconvnet', choices=tz.RULES)
  parser.add_argument('--torch_threads', type=int, default=os.cpu_count())
  parser.add_argument('--torch_device', default='auto',
                      help="Captum's device: 'auto' (a GPU when torch sees one), cpu, cuda")
  parser.add_argument('--captum', default='both', choices=('both', 'batched', 'per_neuron',
                                                           'none'))
  parser.add_argument('--repeats', type=int, default=2, help='timed zfjax calls (best)')
  parser.add_argument('--chunk_size', type=int, default=64, help='zfjax units per chunk')
  parser.add_argument('--fc', type=int, default=4096, help='fc6/fc7 width')
  parser.add_argument('--matmul', type=int, default=2048,
                      help='side of the square matmul that sets the FLOP limit')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--json', default=None, help='append the JSON line to this file')
  parser.add_argument('--quick', action='store_true', help='1 image, 8 channels, 1 repeat')
  args = parser.parse_args(argv)
  if args.quick:
    args.images, args.channels, args.repeats = 1, 8, 1
  return args


def setup(args):
  """Same weights and images on both sides."""
  params = tz.random_flax_params(num_classes=1000, fc_features=(args.fc, args.fc),
                                 seed=args.seed)
  model = models.ZFNet(num_classes=1000, fc_features=(args.fc, args.fc))
  variables = {'params': jax.tree.map(jnp.asarray, params)}
  norm_backward = 'identity' if args.rule == 'deconvnet' else 'true'
  torch_model = tz.load_flax_params(
      tz.TorchZFNet(1000, fc_features=(args.fc, args.fc), norm_backward=norm_backward),
      params).eval().to(args.torch_device)
  for p in torch_model.parameters():
    p.requires_grad_(False)
  images = tz.random_images(args.images, seed=args.seed)
  return model, variables, torch_model, images


def bench_zfjax(args, model, variables, images) -> tuple[dict, np.ndarray]:
  images = jnp.asarray(images)
  channels = jnp.arange(args.channels)
  run = lambda: jax.block_until_ready(deconv.project(
      model, variables, images, layer=args.layer, channels=channels, rule=args.rule,
      method=args.method, chunk_size=args.chunk_size))
  with common.MemorySampler() as first_memory:
    first_s = common.timed(run)
  with common.MemorySampler() as memory:
    steady_s = common.timed(run, args.repeats)
  out = np.asarray(run())
  n = args.images * args.channels
  return {'first_call_s': first_s, 'compile_s': max(0.0, first_s - steady_s),
          'total_s': steady_s, 'ms_per_projection': 1e3 * steady_s / n,
          'first_call_peak_rss_delta_mb': first_memory.peak_delta_mb,
          'peak_rss_delta_mb': memory.peak_delta_mb}, out


def cone_flops(spec, layer: str) -> dict:
  """FLOPs of the transposed convolutions in one projection's cone, per conv layer.

  A conv layer whose output window is s x s cells (`architecture.windows`) projects
  them with s * s * out_channels * k * k * in_channels multiply-adds (2 FLOPs each)."""
  shapes = architecture.shapes(spec)
  names = architecture.layer_names(spec)
  out = {}
  for name, window in architecture.windows(spec, layer):
    record = None if name == 'input' else architecture.layer(spec, name)
    if isinstance(record, Conv):
      below = names.index(name) - 1
      in_channels = shapes[names[below]][-1] if below >= 0 else 3
      out[name] = (2 * window.size ** 2 * record.features * record.kernel ** 2
                   * in_channels)
  return out


def matmul_gflops(size: int, repeats: int = 5) -> float:
  """GFLOP/s of the best of `repeats` float32 size x size x size `jnp` matmuls."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  jax.block_until_ready(matmul(a))
  seconds = common.timed(lambda: jax.block_until_ready(matmul(a)), repeats)
  return 2 * size ** 3 / seconds / 1e9


def bench_captum(args, torch_model, images, batch_images: bool) -> tuple[dict, np.ndarray]:
  x = tz.to_nchw(images).to(args.torch_device)
  channels = list(range(args.channels))
  where = tz.channel_argmax(torch_model, x, args.layer, channels)
  result = {}
  run = common.torch_synchronized(lambda: result.setdefault('out', tz.captum_projection(
      torch_model, x, args.layer, channels, args.rule, batch_images=batch_images,
      where=where)), args.torch_device)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # Captum warns about hooks on every call
    tz.captum_projection(torch_model, x[:1], args.layer, channels[:1], args.rule,
                         where=where[:1, :1])  # warm-up
    with common.MemorySampler() as memory:
      seconds = common.timed(run)
  n = args.images * args.channels
  calls = args.channels if batch_images else n
  return {'total_s': seconds, 'ms_per_projection': 1e3 * seconds / n, 'calls': calls,
          'peak_rss_delta_mb': memory.peak_delta_mb}, result['out'].cpu().numpy()


def main(argv=None) -> dict:
  args = parse_args(argv)
  torch.set_num_threads(args.torch_threads)
  args.torch_device = common.torch_device(args.torch_device)
  model, variables, torch_model, images = setup(args)
  n = args.images * args.channels
  result = {'benchmark': 'deconv', 'layer': args.layer, 'rule': args.rule,
            'method': args.method, 'images': args.images, 'channels': args.channels,
            'projections': n, 'torch_threads': args.torch_threads,
            'torch_device': args.torch_device,
            'jax_devices': str(jax.devices()), 'memory': 'process RSS, MiB'}
  flops = cone_flops(model.spec, args.layer)
  result['flops'] = {'cone_gflop_per_projection': sum(flops.values()) / 1e9,
                     'cone_gflop_by_layer': {k: v / 1e9 for k, v in flops.items()},
                     'matmul_size': args.matmul}
  result['zfjax'], ours = bench_zfjax(args, model, variables, images)
  result['flops']['matmul_gflops'] = limit = matmul_gflops(args.matmul)
  rate = sum(flops.values()) / (result['zfjax']['ms_per_projection'] / 1e3) / 1e9
  result['zfjax'].update(gflops=rate, percent_of_matmul=100 * rate / limit)
  ours = ours.transpose(0, 1, 4, 2, 3)  # NCHW like torch
  rows = [('zfjax deconv.project', f'{args.method}, 1 call',
           result['zfjax']['ms_per_projection'], result['zfjax']['compile_s'],
           result['zfjax']['peak_rss_delta_mb'], f'{rate:.1f}',
           f'{100 * rate / limit:.0f}% of {limit:.0f}', '', '')]
  modes = {'both': ('batched', 'per_neuron'), 'none': ()}.get(args.captum, (args.captum,))
  for mode in modes:
    stats, theirs = bench_captum(args, torch_model, images, mode == 'batched')
    stats['speedup_of_zfjax'] = stats['ms_per_projection'] / result['zfjax']['ms_per_projection']
    stats['max_rel_error_vs_zfjax'] = tz.relative_error(ours, theirs)
    result[f'captum_{mode}'] = stats
    rows.append((f'Captum {tz.CAPTUM_METHODS[args.rule]}', f'{mode}, {stats["calls"]} calls',
                 stats['ms_per_projection'], '', stats['peak_rss_delta_mb'], '', '',
                 f'{stats["max_rel_error_vs_zfjax"]:.2g}', f'{stats["speedup_of_zfjax"]:.2f}x'))
  result['max_rss_mb'] = common.max_rss_mb()
  result['environment'] = common.environment()
  common.print_report(result, ('implementation', 'calls', 'ms / projection', 'compile s',
                               'peak RSS delta MiB', 'cone GFLOP/s',
                               '% of matmul GFLOP/s', 'max rel error vs zfjax',
                               'zfjax speedup'), rows, args.json)
  print(f'\nCone: {sum(flops.values()) / 1e9:.3f} GFLOP per projection ('
        + ', '.join(f'{k} {v / 1e9:.3f}' for k, v in flops.items()) + '); '
        f'{args.matmul}-cube matmul: {limit:.0f} GFLOP/s.')
  return result


if __name__ == '__main__':
  main()
