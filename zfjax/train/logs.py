"""A run's numbers on disk and on the console: metrics.jsonl, TensorBoard events, progress lines.

    writer = logs.MetricWriter(workdir, enabled=parallel.is_main_process())
    progress = logs.TrainProgress(config, writer, first_step=0, last_step=num_steps)
    progress.record(step, step_metrics)    # a step late; NonFiniteLossError on NaN or inf
    writer.write(step, {'eval_top1_error': 0.31})

TensorBoard (the `train` extra) is imported only when a writer is enabled.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import socket
import time
from typing import Any

from absl import logging
import jax
import numpy as np

from zfjax import extras
from zfjax import parallel
from zfjax.train import faults

_PURPOSE = 'writing TensorBoard event files'


def _tensorboard(module: str):
  """A module of the tensorboard package, or MissingExtraError naming the `train` extra."""
  return extras.require(f'tensorboard.{module}', 'train', _PURPOSE)


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
      record_writer = _tensorboard('summary.writer.record_writer')
      name = f'events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}'
      self._events = record_writer.RecordWriter(open(workdir / name, 'wb'))
      self._add_event(file_version='brain.Event:2')

  def truncate_after(self, step: int) -> None:
    """Drops records of steps after `step`, so a resumed run's metrics.jsonl reads as one run.

    Such records are left by a run that died after its last checkpoint.
    """
    if not self.enabled or not self.path.exists():
      return
    records = [line for line in self.path.read_text().splitlines()
               if line.strip() and json.loads(line)['step'] <= step]
    self.path.write_text(''.join(line + '\n' for line in records))

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    """Appends one record of `scalars` at `step` to metrics.jsonl and the event file."""
    if not self.enabled:
      return
    record = {'step': int(step), **{k: _plain(v) for k, v in scalars.items()}}
    with self.path.open('a') as f:
      f.write(json.dumps(record) + '\n')
    summary_pb2 = _tensorboard('compat.proto.summary_pb2')
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
              for k, v in record.items() if k != 'step' and isinstance(v, (int, float))]
    self._add_event(step=int(step), summary=summary_pb2.Summary(value=values))
    self._events.flush()

  def _add_event(self, **fields) -> None:
    event_pb2 = _tensorboard('compat.proto.event_pb2')
    event = event_pb2.Event(wall_time=time.time(), **fields)
    self._events.write(event.SerializeToString())

  def close(self) -> None:
    """Closes the event file (metrics.jsonl is closed after each record)."""
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


class TrainProgress:
  """The training loop's log: each step's metrics read a step late, checked, averaged.

  Stops on a non-finite loss (NonFiniteLossError), and every log_every_steps writes the
  interval's mean metrics and a console line with images/s and the time left.
  """

  def __init__(self, config, writer: MetricWriter, first_step: int, last_step: int):
    self.config, self.writer, self.last_step = config, writer, last_step
    self.interval: list[dict] = []
    self.mark = (first_step, time.perf_counter())  # (step, time) images/s counts from
    self.compiled = False
    self.paused_at = 0.0

  def record(self, step: int, metrics: dict) -> None:
    """Takes `step`'s metrics (device arrays); flushes at a logging step."""
    metrics = jax.device_get(metrics)
    loss, grad_norm, param_norm = (float(metrics[k]) for k in
                                   ('loss', 'grad_norm', 'param_norm'))
    if not all(math.isfinite(x) for x in (loss, grad_norm, param_norm)):
      raise faults.NonFiniteLossError(f'loss is {loss} (gradient norm {grad_norm}, weight '
                                      f'norm {param_norm}) at step {step}')
    self.interval.append(metrics)
    if step % self.config.log_every_steps == 0 or step == self.last_step:
      self.flush(step)
    elif not self.compiled:  # leave the first step's compilation out of images/s
      self.mark = (step, time.perf_counter())
    self.compiled = True

  def flush(self, step: int) -> None:
    """Writes the interval's mean metrics and images/s, and logs one line."""
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
    """Ends a pause."""
    first, start = self.mark
    self.mark = (first, start + time.perf_counter() - self.paused_at)
