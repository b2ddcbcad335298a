"""Training and evaluation as the paper describes it (PAPER.md, Training), data parallel.

    training.train_and_evaluate(config, workdir)    # what train.py calls; a notebook can too

Pieces, each usable on its own:
  models.from_config(config, num_classes)               the ConvNet the config names
  create_optimizer(config)                        SGD + momentum, weight decay in the gradient
  create_train_state(config, model, ...)          params created directly replicated
  renormalize_filters(params, radius)             the paper's feature scale clipping
  make_train_step(config, model, optimizer, mesh) jit(shard_map(step)), pmean over 'data'
  make_eval_step(models, mesh)                    top-1/top-5 counts, one crop or ten
  evaluate(eval_step, params, batches, mesh)      errors over a whole split
  evaluate_ensemble(members, batches)             softmax averaged over several nets
  update_plateau(config, plateau, top1_error)     divide the learning rate on a plateau

The optimizer (Sec. 3): SGD with momentum 0.9, learning rate 1e-2, weight decay 5e-4 added
to the gradient of the weights (AlexNet's rule; biases are not decayed, as in AlexNet's
and Caffe's setups), dropout 0.5 on fc6 and fc7 (in the model). The learning rate is
divided by `lr_decay_factor` when validation top-1 error has not improved for
`lr_patience` evaluations; that counter lives in the TrainState, so a resumed run decides
as the uninterrupted one would. After every update each conv filter whose RMS exceeds
`filter_rms_radius` is scaled back to that RMS.

Dropout masks are drawn per example from (seed, step, example index in the global
batch), so a step is the same computation on any number of devices or processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import pathlib
import signal
import socket
import threading
import time
from typing import Any, Callable, Iterable, Sequence

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax
from jax.sharding import PartitionSpec as P

from zfjax import architecture
from zfjax import checkpoints
from zfjax import configs
from zfjax import input_pipeline
from zfjax import models
from zfjax import parallel

class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite; the last good checkpoint is kept."""


class WorkdirBusyError(RuntimeError):
  """Another run holds the workdir's lock: two runs would interleave checkpoints."""


class WorkdirWriteError(OSError):
  """The workdir refused a write (disk full, read-only, no permission): training stopped;
  the complete checkpoints written before still restore."""


class Preempted(Exception):
  """SIGTERM (a preemption notice on TPU and SLURM, or `kill`) stopped training after a
  checkpoint of `step` was saved and finished; the same command resumes from it."""

  def __init__(self, step: int, directory):
    super().__init__(f'stopped by SIGTERM at step {step}: its checkpoint is saved in '
                     f'{directory}; run the same command to resume')
    self.step = step


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs: step, params, SGD momentum, learning-rate plateau."""
  step: jax.Array
  params: Any
  opt_state: Any
  plateau: optax.contrib.ReduceLROnPlateauState


# ----------------------------------------------------------------------------- optimizer


def _is_kernel(path, leaf) -> bool:
  del leaf
  return path[-1].key == 'kernel'


def create_optimizer(config) -> optax.GradientTransformation:
  """g + weight_decay * w (weights only), then SGD with momentum (PyTorch's form:
  v = momentum * v + g, w -= lr * v) at config.learning_rate. The plateau scale
  multiplies the result in the train step."""
  decay_mask = lambda params: jax.tree_util.tree_map_with_path(_is_kernel, params)
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
      optax.sgd(config.learning_rate, momentum=config.momentum or None))


def plateau_rule(config) -> optax.GradientTransformationExtraArgs:
  """optax's reduce-on-plateau, fed one validation error per evaluation."""
  return optax.contrib.reduce_on_plateau(factor=1.0 / config.lr_decay_factor,
                                         patience=max(1, config.lr_patience))


def update_plateau(config, plateau, top1_error: float):
  """The plateau state after an evaluation with `top1_error`: its `scale` is divided by
  lr_decay_factor once the error has not improved for lr_patience evaluations
  (lr_patience <= 0 keeps the learning rate fixed)."""
  if config.lr_patience <= 0:
    return plateau
  _, plateau = plateau_rule(config).update({}, plateau, value=top1_error)
  return plateau


def learning_rate(config, state: TrainState) -> jax.Array:
  return config.learning_rate * state.plateau.scale


# ----------------------------------------------------------------------------- state


def init_train_state(config, model: models.ConvNet, optimizer: optax.GradientTransformation,
                     image_shape: Sequence[int]) -> TrainState:
  """A fresh TrainState (pure; jit it with out_shardings to place it)."""
  images = jnp.zeros((1, *image_shape), jnp.float32)
  params = model.init(jax.random.key(config.seed), images)['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params), plateau=plateau_rule(config).init(params))


def create_train_state(config, model: models.ConvNet, optimizer: optax.GradientTransformation,
                       mesh, image_shape: Sequence[int]) -> TrainState:
  """A fresh TrainState, created directly replicated over the mesh.

  On CPU the init is compiled at XLA's lowest optimization level: the program runs once,
  and XLA's CPU optimizer takes seconds per random-number kernel (about 10 s for ZFNet's
  layers, 2 s at level 0). The values agree with level 3's to about 1e-7."""
  init = lambda: init_train_state(config, model, optimizer, image_shape)
  on_cpu = mesh.devices.flat[0].platform == 'cpu'
  options = {'xla_backend_optimization_level': 0} if on_cpu else None
  return jax.jit(init, out_shardings=parallel.replicated(mesh), compiler_options=options)()


def abstract_train_state(config, model: models.ConvNet, optimizer: optax.GradientTransformation,
                         mesh, image_shape: Sequence[int]) -> TrainState:
  """Shapes, dtypes and replicated shardings of the TrainState: the restore target."""
  shapes = jax.eval_shape(lambda: init_train_state(config, model, optimizer, image_shape))
  return checkpoints.abstract(shapes, parallel.replicated(mesh))


def renormalize_filters(params, radius: float):
  """Feature scale clipping (Sec. 3): every conv filter (a kernel's output channel; RMS
  over height, width and input channels) whose RMS exceeds `radius` is rescaled to RMS
  `radius`; the others are returned unchanged, bit for bit. radius <= 0: no-op. Conv
  kernels are the 4-D 'kernel' leaves (HWIO)."""
  if radius <= 0:
    return params
  def clip(path, leaf):
    if path[-1].key != 'kernel' or leaf.ndim != 4:
      return leaf
    rms = jnp.sqrt(jnp.mean(jnp.square(leaf), axis=(0, 1, 2), keepdims=True))
    return jnp.where(rms > radius, leaf * (radius / rms), leaf)
  return jax.tree_util.tree_map_with_path(clip, params)


def filter_rms(params) -> dict[str, jax.Array]:
  """{conv layer: RMS of each of its filters}."""
  return {name: jnp.sqrt(jnp.mean(jnp.square(layer['kernel']), axis=(0, 1, 2)))
          for name, layer in params.items() if layer['kernel'].ndim == 4}


# ----------------------------------------------------------------------------- steps


def cross_entropy(logits, labels) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _dropout_keys(seed: int, step, first_example, count: int) -> jax.Array:
  """One key per example, from (seed, step, index of the example in the global batch)."""
  step_key = jax.random.fold_in(jax.random.key(seed), step)
  return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(first_example + jnp.arange(count))


def _train_logits(model, params, images, keys):
  """Training-mode logits, each example with its own dropout key."""
  def one(image, key):
    return model.apply({'params': params}, image[None], train=True, rngs={'dropout': key})[0]
  return jax.vmap(one)(images, keys)


def make_train_step(config, model: models.ConvNet, optimizer: optax.GradientTransformation,
                    mesh) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """jit(shard_map(step)): each device takes its rows of the global batch, gradients and
  metrics are averaged over 'data' (lax.pmean), and every device applies the same update
  to its replica. The input state is donated. Returns (state, metrics) with metrics
  {'loss', 'top1_error', 'grad_norm', 'param_norm', 'lr'} of the global batch (loss and
  error before the update, param_norm after it), replicated."""
  seed, radius = config.seed, config.filter_rms_radius

  def step(state: TrainState, batch: dict):
    images, labels = batch['image'], batch['label']
    local = labels.shape[0]
    keys = _dropout_keys(seed, state.step, lax.axis_index(parallel.DATA) * local, local)
    # Per-device gradients: make the replicated params device-varying first, so autodiff
    # does not sum the cotangents itself; pmean below is the one reduction.
    params = lax.pcast(state.params, parallel.DATA, to='varying')

    def loss_fn(params):
      logits = _train_logits(model, params, images, keys)
      return jnp.mean(cross_entropy(logits, labels)), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    grads = lax.pmean(grads, parallel.DATA)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: u * state.plateau.scale, updates)
    params = renormalize_filters(optax.apply_updates(state.params, updates), radius)
    metrics = {'loss': loss, 'top1_error': jnp.mean(jnp.argmax(logits, -1) != labels)}
    metrics = lax.pmean(metrics, parallel.DATA)
    metrics['grad_norm'] = optax.tree.norm(grads)
    metrics['param_norm'] = optax.tree.norm(params)
    metrics['lr'] = config.learning_rate * state.plateau.scale
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(parallel.DATA)), out_specs=P())
  return jax.jit(sharded, donate_argnums=0)


def probabilities(model: models.ConvNet, params, images) -> jax.Array:
  """Softmax of the inference-mode logits; images (N, H, W, 3), or (N, K, H, W, 3) for K
  crops of each image, whose probabilities are averaged (the paper's 10-crop test)."""
  if images.ndim == 5:
    n, k = images.shape[:2]
    probs = probabilities(model, params, images.reshape(n * k, *images.shape[2:]))
    return probs.reshape(n, k, -1).mean(axis=1)
  return jax.nn.softmax(model.apply({'params': params}, images))


def count_correct(probs, labels, mask) -> dict[str, jax.Array]:
  """Sums over the unmasked examples: top-1 and top-5 hits, log loss, count. An example
  is a top-k hit when fewer than k classes score strictly higher than its label."""
  true_prob = jnp.take_along_axis(probs, labels[:, None], axis=-1)
  rank = jnp.sum(probs > true_prob, axis=-1)
  weight = mask.astype(jnp.float32)
  return {'top1_correct': jnp.sum(weight * (rank < 1)),
          'top5_correct': jnp.sum(weight * (rank < 5)),
          'loss_sum': jnp.sum(weight * -jnp.log(jnp.maximum(true_prob[:, 0], 1e-30))),
          'count': jnp.sum(weight)}


def make_eval_step(model_list: Sequence[models.ConvNet], mesh) -> Callable:
  """jit(shard_map(...)) of (params_list, batch) -> summed counts over the global batch
  (see count_correct) of the ensemble's averaged softmax; one model is an ensemble of
  one. Batches {'image', 'label', 'mask'}, images with or without a crops axis."""
  model_list = tuple(model_list)

  def step(params_list, batch):
    probs = sum(probabilities(model, params, batch['image'])
                for model, params in zip(model_list, params_list)) / len(model_list)
    counts = count_correct(probs, batch['label'], batch['mask'])
    return lax.psum(counts, parallel.DATA)

  return jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(parallel.DATA)),
                               out_specs=P()))


def evaluate(eval_step: Callable, params_list: Sequence[Any], batches: Iterable[dict],
             mesh) -> dict[str, float]:
  """{'top1_error', 'top5_error', 'loss', 'count'} over every batch (padding masked).
  `params_list`: one params tree per model of the eval step, replicated on the mesh."""
  total = None
  for batch in batches:
    counts = eval_step(tuple(params_list), parallel.global_batch(batch, mesh))
    total = counts if total is None else jax.tree.map(jnp.add, total, counts)
  if total is None:
    raise ValueError('no evaluation batches')
  total = jax.tree.map(float, jax.device_get(total))
  count = max(total['count'], 1.0)
  return {'top1_error': 1 - total['top1_correct'] / count,
          'top5_error': 1 - total['top5_correct'] / count,
          'loss': total['loss_sum'] / count, 'count': int(total['count'])}


def evaluate_ensemble(members: Sequence[tuple[models.ConvNet, Any]], batches: Iterable[dict],
                      mesh=None) -> dict[str, float]:
  """Errors of the ensemble that averages the softmax of several (model, params) pairs
  (the paper's Table 2 ensembles; models may differ, e.g. 5 ZFNets and the wide one).
  With ten-crop batches each member's crops are averaged first."""
  mesh = mesh or parallel.create_mesh()
  params_list = [jax.device_put(params, parallel.replicated(mesh)) for _, params in members]
  eval_step = make_eval_step([model for model, _ in members], mesh)
  return evaluate(eval_step, params_list, batches, mesh)


# ----------------------------------------------------------------------------- schedule


# Rules of check_fields: (int or float, test, what the value must be).
POSITIVE_INT = (int, lambda v: v > 0, 'positive')
POSITIVE = (float, lambda v: v > 0, 'positive')
NON_NEGATIVE_INT = (int, lambda v: v >= 0, 'zero or positive')
NON_NEGATIVE = (float, lambda v: v >= 0, 'zero or positive')
FRACTION = (float, lambda v: 0 <= v < 1, 'in [0, 1)')
ANY_INT = (int, lambda v: True, 'an integer')

# field: rule; check_fields skips the fields a config does not have.
FIELD_RULES = {
    'image_size': POSITIVE_INT,
    'resize_size': POSITIVE_INT,
    'shuffle_buffer': POSITIVE_INT,
    'mean_image_examples': (int, lambda v: v >= 0, 'zero (every image) or positive'),
    'num_train_examples': (int, lambda v: v >= 0, 'zero (from the dataset) or positive'),
    'num_eval_examples': (int, lambda v: v >= 0, 'zero (from the dataset) or positive'),
    'dropout': FRACTION,
    'batch_size': POSITIVE_INT,
    'eval_batch_size': POSITIVE_INT,
    'num_epochs': NON_NEGATIVE,
    'num_train_steps': (int, lambda v: v > 0 or v == -1, 'positive, or -1 to train num_epochs'),
    'learning_rate': POSITIVE,
    'momentum': FRACTION,
    'weight_decay': NON_NEGATIVE,
    'filter_rms_radius': (float, lambda v: v >= 0, 'zero (off) or positive'),
    'lr_patience': NON_NEGATIVE_INT,
    'lr_decay_factor': (float, lambda v: v > 1, 'above 1'),
    'seed': ANY_INT,
    'log_every_steps': POSITIVE_INT,
    'eval_every_steps': POSITIVE_INT,
    'checkpoint_every_steps': POSITIVE_INT,
    'keep_checkpoints': POSITIVE_INT,
}


def check_fields(config, rules=None, error=None) -> None:
  """`error` (default configs.ConfigError) naming the first field whose value has the wrong type
  or range under `rules` (default FIELD_RULES: {field: rule}); fields the config lacks
  are skipped."""
  rules = FIELD_RULES if rules is None else rules
  error = error or configs.ConfigError
  for field, (kind, test, must_be) in rules.items():
    if field not in config:
      continue
    value = config[field]
    numeric = (int, float) if kind is float else (int,)
    if isinstance(value, bool) or not isinstance(value, numeric):
      raise error(f'config.{field} must be {"a number" if kind is float else "an integer"}'
                  f', got {value!r}')
    if not test(value):
      raise error(f'config.{field} must be {must_be}, got {value!r}')


def check_config(config, mesh) -> None:
  """configs.ConfigError naming the field for settings that cannot run here, before any work:
  a value of the wrong type or range, an unknown model, init or dtype, layer widths
  the model cannot take, a batch size that does not split over the devices."""
  check_fields(config)
  if config.image_size > config.resize_size:
    raise configs.ConfigError(f'config.image_size ({config.image_size}) must not exceed '
                      f'config.resize_size ({config.resize_size}): crops come from the '
                      'resized image')
  if config.model not in architecture.SPECS:
    raise configs.ConfigError(f'unknown model {config.model!r} (config.model); choose one of '
                      f'{sorted(architecture.SPECS)}')
  models.from_config(config, num_classes=2)  # widths and removed layers; builds nothing
  for field in ('batch_size', 'eval_batch_size'):
    try:
      parallel.check_batch_size(config[field], mesh, field)
    except ValueError as e:
      raise configs.ConfigError(str(e)) from None
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise configs.ConfigError('set num_epochs > 0 or num_train_steps > 0')


def steps_per_epoch(config, info: input_pipeline.DatasetInfo) -> float:
  return info.num_train / config.batch_size


def total_steps(config, info: input_pipeline.DatasetInfo) -> int:
  """num_train_steps if positive, else num_epochs passes over the training split."""
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return max(1, math.ceil(config.num_epochs * steps_per_epoch(config, info)))


def epoch_steps(config, info: input_pipeline.DatasetInfo, epochs: Iterable[int]) -> tuple:
  """The steps that end the given epochs (checkpoints kept for the paper's Fig. 4)."""
  return tuple(sorted({max(1, round(e * steps_per_epoch(config, info))) for e in epochs}))


# ----------------------------------------------------------------------------- logging


class MetricWriter:
  """metrics.jsonl (one JSON object per record) and TensorBoard scalars, process 0 only.

  Event files are written with tensorboard's record framing into a local file, without
  TensorFlow (tensorboard's own EventFileWriter imports TensorFlow when it is installed).
  """

  def __init__(self, workdir: pathlib.Path, enabled: bool):
    self.enabled = enabled
    self.path = workdir / 'metrics.jsonl'
    self._events = None
    if enabled:
      from tensorboard.summary.writer import record_writer  # pylint: disable=g-import-not-at-top
      name = f'events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}'
      self._events = record_writer.RecordWriter(open(workdir / name, 'wb'))
      self._add_event(file_version='brain.Event:2')

  def truncate_after(self, step: int) -> None:
    """Drops records of steps after `step` (left by a run that died after its last
    checkpoint), so a resumed run's metrics.jsonl reads as one run."""
    if not self.enabled or not self.path.exists():
      return
    records = [line for line in self.path.read_text().splitlines()
               if line.strip() and json.loads(line)['step'] <= step]
    self.path.write_text(''.join(line + '\n' for line in records))

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), **{k: _plain(v) for k, v in scalars.items()}}
    with self.path.open('a') as f:
      f.write(json.dumps(record) + '\n')
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
              for k, v in record.items() if k != 'step' and isinstance(v, (int, float))]
    self._add_event(step=int(step), summary=summary_pb2.Summary(value=values))
    self._events.flush()

  def _add_event(self, **fields) -> None:
    from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
    event = event_pb2.Event(wall_time=time.time(), **fields)
    self._events.write(event.SerializeToString())

  def close(self) -> None:
    if self._events is not None:
      self._events.close()
      self._events = None


def _plain(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


def _duration(seconds: float) -> str:
  seconds = int(max(0, seconds))
  hours, rest = divmod(seconds, 3600)
  return f'{hours}h{rest // 60:02d}m' if hours else f'{rest // 60}m{rest % 60:02d}s'


class Progress:
  """Reads each step's metrics (a step late), stops on a non-finite loss, and every
  log_every_steps writes the interval's mean metrics and a console line."""

  def __init__(self, config, writer: MetricWriter, first_step: int, last_step: int):
    self.config, self.writer, self.last_step = config, writer, last_step
    self.interval: list[dict] = []
    self.mark = (first_step, time.perf_counter())  # (step, time) images/s counts from
    self.compiled = False
    self.paused_at = 0.0

  def record(self, step: int, metrics: dict) -> None:
    metrics = jax.device_get(metrics)
    loss, grad_norm, param_norm = (float(metrics[k]) for k in
                                   ('loss', 'grad_norm', 'param_norm'))
    if not all(math.isfinite(x) for x in (loss, grad_norm, param_norm)):
      raise NonFiniteLossError(f'loss is {loss} (gradient norm {grad_norm}, weight norm '
                               f'{param_norm}) at step {step}')
    self.interval.append(metrics)
    if step % self.config.log_every_steps == 0 or step == self.last_step:
      self.flush(step)
    elif not self.compiled:  # leave the first step's compilation out of images/s
      self.mark = (step, time.perf_counter())
    self.compiled = True

  def flush(self, step: int) -> None:
    first, start = self.mark
    now = time.perf_counter()
    steps_per_sec = (step - first) / max(now - start, 1e-9)
    means = {k: float(np.mean([m[k] for m in self.interval])) for k in self.interval[0]}
    means['images_per_sec'] = steps_per_sec * self.config.batch_size
    self.writer.write(step, means)
    if parallel.is_main_process():
      eta = (self.last_step - step) / max(steps_per_sec, 1e-9)
      logging.info('step %d/%d  loss %.4f  lr %.2e  %.1f images/s  ETA %s', step,
                   self.last_step, means['loss'], means['lr'], means['images_per_sec'],
                   _duration(eta))
    self.interval = []
    self.mark = (step, now)

  def pause(self) -> None:
    """Excludes the time until `resume` (evaluation, checkpointing) from images/s."""
    self.paused_at = time.perf_counter()

  def resume(self) -> None:
    first, start = self.mark
    self.mark = (first, start + time.perf_counter() - self.paused_at)


# ----------------------------------------------------------------------------- faults


LOCK_FILE = '.lock'


@contextlib.contextmanager
def workdir_lock(workdir: pathlib.Path, enabled: bool = True):
  """Holds an exclusive lock on workdir/.lock while training (process 0 only, so the
  processes of one multi-host run do not lock each other out). A second run on the same
  workdir fails at once with WorkdirBusyError instead of interleaving checkpoints. The
  lock is the kernel's (flock): it goes with the process, even on SIGKILL."""
  if not enabled:
    yield
    return
  path = workdir / LOCK_FILE
  with open(path, 'a+') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      holder = f.read().strip() or 'another process'
      raise WorkdirBusyError(f'workdir {workdir} is in use by another run ({holder}); wait '
                             'for it to finish, stop it, or use another --workdir') from None
    f.seek(0)
    f.truncate()
    f.write(f'pid {os.getpid()} on {socket.gethostname()}, since '
            f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n')
    f.flush()
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


class StopSignal:
  """Remembers a SIGTERM instead of dying of it, while installed (main thread only). With
  several processes the decision is JAX's preemption sync point (Orbax's
  `reached_preemption`), so that every process saves the same step."""

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.received = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def stop_at(self, manager, step: int) -> bool:
    if jax.process_count() > 1:
      return bool(manager.reached_preemption(step))
    return self.received


# ----------------------------------------------------------------------------- trainer


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict[str, Any]:
  """Trains config.model on config.dataset, evaluates, checkpoints in `workdir`, and
  returns the final results (also written to workdir/results.json).

  Resumes from the latest complete checkpoint in workdir/checkpoints when there is one.
  Raises configs.ConfigError before any work for settings that cannot run, and
  NonFiniteLossError (keeping the last good checkpoint) if the loss stops being finite,
  WorkdirBusyError if another run holds the workdir, WorkdirWriteError if the file system
  refuses a write (disk full, read-only, no permission; the complete checkpoints before
  it still restore), and Preempted after saving the current step's checkpoint when
  SIGTERM arrives (the same command then resumes exactly).
  """
  workdir = pathlib.Path(workdir).absolute()
  main = parallel.is_main_process()
  try:
    if main:
      workdir.mkdir(parents=True, exist_ok=True)
    with workdir_lock(workdir, enabled=main), StopSignal() as stop:
      return _train_and_evaluate(config, workdir, stop)
  except OSError as error:
    reason = checkpoints.write_failure(error)
    if reason is None:
      raise
    raise WorkdirWriteError(f'cannot write to the workdir {workdir} ({reason}): training '
                            f'stopped; {_last_complete(workdir)}; free space or make it '
                            'writable, then run the same command to resume') from None


def _last_complete(workdir: pathlib.Path) -> str:
  try:
    directory = checkpoints.find_checkpoint(workdir)
  except FileNotFoundError:
    return 'no checkpoint was saved'
  return f'the last complete checkpoint, {directory}, is kept'


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                        stop: StopSignal) -> dict[str, Any]:
  """train_and_evaluate with the workdir locked and SIGTERM caught by `stop`."""
  main = parallel.is_main_process()

  # Mesh.
  mesh = parallel.create_mesh()
  check_config(config, mesh)

  # Input.
  try:
    info = input_pipeline.dataset_info(config)
  except input_pipeline.DatasetUnavailableError:
    raise
  except input_pipeline.UnknownDatasetError as e:
    raise configs.ConfigError(f'config.dataset: {e}') from None
  except (ValueError, KeyError, NotImplementedError) as e:
    raise configs.ConfigError(f'dataset {config.dataset!r}: {e}') from e
  num_steps = total_steps(config, info)

  # Model.
  model = models.from_config(config, info.num_classes)
  optimizer = create_optimizer(config)

  # Sharding: params and optimizer state replicated, batches split over 'data'.
  abstract_state = abstract_train_state(config, model, optimizer, mesh, info.image_shape)

  # Update step.
  train_step = make_train_step(config, model, optimizer, mesh)
  new_plateau = jax.jit(lambda plateau, error: update_plateau(config, plateau, error),
                        out_shardings=parallel.replicated(mesh))

  # Checkpoint.
  if main:
    (workdir / 'config.json').write_text(config.to_json(indent=2) + '\n')
  kept_epoch_steps = epoch_steps(config, info, config.keep_epochs)
  manager = checkpoints.create_manager(workdir / checkpoints.CHECKPOINTS,
                                       keep=config.keep_checkpoints,
                                       keep_steps=kept_epoch_steps)
  start_step = manager.latest_step() or 0
  if start_step:
    start_step, state = checkpoints.restore_latest(manager, abstract_state)
    if main:
      logging.info('resumed from the checkpoint of step %d', start_step)
  else:
    state = create_train_state(config, model, optimizer, mesh, info.image_shape)
  writer = MetricWriter(workdir, enabled=main)
  writer.truncate_after(start_step)
  if main:
    logging.info('%s on %s: %d steps of %d images (%.1f epochs), %d devices, %d processes',
                 config.model, config.dataset, num_steps, config.batch_size,
                 num_steps / steps_per_epoch(config, info), mesh.devices.size,
                 jax.process_count())

  # Evals.
  center_eval = make_eval_step([model], mesh)

  def run_eval(state, crops='center'):
    batches = input_pipeline.eval_batches(config, crops=crops)
    return evaluate(center_eval, [state.params], batches, mesh)

  # Loop: dispatch step N, then read step N-1's metrics while N runs.
  progress = Progress(config, writer, start_step, num_steps)
  train_iter = input_pipeline.train_batches(config, start_step=start_step)
  last_eval = None  # (step, metrics)
  pending = None
  try:
    for step in range(start_step + 1, num_steps + 1):
      batch = parallel.global_batch(next(train_iter), mesh)
      state, metrics = train_step(state, batch)
      if pending is not None:
        progress.record(*pending)
      pending = (step, metrics)
      is_eval = step % config.eval_every_steps == 0 or step == num_steps
      preempted = stop.stop_at(manager, step)
      is_save = (step % config.checkpoint_every_steps == 0 or step in kept_epoch_steps
                 or step == num_steps or preempted)
      if not (is_eval or is_save):
        continue
      progress.record(*pending)  # checkpoint only a state whose loss was finite
      pending = None
      progress.pause()
      if is_eval:
        last_eval = (step, run_eval(state))
        state = state.replace(plateau=new_plateau(state.plateau, last_eval[1]['top1_error']))
        writer.write(step, {f'eval_{k}': v for k, v in last_eval[1].items()})
        if main:
          logging.info('step %d  eval top-1 error %.4f  top-5 error %.4f  (%d images)', step,
                       last_eval[1]['top1_error'], last_eval[1]['top5_error'],
                       last_eval[1]['count'])
      if is_save:
        best_metric = {'top1_error': last_eval[1]['top1_error']} if is_eval else None
        checkpoints.save(manager, step, state, metrics=best_metric, config=config)
      if preempted:
        checkpoints.wait(manager)
        raise Preempted(step, manager.directory / str(step))
      progress.resume()
    checkpoints.wait(manager)
  except NonFiniteLossError as e:
    checkpoints.wait(manager)
    good = manager.latest_step()
    where = (f'the last good checkpoint is step {good} in {manager.directory}' if good
             else 'no checkpoint was saved')
    raise NonFiniteLossError(f'{e}: training stopped; {where}') from None
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.close()

  # Final evaluation: the last step's center-crop errors, ten crops if asked, and the
  # center-crop errors on the training split if asked (Table 3's train top-1).
  center = last_eval[1] if last_eval and last_eval[0] == num_steps else run_eval(state)
  results = {'step': int(num_steps), 'top1_error': center['top1_error'],
             'top5_error': center['top5_error'], 'loss': center['loss'],
             'count': center['count']}
  if config.ten_crop_eval:
    ten = run_eval(state, 'ten')
    results.update(ten_crop_top1_error=ten['top1_error'], ten_crop_top5_error=ten['top5_error'])
  if config.train_error_eval:
    train_batches = input_pipeline.eval_batches(config, split=config.train_split)
    train = evaluate(center_eval, [state.params], train_batches, mesh)
    results.update(train_top1_error=train['top1_error'], train_top5_error=train['top5_error'],
                   train_count=train['count'])
  if main:
    (workdir / 'results.json').write_text(json.dumps(results, indent=2) + '\n')
    logging.info('final evaluation: %s', json.dumps(results))
  return results
