"""Orbax checkpoints of the training state: save, keep, resume, restore onto any mesh.

    manager = checkpoints.create_manager(workdir / 'checkpoints', keep=3, keep_steps=(...))
    checkpoints.save(manager, step, state, metrics={'top1_error': 0.3}, config=config)
    state = checkpoints.restore(manager, abstract_state)       # the latest complete one
    step, state = checkpoints.restore_latest(manager, abstract_state)  # newest that restores
    checkpoints.wait(manager); manager.close()                 # saves are asynchronous

    config, params = checkpoints.restore_params('/tmp/zf_digits')  # for the analyses

What is kept and checked, and how damaged checkpoints are handled: docs/checkpoints.md.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pathlib
import re
from typing import Any, Optional, Sequence, Union

from absl import logging
import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_manager
from orbax.checkpoint import checkpoint_managers as policies

from zfjax import configs
from zfjax import models

CHECKPOINTS = 'checkpoints'
DEFAULT_ITEM = checkpoint_manager.DEFAULT_ITEM_NAME  # the subdirectory of a lone item
BEST_METRIC = 'top1_error'

UNRESTORABLE = '.unrestorable'  # the suffix of a step set aside by restore_latest

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
  """A checkpoint that cannot be restored: incomplete, damaged, or of another model."""


class CheckpointWriteError(OSError):
  """A save that the file system refused (disk full, read-only, no permission, file size limit).

  The step's temporary directory is left incomplete, so no complete checkpoint is replaced:
  the previous ones still restore."""


def _best_metric(metrics: dict) -> float:
  return metrics[BEST_METRIC]


def create_manager(directory: PathLike, *, keep: int = 3, keep_steps: Sequence[int] = (),
                   async_save: bool = True, read_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager keeping the latest, the best and the chosen steps.

  A CheckpointManager for `directory` keeping the latest `keep` checkpoints, the best
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
  stored in the step's metadata so the checkpoint is self-describing. An earlier save that
  failed to write raises CheckpointWriteError here or in `wait`."""
  custom = {'config': json.loads(config.to_json())} if config is not None else None
  metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
  with _writing(manager):
    manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True,
                 custom_metadata=custom)


def wait(manager: ocp.CheckpointManager) -> None:
  """Waits for the asynchronous saves to finish.

  CheckpointWriteError when the file system refused one."""
  with _writing(manager):
    manager.wait_until_finished()


# OS error numbers of a file system that refuses writes.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                          errno.EFBIG})


def write_failure(error: BaseException) -> Optional[str]:
  """The OS's reason when `error` is a write the file system refused, else None.

  The OS's reason ('No space left on device', ...) when `error` (or one it was raised
  from) is a write the file system refused, else None. TensorStore reports these as a
  ValueError carrying os_error_code='N'."""
  for link in _chain(error):
    if isinstance(link, OSError) and link.errno in WRITE_ERRNOS:
      return os.strerror(link.errno)
    code = re.search(r"os_error_code='?(\d+)", str(link))
    if code and int(code.group(1)) in WRITE_ERRNOS:
      return os.strerror(int(code.group(1)))
  return None


@contextlib.contextmanager
def _writing(manager):
  try:
    yield
  except Exception as error:  # Orbax re-raises a background thread's error as it was
    reason = write_failure(error)
    if reason is None:
      raise
    raise CheckpointWriteError(f'cannot write a checkpoint in {manager.directory}: '
                               f'{reason}') from None


def restore(manager: ocp.CheckpointManager, abstract_state: Any,
            step: Optional[int] = None) -> Any:
  """The state saved at `step`, restored into the layout of `abstract_state`.

  The state saved at `step` (default: the latest complete checkpoint), laid out as
  `abstract_state` says: a pytree of jax.ShapeDtypeStruct with shardings, e.g.
  `jax.eval_shape` of the state's constructor with the target shardings attached. The
  checkpoint may come from any number of devices or processes. CheckpointError (one line
  naming the step directory) when it lacks an array, holds others, has other shapes, or
  cannot be read; the arrays are checked and read (`verify_arrays`) before Orbax restores
  them."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no complete checkpoint in {manager.directory}')
  directory = pathlib.Path(manager.directory) / str(step)
  stored = stored_arrays(directory)
  check_fits(directory, stored, abstract_state)
  verify_arrays(directory)
  return _reading(directory, lambda: manager.restore(
      step, args=ocp.args.StandardRestore(abstract_state)))


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any) -> tuple[int, Any]:
  """The newest checkpoint that restores, as (step, state); damaged steps are set aside.

  (step, state) of the newest checkpoint that `restore` can restore into
  `abstract_state`, trying the steps newest first; (0, None) when there are none. A step
  that fails is skipped with a warning naming it and why, and once an older one restores
  it is renamed `<step>.unrestorable` (by process 0) so that training can save that step
  again. CheckpointError naming each step's problem when none restores."""
  problems = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state = restore(manager, abstract_state, step)
    except CheckpointError as error:
      logging.warning('skipping the checkpoint of step %d: %s', step, error)
      problems.append((step, str(error)))
      continue
    if problems:
      _set_aside(manager, [skipped for skipped, _ in problems])
    return step, state
  if problems:
    raise CheckpointError(f'no checkpoint in {manager.directory} can be restored: ' +
                          '; '.join(problem for _, problem in problems))
  return 0, None


def _set_aside(manager: ocp.CheckpointManager, steps: Sequence[int]) -> None:
  """Renames the given step directories to `<step>.unrestorable`; the manager reloads."""
  directory = pathlib.Path(manager.directory)
  if jax.process_index() == 0:
    for step in steps:
      target = directory / f'{step}{UNRESTORABLE}'
      suffix = 1
      while target.exists():
        target, suffix = directory / f'{step}{UNRESTORABLE}{suffix}', suffix + 1
      (directory / str(step)).rename(target)
      logging.warning('set aside the unrestorable checkpoint of step %d as %s', step, target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices('zfjax checkpoints set aside')
  manager.reload()


def abstract(tree: Any, sharding: Optional[jax.sharding.Sharding] = None) -> Any:
  """jax.ShapeDtypeStruct leaves for a pytree, with a sharding.

  jax.ShapeDtypeStruct leaves for a pytree of arrays (or of ShapeDtypeStructs), each
  with `sharding` (default: the leaf's own)."""
  def leaf(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype,
                                sharding=sharding or getattr(x, 'sharding', None))
  return jax.tree.map(leaf, tree)


# ---------------------------------------------------------------------------- integrity


def leaf_name(path: Sequence[Any]) -> str:
  """The name Orbax stores an array under, from its pytree key path.

  'params/conv1/kernel': a pytree key path (dict keys, attributes, indices) as the
  names Orbax stores arrays under, joined by '/'."""
  parts = []
  for key in path:
    for attribute in ('key', 'name', 'idx'):
      if hasattr(key, attribute):
        parts.append(str(getattr(key, attribute)))
        break
    else:
      parts.append(str(key))
  return '/'.join(parts)


def shapes_of(tree: Any) -> dict[str, tuple[int, ...]]:
  """{leaf name: shape} of a pytree of arrays, ShapeDtypeStructs or Orbax metadata."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {leaf_name(path): tuple(getattr(leaf, 'shape', ())) for path, leaf in leaves}


def stored_arrays(directory: PathLike) -> Any:
  """The array metadata a checkpoint directory lists, without reading any array.

  The tree of array metadata (shape, dtype) that a checkpoint directory lists, without
  reading any array; CheckpointError when it has none or it cannot be read."""
  directory = pathlib.Path(directory)
  item = directory / DEFAULT_ITEM
  if not item.is_dir():
    raise CheckpointError(f'checkpoint {directory} is incomplete: it has no {DEFAULT_ITEM}/ '
                          'directory (its arrays)')
  if not (item / '_METADATA').is_file():
    raise CheckpointError(f'checkpoint {directory} is incomplete: it has no '
                          f'{DEFAULT_ITEM}/_METADATA (its list of arrays)')
  _check_store(directory, _read_json(item / '_METADATA', directory))
  handler = ocp.PyTreeCheckpointHandler()
  try:
    tree = handler.metadata(item).tree
  except Exception as error:  # pylint: disable=broad-except  (whatever a damaged file raises)
    raise CheckpointError(f'checkpoint {directory} is damaged: its array metadata cannot be '
                          f'read ({_reason(error)})') from None
  finally:
    handler.close()
  if not isinstance(tree, dict):
    raise CheckpointError(f'checkpoint {directory} is damaged: its array metadata lists '
                          f'{type(tree).__name__}, not a tree of arrays')
  return tree


def _ocdbt_names(layout: Any, prefix: str = '') -> Optional[list]:
  """The array names an OCDBT checkpoint's _METADATA lists, or None.

  The Orbax names ('params.conv1.kernel') of the arrays that an OCDBT/zarr v2
  checkpoint's _METADATA lists, those starting with `prefix`; None for another layout
  (or a _METADATA this code does not know), which is then left to Orbax alone."""
  if not (isinstance(layout, dict) and layout.get('use_ocdbt') and not layout.get('use_zarr3')
          and isinstance(layout.get('tree_metadata'), dict)):
    return None
  names = []
  for entry in layout['tree_metadata'].values():
    try:
      name = '.'.join(str(key['key']) for key in entry['key_metadata'])
      value = entry['value_metadata']
      is_array = (value.get('value_type') in ('jax.Array', 'np.ndarray')
                  and not value.get('skip_deserialize'))
    except (AttributeError, KeyError, TypeError):
      return None
    if is_array and name.startswith(prefix):
      names.append(name)
  return names


def _ocdbt_spec(directory: pathlib.Path) -> dict:
  return {'driver': 'ocdbt', 'base': {'driver': 'file', 'path': f'{directory / DEFAULT_ITEM}/'}}


def _check_store(directory: pathlib.Path, layout: Any) -> None:
  """Checks that the OCDBT store holds a readable header for every listed array.

  CheckpointError unless the OCDBT store holds a readable zarr header for every array
  that _METADATA lists, read one at a time: a failure inside Orbax's parallel reads would
  leave the others failing in the background, printing tracebacks."""
  import tensorstore as ts  # pylint: disable=import-outside-toplevel  (Orbax's own store)
  names = _ocdbt_names(layout)
  if names is None:
    return
  missing = []
  try:
    store = ts.KvStore.open(_ocdbt_spec(directory)).result()
    for name in names:
      header = store.read(f'{name}/.zarray').result()
      if header.state != 'value':
        missing.append(name)
      else:
        json.loads(bytes(header.value))
  except Exception as error:  # pylint: disable=broad-except  (TensorStore's errors)
    raise CheckpointError(f'checkpoint {directory} is damaged: its array store '
                          f'({DEFAULT_ITEM}/manifest.ocdbt, {DEFAULT_ITEM}/d/) cannot be read '
                          f'({_reason(error)})') from None
  if missing:
    lacks = (f'all {len(names)} arrays' if len(missing) == len(names) > 1
             else _some([name.replace('.', '/') for name in missing]))
    raise CheckpointError(f'checkpoint {directory} is damaged: its array store '
                          f'({DEFAULT_ITEM}/manifest.ocdbt, {DEFAULT_ITEM}/d/) lacks {lacks}')


def check_fits(directory: PathLike, stored: Any, wanted: Any,
               what: str = 'the model') -> None:
  """Checks that a checkpoint holds exactly the wanted arrays, of the same shapes.

  CheckpointError unless the stored tree (`stored_arrays`) has exactly the arrays of
  `wanted` (arrays or ShapeDtypeStructs), of the same shapes; the message says what the
  checkpoint does not fit (`what`) and names the first array that differs, e.g.
  'params/conv1/kernel has shape (7, 7, 3, 96), the model expects (3, 3, 3, 32)'."""
  have, want = shapes_of(stored), shapes_of(wanted)
  missing = [name for name in want if name not in have]
  extra = [name for name in have if name not in want]
  problem = None
  if missing:
    problem = f'it has no {_some(missing)}'
  elif extra:
    problem = f'it holds {_some(extra)}, which the model lacks'
  else:
    for name, shape in want.items():
      if have[name] != shape:
        problem = f'{name} has shape {have[name]}, the model expects {shape}'
        break
  if problem:
    raise CheckpointError(f'checkpoint {directory} does not fit {what}: {problem}')


def verify_arrays(directory: PathLike, prefix: str = '') -> None:
  """Reads every array under `prefix` once, naming the first that fails.

  Reads, one at a time, every array of a checkpoint whose Orbax name
  ('params.conv1.kernel') starts with `prefix`, straight from its OCDBT/zarr store, and
  raises CheckpointError naming the first that cannot be read. Orbax's restore, on a
  damaged array, leaves its other reads running in the background, where they fail later
  and print tracebacks; reading first keeps a damaged checkpoint to one clean error.
  Costs one decode of the arrays (their files are then in the page cache for the
  restore) and memory for the largest. Checkpoints in another layout (not OCDBT with
  zarr v2) are left to Orbax."""
  import tensorstore as ts  # pylint: disable=import-outside-toplevel  (Orbax's own store)
  directory = pathlib.Path(directory)
  names = _ocdbt_names(_read_json(directory / DEFAULT_ITEM / '_METADATA', directory), prefix)
  context = ts.Context()  # one OCDBT cache for all the arrays
  failed = {}
  for name in names or ():
    spec = {'driver': 'zarr', 'kvstore': {**_ocdbt_spec(directory), 'path': f'{name}/'}}
    try:
      ts.open(spec, open=True, read=True, context=context).result().read().result()
    except Exception as error:  # pylint: disable=broad-except  (TensorStore's errors)
      failed[name] = error
  if failed:
    name, error = next(iter(failed.items()))
    more = f' (and {len(failed) - 1} more arrays)' if len(failed) > 1 else ''
    raise CheckpointError(f'checkpoint {directory} is damaged: {name.replace(".", "/")}'
                          f'{more} cannot be read ({_reason(error)}); a file under '
                          f'{DEFAULT_ITEM}/ was deleted, truncated or changed')


def _some(names: Sequence[str], count: int = 3) -> str:
  shown = ', '.join(names[:count])
  return shown + (f' (and {len(names) - count} more)' if len(names) > count else '')


def _reading(directory: pathlib.Path, read):
  """read(), with any failure to read the arrays as a CheckpointError naming the array."""
  try:
    return read()
  except Exception as error:  # pylint: disable=broad-except  (TensorStore raises Exception)
    text = ' '.join(str(e) for e in _chain(error))
    found = (re.search(r"'path': '([\w.\-]+)/'", text)
             or re.search(r'Error reading "([\w.\-]+)/', text))
    array = f'{found.group(1).replace(".", "/")} ' if found else 'its arrays '
    raise CheckpointError(f'checkpoint {directory} is damaged: reading {array}failed '
                          f'({_reason(error)}); a file under {DEFAULT_ITEM}/ was deleted, '
                          'truncated or changed') from None


def _chain(error: BaseException) -> list:
  """An exception and those it was raised from, outermost first."""
  chain = []
  while error is not None and error not in chain:
    chain.append(error)
    error = error.__cause__ or error.__context__
  return chain


def _reason(error: BaseException) -> str:
  """The innermost cause's first line, shortened: after its last ': ', at most 160 characters."""
  inner = _chain(error)[-1]
  lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
  reason = lines[0].split(' [tensorstore_spec')[0] if lines else type(inner).__name__
  reason = reason.rsplit('": ', 1)[-1]
  return reason if len(reason) <= 160 else reason[:157] + '...'


# ----------------------------------------------------------------------------- analyses


def find_checkpoint(path: PathLike, step: Union[int, str] = 'latest') -> pathlib.Path:
  """The directory of one checkpoint.

  `path`: a workdir (holding checkpoints/), a checkpoints directory, or a step directory
  itself. `step`: an int, 'latest', or 'best' (lowest validation top-1 error among
  checkpoints saved with metrics)."""
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
  """Whether `path` is one checkpoint; CheckpointError for one that lost its metadata."""
  if (path / '_CHECKPOINT_METADATA').is_file():
    return True
  if (path / DEFAULT_ITEM).is_dir():
    raise CheckpointError(f'checkpoint {path} is incomplete: it has no _CHECKPOINT_METADATA '
                          'file')
  return False


def restore_params(path: PathLike, step: Union[int, str] = 'latest', *,
                   sharding: Optional[jax.sharding.Sharding] = None
                   ) -> tuple[Optional[ml_collections.ConfigDict], Any]:
  """(config, params) of a trained model, for the analyses.

  `path` is a workdir, its checkpoints/ directory, or one step directory; `step` picks
  among several ('latest', 'best' or a step number). Only the params are read (not the
  optimizer state). They land on `sharding` (default: this process's first device).
  `config` is the ConfigDict that trained them (from the checkpoint's metadata, else the
  workdir's config.json), or None if neither exists. Rebuild the model with
  `zfjax.models.from_config(config, num_classes)`, or infer the class count from
  params['fc8']['bias'].

  CheckpointError (one line naming the directory) when the checkpoint is damaged, has no
  params, or its params do not fit the model its config describes.
  """
  directory = find_checkpoint(path, step)
  item = directory / DEFAULT_ITEM
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  tree = stored_arrays(directory)
  if not isinstance(tree.get('params'), dict):
    raise CheckpointError(f'checkpoint {directory} has no params (it holds {sorted(tree)})')
  config = _load_config(directory)
  expected = _expected_params(config, tree['params'])
  if expected is not None:
    check_fits(directory, {'params': tree['params']}, {'params': expected},
               f'the model of its config ({config.model})')
  verify_arrays(directory, 'params.')
  target = {'params': abstract(tree['params'], sharding)}
  handler = ocp.PyTreeCheckpointHandler()
  try:
    restored = _reading(directory, lambda: handler.restore(item, args=ocp.args.PyTreeRestore(
        target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True)))
  finally:
    handler.close()
  return config, restored['params']


def _expected_params(config: Optional[ml_collections.ConfigDict],
                     stored: dict) -> Optional[dict]:
  """The param shapes of the model `config` describes, or None.

  {layer: {'kernel', 'bias'} shapes} of the model `config` describes, with the class
  count of the stored last layer; None when there is no config or it builds no model
  here (then nothing is checked)."""
  if config is None:
    return None
  try:
    last = models.spec_from_config(config, 1)[-1].name
    num_classes = int(shapes_of(stored).get(f'{last}/bias', (1,))[0])
    spec = models.spec_from_config(config, num_classes)
    size = int(config.image_size)
    return param_shapes(spec, (size, size, 3))
  except (AttributeError, KeyError, TypeError, ValueError, IndexError):
    return None


def param_shapes(spec, input_shape: Sequence[int]) -> dict:
  """{layer: {'kernel', 'bias'}} as jax.ShapeDtypeStruct.

  The params of a spec's ConvNet on inputs of `input_shape` (H, W, C), from jax.eval_shape
  of its init (nothing is computed or compiled)."""
  images = jax.ShapeDtypeStruct((1, *input_shape), 'float32')
  return jax.eval_shape(models.ConvNet(spec).init, jax.random.key(0), images)['params']


def _load_config(directory: pathlib.Path) -> Optional[ml_collections.ConfigDict]:
  """The config stored with a checkpoint, else the workdir's config.json, else None."""
  metadata_file = directory / '_CHECKPOINT_METADATA'
  metadata = _read_json(metadata_file, directory)
  custom = (metadata.get('custom_metadata') if isinstance(metadata, dict) else None) or {}
  config = custom.get('config')
  workdir_config = directory.parent.parent / 'config.json'
  if config is None and workdir_config.is_file():
    config = _read_json(workdir_config, directory)
  if config is not None and not isinstance(config, dict):
    raise CheckpointError(f'checkpoint {directory}: its config is {type(config).__name__}, '
                          'not a JSON object')
  return None if config is None else configs.from_dict(config)


def _read_json(path: pathlib.Path, directory: pathlib.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, ValueError) as error:
    raise CheckpointError(f'checkpoint {directory} is damaged: {path.name} is not readable '
                          f'JSON ({error})') from None
