"""Training and evaluation as the paper describes it (PAPER.md, Training), data parallel.

    from zfjax import train
    results = train.train_and_evaluate(config, workdir)   # what zfjax-train runs

The loop's sections: mesh, input, model, sharding, update step, checkpoint, evals, loop,
final evaluation. The pieces live beside it (`train_state`, `steps`, `fields`, `logs`,
`faults`); docs/training.md gives the recipe and what a workdir holds.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from absl import logging
import jax
import ml_collections

from zfjax import checkpoints
from zfjax import configs
from zfjax import input_pipeline
from zfjax import models
from zfjax import parallel
from zfjax.train import faults
from zfjax.train import fields
from zfjax.train import logs
from zfjax.train import steps
from zfjax.train import train_state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict[str, Any]:
  """Trains, evaluates and checkpoints in `workdir`; returns the final results.

  Trains config.model on config.dataset; the results are also written to
  workdir/results.json. Resumes from the latest complete checkpoint in
  workdir/checkpoints when there is one. Raises configs.ConfigError before any work (the
  workdir not yet made) for settings that cannot run, NonFiniteLossError (keeping the last
  good checkpoint) if the loss stops being finite, WorkdirBusyError if another run holds
  the workdir, WorkdirWriteError if the file system refuses a write (disk full,
  read-only, no permission; the complete checkpoints before it still restore), and
  Preempted after saving the current step's checkpoint when SIGTERM arrives (the same
  command then resumes exactly).
  """
  workdir = pathlib.Path(workdir).absolute()
  main = parallel.is_main_process()
  mesh = parallel.create_mesh()
  fields.check_config(config, mesh)
  try:
    if main:
      workdir.mkdir(parents=True, exist_ok=True)
    with faults.workdir_lock(workdir, enabled=main), faults.StopSignal() as stop:
      return _train_and_evaluate(config, workdir, mesh, stop)
  except OSError as error:
    reason = checkpoints.write_failure(error)
    if reason is None:
      raise
    raise faults.WorkdirWriteError(
        f'cannot write to the workdir {workdir} ({reason}): training stopped; '
        f'{_last_complete(workdir)}; free space or make it writable, then run the same '
        'command to resume') from None


def _last_complete(workdir: pathlib.Path) -> str:
  try:
    directory = checkpoints.find_checkpoint(workdir)
  except FileNotFoundError:
    return 'no checkpoint was saved'
  return f'the last complete checkpoint, {directory}, is kept'


def _dataset_info(config) -> input_pipeline.DatasetInfo:
  """input_pipeline.dataset_info, a dataset name or setting it refuses as ConfigError."""
  try:
    return input_pipeline.dataset_info(config)
  except input_pipeline.DatasetUnavailableError:
    raise
  except input_pipeline.UnknownDatasetError as e:
    raise configs.ConfigError(f'config.dataset: {e}') from None
  except (ValueError, KeyError, NotImplementedError) as e:
    raise configs.ConfigError(f'dataset {config.dataset!r}: {e}') from e


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: pathlib.Path, mesh,
                        stop: faults.StopSignal) -> dict[str, Any]:
  """train_and_evaluate with the config checked, the workdir locked, SIGTERM caught."""
  main = parallel.is_main_process()

  # Input.
  info = _dataset_info(config)
  num_steps = fields.total_steps(config, info)

  # Model.
  model = models.from_config(config, info.num_classes)
  optimizer = train_state.create_optimizer(config)

  # Sharding: params and optimizer state replicated, batches split over 'data'.
  abstract_state = train_state.abstract_train_state(config, model, optimizer, mesh,
                                                    info.image_shape)

  # Update step.
  train_step = steps.make_train_step(config, model, optimizer, mesh)
  new_plateau = jax.jit(lambda plateau, error: train_state.update_plateau(config, plateau,
                                                                          error),
                        out_shardings=parallel.replicated(mesh))

  # Checkpoint.
  if main:
    (workdir / 'config.json').write_text(config.to_json(indent=2) + '\n')
  kept_epoch_steps = fields.epoch_steps(config, info, config.keep_epochs)
  manager = checkpoints.create_manager(workdir / checkpoints.CHECKPOINTS,
                                       keep=config.keep_checkpoints,
                                       keep_steps=kept_epoch_steps)
  start_step = manager.latest_step() or 0
  if start_step:
    start_step, state = checkpoints.restore_latest(manager, abstract_state)
    if main:
      logging.info('resumed from the checkpoint of step %d', start_step)
  else:
    state = train_state.create_train_state(config, model, optimizer, mesh, info.image_shape)
  writer = logs.MetricWriter(workdir, enabled=main)
  writer.truncate_after(start_step)
  if main:
    logging.info('%s on %s: %d steps of %d images (%.1f epochs), %d devices, %d processes',
                 config.model, config.dataset, num_steps, config.batch_size,
                 num_steps / fields.steps_per_epoch(config, info), mesh.devices.size,
                 jax.process_count())

  # Evals.
  center_eval = steps.make_eval_step([model], mesh)

  def run_eval(state, crops='center', split=None):
    batches = input_pipeline.eval_batches(config, crops=crops, split=split)
    return steps.evaluate(center_eval, [state.params], batches, mesh)

  # Loop: dispatch step N, then read step N-1's metrics while N runs.
  progress = logs.TrainProgress(config, writer, start_step, num_steps)
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
        raise faults.Preempted(step, manager.directory / str(step))
      progress.resume()
    checkpoints.wait(manager)
  except faults.NonFiniteLossError as e:
    checkpoints.wait(manager)
    good = manager.latest_step()
    where = (f'the last good checkpoint is step {good} in {manager.directory}' if good
             else 'no checkpoint was saved')
    raise faults.NonFiniteLossError(f'{e}: training stopped; {where}') from None
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
    train = run_eval(state, split=config.train_split)
    results.update(train_top1_error=train['top1_error'], train_top5_error=train['top5_error'],
                   train_count=train['count'])
  if main:
    (workdir / 'results.json').write_text(json.dumps(results, indent=2) + '\n')
    logging.info('final evaluation: %s', json.dumps(results))
  return results
