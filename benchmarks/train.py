r"""Training speed: zfjax's jitted ZFNet train step against a PyTorch eager one.

    python benchmarks/train.py                          # batch 32, 224x224, float32, 3 steps
    python benchmarks/train.py --steps 20 --batch_size 128 --dtype bfloat16 \
        --peak_tflops 989 --torch_compile               # on an H100 (dense bf16 peak)

Both frameworks run one SGD step of the paper's ZFNet (1000 classes) on the same shapes of
random data: forward in training mode (dropout 0.5 on fc6/fc7), softmax cross-entropy,
backward, SGD with momentum 0.9 and weight decay 5e-4, then the conv filters renormalized
to RMS <= 0.1. zfjax: `zfjax.train.steps.make_train_step` (jit of shard_map over every device,
the state donated). PyTorch: `tools/torch_zfnet.TorchZFNet`, `torch.optim.SGD`, eager (or
`torch.compile` with --torch_compile; NHWC memory with --channels_last), autocast to
bfloat16 with --dtype bfloat16. On a GPU both compute float32 products in TF32 (JAX's
default there; torch is set to it).

Figures: images/s and ms per step are the median over --steps timed steps after
--warmup untimed ones (the first zfjax call compiles). `flops_per_step` is the model's
FLOPs (`model_flops_per_step`: three times the forward pass's convolutions and matrix
products, 2 FLOPs a multiply-add), the same whatever algorithm computes them;
`xla_flops_per_step` is XLA's count for the compiled step (`cost_analysis()`, per device),
lower on a CPU, where `fast_ops` computes conv2-5 by Winograd. With --peak_tflops (the
device's peak for the dtype) `mfu` is flops_per_step over the step time and that peak, for
torch's step time too. Imports no TensorFlow.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / 'tools'), str(ROOT / 'benchmarks')]

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

import common  # pylint: disable=wrong-import-position
from zfjax.configs import zfnet  # pylint: disable=wrong-import-position
from zfjax import architecture, models, parallel  # pylint: disable=wrong-import-position
from zfjax.train import steps, train_state  # pylint: disable=wrong-import-position


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch_size', type=int, default=32, help='global batch')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--num_classes', type=int, default=1000)
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32',
                      help='computation dtype (params stay float32)')
  parser.add_argument('--steps', type=int, default=3, help='timed steps per framework')
  parser.add_argument('--warmup', type=int, default=1, help='untimed steps first')
  parser.add_argument('--peak_tflops', type=float, default=None,
                      help="the device's peak TFLOP/s for --dtype, for MFU")
  parser.add_argument('--torch', choices=('eager', 'none'), default='eager')
  parser.add_argument('--torch_compile', action='store_true', help='torch.compile the model')
  parser.add_argument('--channels_last', action='store_true',
                      help="torch's model and images in channels_last (NHWC) memory format")
  parser.add_argument('--torch_threads', type=int, default=None)
  parser.add_argument('--json', default=None, help='append the JSON line to this file')
  parser.add_argument('--profile', action='store_true',
                      help='also time each layer alone (forward, forward + backward)')
  return parser.parse_args(argv)


def random_batch(args, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.normal(0, 60, (args.batch_size, args.image_size, args.image_size, 3))
  labels = rng.integers(0, args.num_classes, args.batch_size)
  return images.astype(np.float32), labels.astype(np.int32)


def median_step_seconds(step, steps: int, warmup: int) -> tuple[float, float]:
  """(seconds of the first call, median seconds of the timed calls); step() must block."""
  start = time.perf_counter()
  step()
  first = time.perf_counter() - start
  for _ in range(max(0, warmup - 1)):
    step()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return first, statistics.median(times)


def model_flops_per_step(spec, image_size: int, batch_size: int) -> float:
  """FLOPs of one training step, whatever algorithm computes it.

  Three times the forward pass's multiply-adds (the forward, and the backward's input and
  weight gradients), 2 FLOPs each, over the conv and dense layers."""
  forward = 0
  previous = (image_size, image_size, 3)
  for name, shape in architecture.shapes(spec, previous).items():
    record = architecture.layer(spec, name)
    if isinstance(record, architecture.Conv):
      forward += 2 * np.prod(shape) * record.kernel ** 2 * previous[-1]
    elif isinstance(record, architecture.Dense):
      forward += 2 * np.prod(previous) * record.features
    previous = shape
  return 3.0 * batch_size * float(forward)


def bench_jax(args) -> dict:
  config = zfnet.get_config()
  config.update(dtype=args.dtype, batch_size=args.batch_size, image_size=args.image_size)
  mesh = parallel.create_mesh()
  model = models.from_config(config, args.num_classes)
  optimizer = train_state.create_optimizer(config)
  image_shape = (args.image_size, args.image_size, 3)
  state = train_state.create_train_state(config, model, optimizer, mesh, image_shape)
  train_step = steps.make_train_step(config, model, optimizer, mesh)
  images, labels = random_batch(args)
  batch = parallel.global_batch({'image': images, 'label': labels}, mesh)

  start = time.perf_counter()
  compiled = train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float(cost.get('flops', float('nan'))) if cost else float('nan')
  flops = model_flops_per_step(model.spec, args.image_size, args.batch_size)

  holder = {'state': state}

  def step():
    holder['state'], metrics = train_step(holder['state'], batch)
    jax.block_until_ready(metrics)

  first, seconds = median_step_seconds(step, args.steps, args.warmup)
  result = {'images_per_sec': args.batch_size / seconds, 'ms_per_step': 1e3 * seconds,
            'first_step_s': first, 'compile_s': compile_s, 'flops_per_step': flops,
            'xla_flops_per_step': xla_flops,
            'devices': mesh.devices.size, 'device_kind': jax.devices()[0].device_kind}
  if args.peak_tflops:
    result['mfu'] = flops / seconds / (args.peak_tflops * 1e12)
  return result


def bench_torch(args) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  import torch_zfnet  # pylint: disable=g-import-not-at-top
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  # On a GPU, float32 products in TF32 on both sides: JAX's default there.
  torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
  model = torch_zfnet.TorchZFNet(num_classes=args.num_classes,
                                 input_size=args.image_size).to(device).train()
  layout = torch.channels_last if args.channels_last else torch.contiguous_format
  model = model.to(memory_format=layout)
  optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=5e-4)
  forward = torch.compile(model) if args.torch_compile else model
  convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
  images, labels = random_batch(args)
  images = torch.from_numpy(images).permute(0, 3, 1, 2).to(device)
  images = images.contiguous(memory_format=layout)
  labels = torch.from_numpy(labels).long().to(device)
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args.dtype == 'bfloat16')

  def step():
    optimizer.zero_grad(set_to_none=True)
    with autocast:
      loss = torch.nn.functional.cross_entropy(forward(images), labels)
    loss.backward()
    optimizer.step()
    with torch.no_grad():  # the paper's filter renormalization, as zfjax does
      for weight in convs:
        rms = weight.square().mean(dim=(1, 2, 3), keepdim=True).sqrt()
        weight.mul_(torch.where(rms > 0.1, 0.1 / rms, torch.ones_like(rms)))
    if device == 'cuda':
      torch.cuda.synchronize()
    return loss

  first, seconds = median_step_seconds(step, args.steps, args.warmup)
  return {'images_per_sec': args.batch_size / seconds, 'ms_per_step': 1e3 * seconds,
          'first_step_s': first, 'device': device, 'threads': torch.get_num_threads(),
          'compiled': args.torch_compile, 'channels_last': args.channels_last}


def layer_profile(args) -> list[dict]:
  """Where a step's time goes: each layer of ZFNet alone at the step's shapes.

  Forward and forward + backward (the gradients the step needs: weights, and the input's
  except for conv1), jitted in JAX and eager in PyTorch, median of a few runs. The JAX
  layers are the model's: convolutions through `fast_ops.conv_general_dilated` (nn.Conv's),
  pools through `models.max_pool`.
  """
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  from zfjax import fast_ops, models  # pylint: disable=import-outside-toplevel
  spec = architecture.zfnet(args.num_classes)
  shapes = architecture.shapes(spec, (args.image_size, args.image_size, 3))
  n, previous, rows = args.batch_size, (args.image_size, args.image_size, 3), []
  rng = np.random.default_rng(0)

  timed = lambda fn: median_step_seconds(fn, steps=3, warmup=1)[1]

  for record in spec:
    x = rng.standard_normal((n, *previous)).astype(np.float32)
    first = previous == (args.image_size, args.image_size, 3)
    if isinstance(record, architecture.Conv):
      k = (0.01 * rng.standard_normal((record.kernel, record.kernel, previous[-1],
                                       record.features))).astype(np.float32)
      pad = [(record.padding, record.padding)] * 2
      jax_fn = lambda x, k, r=record, pad=pad: jax.nn.relu(fast_ops.conv_general_dilated(
          x, k, (r.stride,) * 2, pad, dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
      torch_fn = lambda x, k, r=record: F.relu(F.conv2d(x, k, stride=r.stride,
                                                        padding=r.padding))
      tk = torch.from_numpy(k.transpose(3, 2, 0, 1).copy())
    elif isinstance(record, architecture.Dense):
      x = x.reshape(n, -1)
      k = (0.01 * rng.standard_normal((x.shape[1], record.features))).astype(np.float32)
      jax_fn = lambda x, k: jax.nn.relu(x @ k)
      torch_fn = lambda x, k: F.relu(x @ k)
      tk = torch.from_numpy(k)
    elif isinstance(record, architecture.Pool):
      k, tk = None, None
      jax_fn = lambda x, k, r=record: models.max_pool(x, r)
      torch_fn = lambda x, k: F.max_pool2d(x, 3, 2, ceil_mode=True)
    else:
      k, tk = None, None
      jax_fn = lambda x, k, r=record: models.local_response_norm(x, r.size, r.alpha, r.beta,
                                                                 r.k)
      torch_fn = lambda x, k, r=record: F.local_response_norm(x, r.size, r.alpha * r.size,
                                                              r.beta, r.k)
    jx, jk = jax.numpy.asarray(x), None if k is None else jax.numpy.asarray(k)
    wrt = tuple(i for i, needed in ((0, not first), (1, k is not None)) if needed)
    forward = jax.jit(jax_fn)
    both = jax.jit(lambda x, k, f=jax_fn, wrt=wrt: jax.grad(
        lambda *a: f(*a).sum(), argnums=wrt)(x, k))
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy() if x.ndim == 4 else x)
    tx.requires_grad_(not first)
    if tk is not None:
      tk.requires_grad_(True)

    def torch_both(f=torch_fn, tx=tx, tk=tk):
      f(tx, tk).sum().backward()

    def torch_forward(f=torch_fn, tx=tx, tk=tk):
      with torch.no_grad():
        f(tx, tk)
    rows.append({
        'layer': record.name,
        'jax_forward_ms': 1e3 * timed(lambda: forward(jx, jk).block_until_ready()),
        'jax_forward_backward_ms': 1e3 * timed(lambda: jax.block_until_ready(both(jx, jk))),
        'torch_forward_ms': 1e3 * timed(torch_forward),
        'torch_forward_backward_ms': 1e3 * timed(torch_both)})
    previous = shapes[record.name]
  return rows


def main(argv=None):
  args = parse_args(argv)
  result = {'benchmark': 'train_step', 'model': 'zfnet', 'batch_size': args.batch_size,
            'image_size': args.image_size, 'dtype': args.dtype, 'steps': args.steps,
            'zfjax': bench_jax(args)}
  rows = [('zfjax jit', result['zfjax']['images_per_sec'], result['zfjax']['ms_per_step'],
           result['zfjax']['first_step_s'], result['zfjax'].get('mfu', ''))]
  if args.torch != 'none':
    result['torch'] = bench_torch(args)
    result['zfjax_over_torch'] = (result['zfjax']['images_per_sec'] /
                                  result['torch']['images_per_sec'])
    if args.peak_tflops:  # the same model FLOPs over torch's step time
      result['torch']['mfu'] = (result['zfjax']['flops_per_step'] * result['torch'][
          'images_per_sec'] / args.batch_size / (args.peak_tflops * 1e12))
    name = 'torch compile' if args.torch_compile else 'torch eager'
    name += ', channels_last' if args.channels_last else ''
    rows.append((name, result['torch']['images_per_sec'], result['torch']['ms_per_step'],
                 result['torch']['first_step_s'], result['torch'].get('mfu', '')))
  if args.profile:
    result['layers'] = layer_profile(args)
  result['environment'] = common.environment()
  assert not result['environment']['tensorflow_imported'], 'TensorFlow was imported'
  common.print_report(result, ('framework', 'images/s', 'ms/step', 'first step s', 'MFU'),
                      rows, args.json)
  if args.profile:
    print()
    print(common.markdown_table(
        ('layer', 'JAX fwd ms', 'JAX fwd+bwd ms', 'torch fwd ms', 'torch fwd+bwd ms'),
        [(r['layer'], r['jax_forward_ms'], r['jax_forward_backward_ms'], r['torch_forward_ms'],
          r['torch_forward_backward_ms']) for r in result['layers']]))


if __name__ == '__main__':
  main()
