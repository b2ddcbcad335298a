"""Fig. 2 at scale: top-9 search, projections and patches of every conv1..conv5 channel.

Fig. 2 at scale: top-9 search over a dataset, then projections and image patches of
every entry of every channel of conv1..conv5.

    python benchmarks/top9.py                   # 512 images, 224x224, conv1..conv5
    python benchmarks/top9.py --quick           # 32 images, conv1 and conv5
    python benchmarks/top9.py --images 128 --batch_size 32 --layers conv2,conv5
    python benchmarks/top9.py --per_layer       # topk.project layer by layer (the old way)
    python benchmarks/top9.py --forward_again   # project_layers' own forward passes

By default the search keeps each batch's projection cache (topk.search(..., keep=...),
made from its own forward pass): topk.gather_images takes the images from those, and
topk.project_layers projects from them.

ZFNet's conv layers (the paper's geometry and widths; the classifier is left out, it plays
no part) with He-normal random weights so every layer is alive, on random images at the
paper's scale, generated batch by batch (the dataset is never held in memory). Timings are
wall-clock seconds of one cold run each, compilation included; the part spent tracing and
compiling is reported beside them (jax.monitoring's /jax/core/compile/* events). Memory:
RSS high-water mark of the process, and the peak above the starting RSS while working
(benchmarks/common.py); each layer's patches are dropped before the next layer.
Prints one JSON line, then a Markdown table per layer. No TensorFlow is imported.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

from zfjax import architecture, models, topk  # pylint: disable=wrong-import-position

ALL_LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--images', type=int, default=512)
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--layers', default=','.join(ALL_LAYERS))
  parser.add_argument('--k', type=int, default=9)
  parser.add_argument('--size', type=int, default=224, help='image height and width')
  parser.add_argument('--images_per_call', type=int, default=None,
                      help='images per forward pass of the projections (default: '
                           'project_layers\' choice; topk.project: 16)')
  parser.add_argument('--per_layer', action='store_true',
                      help='project layer by layer (topk.project: a forward pass per call) '
                           'instead of all layers from shared forward passes')
  parser.add_argument('--forward_again', action='store_true',
                      help='project_layers runs its own forward passes instead of using the '
                           'caches the search keeps (topk.search(..., keep=...))')
  parser.add_argument('--units_per_call', type=int, default=64)
  parser.add_argument('--rule', default='deconvnet')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--json', default=None, help='also append the JSON line here')
  parser.add_argument('--quick', action='store_true',
                      help='32 images, batch 16, conv1 and conv5 (a smoke run)')
  args = parser.parse_args(argv)
  if args.quick:
    args.images, args.batch_size, args.layers = 32, 16, 'conv1,conv5'
  args.layers = tuple(name.strip() for name in args.layers.split(',') if name.strip())
  return args


def he_variables(model, seed: int, size: int):
  """He-normal kernels, small positive biases: deep maps stay alive on random data."""
  shapes = jax.eval_shape(model.init, jax.random.key(seed), jnp.zeros((1, size, size, 3)))
  leaves, tree = jax.tree_util.tree_flatten(shapes['params'])
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))

  def draw(key, leaf):
    if len(leaf.shape) == 1:
      return jax.random.uniform(key, leaf.shape, maxval=0.1)
    return jax.random.normal(key, leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
  return {'params': jax.tree_util.tree_unflatten(
      tree, [draw(k, leaf) for k, leaf in zip(keys, leaves)])}


def batches(num_images: int, batch_size: int, size: int, seed: int):
  """Eval-pipeline-shaped batches of random images, made on the fly.

  The last one padded with masked zero rows. The same arguments give the same images."""
  for start in range(0, num_images, batch_size):
    rng = np.random.default_rng((seed, start))
    valid = min(batch_size, num_images - start)
    image = np.zeros((batch_size, size, size, 3), np.float32)
    image[:valid] = 60.0 * rng.standard_normal((valid, size, size, 3), np.float32)
    yield {'image': image, 'label': np.zeros(batch_size, np.int32),
           'mask': np.arange(batch_size) < valid}


class CompileClock:
  """Seconds JAX has spent compiling since this was created.

  Seconds JAX spends tracing, lowering and compiling (jax.monitoring's
  /jax/core/compile/* events) since it was created."""

  def __init__(self):
    self.seconds = 0.0
    jax.monitoring.register_event_duration_secs_listener(self._record)

  def _record(self, event, duration, **_):
    if event.startswith('/jax/core/compile/'):
      self.seconds += duration


def timed(fn, clock: CompileClock) -> tuple[object, float, float]:
  """fn()'s result (blocked on), wall seconds, and the compile seconds among them."""
  compile_before, start = clock.seconds, time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - start, clock.seconds - compile_before


def run(args) -> dict:
  spec = architecture.without(architecture.zfnet(), 'fc6', 'fc7', 'fc8')
  model = models.ConvNet(spec)
  variables = jax.block_until_ready(he_variables(model, args.seed, args.size))
  data = lambda: batches(args.images, args.batch_size, args.size, args.seed)
  clock = CompileClock()
  rows = []
  with common.MemorySampler() as memory:
    kept = None if args.per_layer or args.forward_again else []
    results, search_s, search_compile_s = timed(
        lambda: topk.search(model, variables, data(), args.layers, args.k, keep=kept,
                            keep_rule=args.rule), clock)
    source = data() if kept is None else kept  # the kept caches hold the images
    images, gather_s, _ = timed(lambda: topk.gather_images(source, results), clock)
    if args.per_layer:
      for layer in args.layers:
        rows.append(project_layer(model, variables, results[layer], images, layer, args,
                                  clock))
    else:
      rows = project_all(model, variables, results, images, args, clock, kept)
  project_s = sum(r['project_s'] for r in rows)
  crops_s = sum(r['crops_s'] for r in rows)
  return {
      'benchmark': 'top9', 'images': args.images, 'batch_size': args.batch_size,
      'size': args.size, 'k': args.k, 'layers': list(args.layers), 'rule': args.rule,
      'images_per_call': args.images_per_call, 'units_per_call': args.units_per_call,
      'kept_caches': kept is not None,
      'devices': len(jax.devices()), 'platform': jax.devices()[0].platform,
      'gathered_images': int(images.example.size),
      'search_s': round(search_s, 3), 'search_compile_s': round(search_compile_s, 3),
      'search_images_per_s': round(args.images / search_s, 2),
      'gather_s': round(gather_s, 3),
      'project_s': round(project_s, 3),
      'project_compile_s': round(sum(r['project_compile_s'] for r in rows), 3),
      'project_units_per_s': round(sum(r['entries'] for r in rows) / project_s, 2),
      'crops_s': round(crops_s, 3),
      'total_s': round(search_s + gather_s + project_s + crops_s, 3),
      'peak_rss_mb': round(common.max_rss_mb(), 1),
      'peak_rss_delta_mb': round(memory.peak_delta_mb, 1),
      'per_layer': rows, 'env': common.environment()}


def project_all(model, variables, results, images, args, clock, kept) -> list:
  """Every layer's projections at once, then each layer's crops.

  `topk.project_layers`: from the caches the search kept (by default), or one forward
  pass per group of images serving all layers; timed as a whole (reported on the first
  layer's row)."""
  wanted = {layer: (results[layer], np.broadcast_to(
      np.arange(results[layer].example.shape[0])[:, None], results[layer].example.shape))
            for layer in args.layers}
  projections, project_s, compile_s = timed(lambda: topk.project_layers(
      model, variables, wanted, images, rule=args.rule,
      images_per_call=args.images_per_call, units_per_call=args.units_per_call,
      kept=kept), clock)
  rows = []
  for i, layer in enumerate(args.layers):
    patches, crops_s, _ = timed(lambda layer=layer: topk.crops(model, results[layer], images,
                                                              layer), clock)
    example = np.asarray(results[layer].example)
    rows.append({'layer': layer, 'channels': int(example.shape[0]),
                 'entries': int((example >= 0).sum()),
                 'unique_images': int(np.unique(example[example >= 0]).size),
                 'patch': int(patches.pixels.shape[2]),
                 'patches_mb': round((projections[layer].pixels.nbytes +
                                      patches.pixels.nbytes) / 2**20, 1),
                 'project_s': round(project_s, 3) if i == 0 else 0.0,
                 'project_compile_s': round(compile_s, 3) if i == 0 else 0.0,
                 'crops_s': round(crops_s, 3)})
  return rows


def project_layer(model, variables, result, images, layer, args, clock) -> dict:
  """Projections and image patches of every entry of one layer, timed; then dropped."""
  projections, project_s, compile_s = timed(lambda: topk.project(
      model, variables, result, images, layer, rule=args.rule,
      images_per_call=args.images_per_call or 16, units_per_call=args.units_per_call), clock)
  patches, crops_s, _ = timed(lambda: topk.crops(model, result, images, layer), clock)
  example = np.asarray(result.example)
  return {'layer': layer, 'channels': int(example.shape[0]),
          'entries': int((example >= 0).sum()),
          'unique_images': int(np.unique(example[example >= 0]).size),
          'patch': int(patches.pixels.shape[2]),
          'patches_mb': round((projections.pixels.nbytes + patches.pixels.nbytes) / 2**20, 1),
          'project_s': round(project_s, 3), 'project_compile_s': round(compile_s, 3),
          'crops_s': round(crops_s, 3)}


def main(argv=None):
  args = parse_args(argv)
  result = run(args)
  header = ('layer', 'channels', 'entries', 'unique images', 'patch', 'patches MiB',
            'project s', 'of which compile s', 'crops s')
  common.print_report(result, header, [tuple(row.values()) for row in result['per_layer']],
                      args.json)
  print()
  print(common.markdown_table(
      ('images', 'search s (compile)', 'gather s', 'project s (compile)', 'crops s',
       'total s', 'peak RSS MiB'),
      [(args.images, f"{result['search_s']:.1f} ({result['search_compile_s']:.1f})",
        result['gather_s'], f"{result['project_s']:.1f} ({result['project_compile_s']:.1f})",
        result['crops_s'], result['total_s'], result['peak_rss_mb'])]))


if __name__ == '__main__':
  main()
