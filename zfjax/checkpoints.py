"""Orbax checkpoints of the training state: save, keep, resume, restore onto any mesh.

    manager = checkpoints.create_manager(workdir / 'checkpoints', keep=3, keep_steps=(...))
    checkpoints.save(manager, step, state, metrics={'top1_error': 0.3}, config=config)
    state = checkpoints.restore(manager, abstract_state)       # the latest complete one
    manager.wait_until_finished(); manager.close()             # saves are asynchronous

    config, params = checkpoints.restore_params('/tmp/zf_digits')  # for the analyses

Which checkpoints stay (`create_manager`): the latest `keep`, the one with the lowest
validation top-1 error among those saved with metrics, and those at `keep_steps` (the
epochs kept for the paper's Fig. 4). Orbax writes each checkpoint into a temporary
directory and renames it when complete, so a run killed mid-save leaves no step that
`latest_step` would pick: resuming takes the latest complete one.

A checkpoint directory `<workdir>/checkpoints/<step>` holds the whole `TrainState`
(StandardSave) and, in its step metadata, the config that trained it.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Optional, Sequence, Union

import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_manager
from orbax.checkpoint import checkpoint_managers as policies

CHECKPOINTS = 'checkpoints'
DEFAULT_ITEM = checkpoint_manager.DEFAULT_ITEM_NAME  # the subdirectory of a lone item
BEST_METRIC = 'top1_error'

PathLike = Union[str, os.PathLike]


def _best_metric(metrics: dict) -> float:
  return metrics[BEST_METRIC]


def create_manager(directory: PathLike, *, keep: int = 3, keep_steps: Sequence[int] = (),
                   async_save: bool = True, read_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager for `directory` keeping the latest `keep` checkpoints, the best
  by validation error (checkpoints saved with metrics {'top1_error': ...}), and those at
  `keep_steps`. Saves happen only when `save` is called."""
  keep_policy = policies.AnyPreservationPolicy([
      policies.LatestN(n=max(1, keep)),
      policies.BestN(get_metric_fn=_best_metric, reverse=True, n=1,
                     keep_checkpoints_without_metrics=False),
      policies.CustomSteps(steps=tuple(keep_steps)),
  ])
  options = ocp.CheckpointManagerOptions(
      preservation_policy=keep_policy,
      best_fn=_best_metric, best_mode='min',  # writes metrics to disk; enables best_step()
      enable_async_checkpointing=async_save,
      read_only=read_only, create=not read_only, cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, *,
         metrics: Optional[dict] = None, config: Optional[ml_collections.ConfigDict] = None
         ) -> None:
  """Starts an asynchronous save of `state` as step `step` (every process must call it).
  `metrics` (e.g. {'top1_error': e}) ranks it for the best-checkpoint rule; `config` is
  stored in the step's metadata so the checkpoint is self-describing."""
  custom = {'config': json.loads(config.to_json())} if config is not None else None
  metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
  manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True,
               custom_metadata=custom)


def restore(manager: ocp.CheckpointManager, abstract_state: Any,
            step: Optional[int] = None) -> Any:
  """The state saved at `step` (default: the latest complete checkpoint), laid out as
  `abstract_state` says: a pytree of jax.ShapeDtypeStruct with shardings, e.g.
  `jax.eval_shape` of the state's constructor with the target shardings attached. The
  checkpoint may come from any number of devices or processes."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no complete checkpoint in {manager.directory}')
  return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))


def abstract(tree: Any, sharding: Optional[jax.sharding.Sharding] = None) -> Any:
  """jax.ShapeDtypeStruct leaves for a pytree of arrays (or of ShapeDtypeStructs), each
  with `sharding` (default: the leaf's own)."""
  def leaf(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype,
                                sharding=sharding or getattr(x, 'sharding', None))
  return jax.tree.map(leaf, tree)


# ----------------------------------------------------------------------------- analyses


def find_checkpoint(path: PathLike, step: Union[int, str] = 'latest') -> pathlib.Path:
  """The directory of one checkpoint. `path`: a workdir (holding checkpoints/), a
  checkpoints directory, or a step directory itself. `step`: an int, 'latest', or 'best'
  (lowest validation top-1 error among checkpoints saved with metrics)."""
  path = pathlib.Path(path).absolute()
  if (path / CHECKPOINTS).is_dir():
    path = path / CHECKPOINTS
  if _is_step_directory(path):
    return path
  if not path.is_dir():
    raise FileNotFoundError(f'no checkpoint at {path}')
  manager = create_manager(path, read_only=True, async_save=False)
  try:
    if step == 'latest':
      chosen = manager.latest_step()
    elif step == 'best':
      chosen = manager.best_step() or manager.latest_step()  # no metrics: latest
    else:
      chosen = int(step)
      if chosen not in manager.all_steps():
        raise FileNotFoundError(f'no checkpoint of step {chosen} in {path}; '
                                f'steps: {list(manager.all_steps())}')
    if chosen is None:
      raise FileNotFoundError(f'no complete checkpoint in {path}')
    return path / str(chosen)
  finally:
    manager.close()


def _is_step_directory(path: pathlib.Path) -> bool:
  return (path / '_CHECKPOINT_METADATA').is_file()


def restore_params(path: PathLike, step: Union[int, str] = 'latest', *,
                   sharding: Optional[jax.sharding.Sharding] = None
                   ) -> tuple[Optional[ml_collections.ConfigDict], Any]:
  """(config, params) of a trained model, for the analyses.

  `path` is a workdir, its checkpoints/ directory, or one step directory; `step` picks
  among several ('latest', 'best' or a step number). Only the params are read (not the
  optimizer state). They land on `sharding` (default: this process's first device).
  `config` is the ConfigDict that trained them (from the checkpoint's metadata, else the
  workdir's config.json), or None if neither exists. Rebuild the model with
  `zfjax.training.create_model(config, num_classes)`, or infer the class count from
  params['fc8']['bias'].
  """
  directory = find_checkpoint(path, step)
  item = directory / DEFAULT_ITEM
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    tree = checkpointer.metadata(item).item_metadata.tree
    target = {'params': abstract(tree['params'], sharding)}
    restored = checkpointer.restore(item, args=ocp.args.PyTreeRestore(
        target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
  finally:
    checkpointer.close()
  return _load_config(directory), restored['params']


def _load_config(directory: pathlib.Path) -> Optional[ml_collections.ConfigDict]:
  """The config stored with a checkpoint, else the workdir's config.json, else None."""
  metadata_file = directory / '_CHECKPOINT_METADATA'
  custom = json.loads(metadata_file.read_text()).get('custom_metadata') or {}
  config = custom.get('config')
  workdir_config = directory.parent.parent / 'config.json'
  if config is None and workdir_config.is_file():
    config = json.loads(workdir_config.read_text())
  return None if config is None else config_from_dict(config)


def config_from_dict(values: dict) -> ml_collections.ConfigDict:
  """A locked ConfigDict from JSON values; lists become tuples as in the config files."""
  def tuples(value):
    if isinstance(value, list):
      return tuple(tuples(v) for v in value)
    if isinstance(value, dict):
      return {k: tuples(v) for k, v in value.items()}
    return value
  config = ml_collections.ConfigDict(tuples(values))
  config.lock()
  return config
