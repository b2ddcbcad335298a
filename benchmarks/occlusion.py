"""Occlusion sensitivity: zfjax's incremental evaluation against Captum's Occlusion.

    python benchmarks/occlusion.py              # patch 32, stride 8: 625 positions
    python benchmarks/occlusion.py --quick      # stride 32: 36 positions, a smoke run

One 224x224 image (scikit-image's astronaut, resized, minus 120: the model's input
space), the full ZFNet with random He-normal weights (tools/torch_zfnet.random_flax_params)
copied into the PyTorch model, the gray (zero) square of the paper.

zfjax: `occlusion.sensitivity` as called by default (JSON `zfjax_default`: method
'incremental', winograd='auto', i.e. conv2-5's windows by Winograd's minimal filtering,
equal to the exact maps up to float32 rounding); the exact direct mode (`zfjax_exact`:
winograd=False, the reference for the error columns); Krypton's approximate
projective-field thresholding for each `--thresholds` tau, by default and direct; and the
naive full forward per position. Error is against the exact maps: largest probability
difference and agreement of the most-probable-class map. First calls (trace and compile)
are timed apart from the best of `--repeats` later calls.
Captum: `Occlusion.attribute(sliding_window_shapes=(3, patch, patch), strides=(3, stride,
stride), baselines=0, perturbations_per_eval=64)` on the same weights: one forward per
position (plus one unoccluded), batched 64 at a time, under torch.no_grad; the best of
`--repeats` calls after one, as for zfjax. It runs on `--torch_device`: by default a GPU
when torch sees one (zfjax then runs on JAX's default device, the GPU too).
Memory: process RSS (benchmarks/common.py), sampled in an untimed call of its own (the
sampling thread polls every 2 ms and would take CPU time from the timed calls on a small
machine). Imports no TensorFlow.
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
from zfjax import models, occlusion  # pylint: disable=wrong-import-position


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--patch', type=int, default=32)
  parser.add_argument('--stride', type=int, default=8)
  parser.add_argument('--thresholds', default='0.5,0.3',
                      help='comma-separated Krypton taus for the approximate mode ("" = none)')
  parser.add_argument('--chunk_size', type=int, default=None,
                      help="zfjax positions per chunk, at most (evened out); default: "
                      "occlusion.sensitivity's")
  parser.add_argument('--perturbations_per_eval', type=int, default=64)
  parser.add_argument('--torch_threads', type=int, default=os.cpu_count())
  parser.add_argument('--torch_device', default='auto',
                      help="Captum's device: 'auto' (a GPU when torch sees one), cpu, cuda")
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--skip_naive', action='store_true')
  parser.add_argument('--skip_captum', action='store_true')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--json', default=None, help='append the JSON line to this file')
  parser.add_argument('--quick', action='store_true', help='stride 32, 1 repeat')
  args = parser.parse_args(argv)
  if args.quick:
    args.stride, args.repeats = 32, 1
  return args


def photo() -> np.ndarray:
  """scikit-image's astronaut at 224x224, minus 120: (224, 224, 3) float32."""
  import skimage.data  # pylint: disable=import-outside-toplevel
  import skimage.transform  # pylint: disable=import-outside-toplevel
  image = skimage.transform.resize(skimage.data.astronaut(), (224, 224), anti_aliasing=True)
  return (255.0 * image - 120.0).astype(np.float32)


def bench_zfjax(args, model, variables, image, label, **kwargs):
  if args.chunk_size is not None:
    kwargs = dict(kwargs, chunk_size=args.chunk_size)
  run = lambda: jax.block_until_ready(occlusion.sensitivity(
      model, variables, image, label, patch=args.patch, stride=args.stride, **kwargs))
  with common.MemorySampler() as first_memory:
    first_s = common.timed(run)
  with common.MemorySampler() as memory:
    maps = run()
  steady_s = common.timed(run, args.repeats)  # not sampled: the poller takes CPU time
  return {'first_call_s': first_s, 'compile_s': max(0.0, first_s - steady_s),
          'total_s': steady_s, 'first_call_peak_rss_delta_mb': first_memory.peak_delta_mb,
          'peak_rss_delta_mb': memory.peak_delta_mb}, maps


def bench_captum(args, torch_model, image, label):
  from captum.attr import Occlusion  # pylint: disable=import-outside-toplevel
  x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)[None]))
  x = x.to(args.torch_device)
  occluder = Occlusion(torch_model.to(args.torch_device))
  run = common.torch_synchronized(lambda: occluder.attribute(
      x, sliding_window_shapes=(3, args.patch, args.patch),
      strides=(3, args.stride, args.stride), baselines=0, target=label,
      perturbations_per_eval=args.perturbations_per_eval), args.torch_device)
  with warnings.catch_warnings(), torch.no_grad():
    warnings.simplefilter('ignore')
    with common.MemorySampler() as memory:
      run()
    seconds = common.timed(run, args.repeats)  # not sampled, as for zfjax
  return {'total_s': seconds, 'peak_rss_delta_mb': memory.peak_delta_mb}


def main(argv=None) -> dict:
  args = parse_args(argv)
  torch.set_num_threads(args.torch_threads)
  args.torch_device = common.torch_device(args.torch_device)
  params = tz.random_flax_params(num_classes=1000, fc_features=(4096, 4096), seed=args.seed)
  model = models.ZFNet(num_classes=1000)
  variables = {'params': jax.tree.map(jnp.asarray, params)}
  image = jnp.asarray(photo())
  label = int(jnp.argmax(model.apply(variables, image[None])[0]))
  side = occlusion.positions(224, args.patch, args.stride)
  result = {'benchmark': 'occlusion', 'patch': args.patch, 'stride': args.stride,
            'positions': side * side, 'label': label, 'torch_threads': args.torch_threads,
            'torch_device': args.torch_device,
            'jax_devices': str(jax.devices()), 'memory': 'process RSS, MiB'}
  rows = []

  exact, exact_maps = bench_zfjax(args, model, variables, image, label, winograd=False)
  result['zfjax_exact'] = exact
  # How much the exact probability changes between neighbouring occluder positions: an
  # approximation that misplaces a change by a stride errs by about this much.
  prob = np.asarray(exact_maps.prob)
  result['exact_prob_neighbour_difference'] = {
      'median': float(np.median(np.abs(np.concatenate([np.diff(prob, axis=0).ravel(),
                                                       np.diff(prob, axis=1).ravel()])))),
      'max': float(max(np.abs(np.diff(prob, axis=0)).max(), np.abs(np.diff(prob, axis=1)).max())),
      'unoccluded_prob': float(exact_maps.unoccluded_prob)}
  exact_row = ('zfjax exact direct (winograd=False)', exact['total_s'], exact['compile_s'],
               exact['peak_rss_delta_mb'], 0.0, 1.0)
  variants = [('default', 'zfjax default (winograd)', {})]
  for tau in [float(t) for t in args.thresholds.split(',') if t]:
    variants += [(f'threshold_{tau}', f'zfjax approximate tau={tau} (winograd)',
                  dict(field_threshold=tau)),
                 (f'threshold_{tau}_direct', f'zfjax approximate tau={tau}, direct',
                  dict(field_threshold=tau, winograd=False))]
  for key, name, kwargs in variants:
    stats, maps = bench_zfjax(args, model, variables, image, label, **kwargs)
    stats['max_prob_error'] = float(jnp.abs(maps.prob - exact_maps.prob).max())
    stats['top_class_agreement'] = float((maps.top_class == exact_maps.top_class).mean())
    result[f'zfjax_{key}'] = stats
    rows.append((name, stats['total_s'], stats['compile_s'], stats['peak_rss_delta_mb'],
                 stats['max_prob_error'], stats['top_class_agreement']))
    if key == 'default':
      rows.append(exact_row)
  if not args.skip_naive:
    stats, maps = bench_zfjax(args, model, variables, image, label, method='naive')
    stats['max_prob_error'] = float(jnp.abs(maps.prob - exact_maps.prob).max())
    result['zfjax_naive'] = stats
    rows.append(('zfjax naive (full forward each)', stats['total_s'], stats['compile_s'],
                 stats['peak_rss_delta_mb'], stats['max_prob_error'], 1.0))
  if not args.skip_captum:
    torch_model = tz.load_flax_params(tz.TorchZFNet(1000, fc_features=(4096, 4096)),
                                      params).eval()
    result['captum'] = bench_captum(args, torch_model, np.asarray(image), label)
    rows.append(('Captum Occlusion', result['captum']['total_s'], '',
                 result['captum']['peak_rss_delta_mb'], '', ''))
    for key in [k for k in result if k.startswith('zfjax')]:
      result[key]['speedup_vs_captum'] = result['captum']['total_s'] / result[key]['total_s']
  rows = [row + ((f'{result["captum"]["total_s"] / row[1]:.2f}x',) if 'captum' in result
                 and row[0].startswith('zfjax') else ('',)) for row in rows]
  result['max_rss_mb'] = common.max_rss_mb()
  result['environment'] = common.environment()
  common.print_report(result, ('implementation', 'seconds', 'compile s', 'peak RSS delta MiB',
                               'max prob error', 'top-class agreement', 'speedup vs Captum'),
                      rows, args.json)
  return result


if __name__ == '__main__':
  main()
