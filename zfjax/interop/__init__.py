"""PyTorch state dicts in and out: published ZFNet/AlexNet weights as zfjax models.

    spec, variables = interop.from_torch(weight_files.load_weights(path), 'zfnet')
    logits = models.ConvNet(spec).apply(variables, images)      # NHWC, the source's input
    state_dict = interop.to_torch(variables, spec, 'zfjax')      # numpy, torch layouts

    python -m zfjax.interop import zfnet.pth --arch zfnet --out /tmp/zfnet_torch
    python -m zfjax.interop export /tmp/zfnet_torch --arch zfnet --out /tmp/zfnet.pth

Layouts (`arch`): pytorchcv's 'zfnet' and 'zfnetb', torchvision's 'torchvision_alexnet',
and 'zfjax' (our own export, any spec). Conversions are exact both ways (float32 bit for
bit). Imported torchvision and pytorchcv weights take ImageNet-normalized inputs
(`input_normalization='imagenet'` in their config). Files are read by
`zfjax.weight_files`, which never unpickles arbitrary objects. The command line is
`zfjax.cli.interop`. docs/interop.md gives the layouts, the conversions and the files.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from zfjax import architecture
from zfjax import checkpoints
from zfjax import configs
from zfjax import extras
from zfjax import loading
from zfjax import models
from zfjax import preprocess
from zfjax import weight_files
from zfjax.architecture import Conv, Dense
from zfjax.configs import zfnet as zfnet_config

PathLike = Union[str, os.PathLike]
ARCHS = ('zfnet', 'zfnetb', 'torchvision_alexnet', 'zfjax')
ZFNETB_FEATURES = (96, 256, 512, 1024, 512)

_PYTORCHCV = {
    'conv1': 'features.stage1.unit1.conv', 'conv2': 'features.stage2.unit1.conv',
    'conv3': 'features.stage3.unit1.conv', 'conv4': 'features.stage3.unit2.conv',
    'conv5': 'features.stage3.unit3.conv',
    'fc6': 'output.fc1.fc', 'fc7': 'output.fc2.fc', 'fc8': 'output.fc3'}
_TORCHVISION = {
    'conv1': 'features.0', 'conv2': 'features.3', 'conv3': 'features.6',
    'conv4': 'features.8', 'conv5': 'features.10',
    'fc6': 'classifier.1', 'fc7': 'classifier.4', 'fc8': 'classifier.6'}
MODULE_NAMES = {'zfnet': _PYTORCHCV, 'zfnetb': _PYTORCHCV, 'torchvision_alexnet': _TORCHVISION}

SOURCE_INPUT = ('RGB scaled to [0, 1], minus ImageNet mean (0.485, 0.456, 0.406), divided by '
                'std (0.229, 0.224, 0.225); shorter side 256, center crop 224')


# The weights files' readers, as interop has always offered them (zfjax.weight_files).
load_weights = weight_files.load_weights
is_safetensors = weight_files.is_safetensors


class InteropError(ValueError):
  """A state dict, layout or checkpoint that cannot be converted; the message says why."""


# ------------------------------------------------------------------------------ layouts


def check_arch(arch: str) -> str:
  if arch not in ARCHS:
    raise InteropError(f'unknown arch {arch!r}; choose one of {list(ARCHS)}')
  return arch


def model_fields(arch: str) -> dict:
  """The config fields (models.spec_from_config) that build `arch`'s spec."""
  check_arch(arch)
  if arch in ('zfnet', 'zfnetb'):
    widths = ZFNETB_FEATURES if arch == 'zfnetb' else ()
    return {'model': 'pytorchcv_zfnet', 'conv_features': widths, 'norm_before_pool': True}
  if arch == 'torchvision_alexnet':
    return {'model': 'torchvision_alexnet', 'conv_features': (), 'norm_before_pool': False}
  return {'model': 'zfnet', 'conv_features': (), 'norm_before_pool': False}


def spec_for(arch: str, num_classes: int = 1000) -> architecture.Spec:
  """The spec whose forward pass is `arch`'s.

  'zfjax' gives the paper's ZFNet; pass your own spec to from_torch/to_torch for other
  zfjax models.
  """
  fields = model_fields(arch)
  kwargs = {'conv_features': fields['conv_features']} if fields['conv_features'] else {}
  return architecture.get(fields['model'], num_classes, **kwargs)


def module_names(spec: architecture.Spec, arch: str) -> dict[str, str]:
  """{our conv/dense layer name: the torch module name holding its weight and bias}."""
  check_arch(arch)
  ours = [r.name for r in spec if isinstance(r, (Conv, Dense))]
  if arch == 'zfjax':
    return {name: name for name in ours}
  table = MODULE_NAMES[arch]
  unknown = [name for name in ours if name not in table]
  if unknown:
    raise InteropError(f'arch {arch!r} has no parameters for layer(s) {unknown}; '
                     f'its layers are {list(table)}')
  return {name: table[name] for name in ours}


def torch_shapes(spec: architecture.Spec, arch: str,
                 input_shape: Sequence[int] = architecture.INPUT_SHAPE
                 ) -> dict[str, tuple[int, ...]]:
  """{state dict key: shape} that `arch`'s model of this spec has."""
  names = module_names(spec, arch)
  out, previous = {}, tuple(input_shape)
  for record, shape in zip(spec, architecture.shapes(spec, input_shape).values()):
    if isinstance(record, Conv):
      out[f'{names[record.name]}.weight'] = (record.features, previous[-1], record.kernel,
                                             record.kernel)
    elif isinstance(record, Dense):
      out[f'{names[record.name]}.weight'] = (record.features, int(np.prod(previous)))
    if isinstance(record, (Conv, Dense)):
      out[f'{names[record.name]}.bias'] = (record.features,)
    previous = shape
  return out


def _dense_inputs(spec: architecture.Spec, input_shape) -> dict[str, tuple[int, ...]]:
  """{dense layer name: the shape of its input}: (H, W, C) for the first, (F,) after."""
  shapes = list(architecture.shapes(spec, input_shape).values())
  return {r.name: (tuple(input_shape) if i == 0 else shapes[i - 1])
          for i, r in enumerate(spec) if isinstance(r, Dense)}


# ------------------------------------------------------------------ array conversions


def conv_from_torch(weight: np.ndarray) -> np.ndarray:
  """OIHW -> HWIO."""
  return np.ascontiguousarray(np.transpose(weight, (2, 3, 1, 0)))


def conv_to_torch(kernel: np.ndarray) -> np.ndarray:
  """HWIO -> OIHW."""
  return np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)))


def dense_from_torch(weight: np.ndarray, input_shape: Sequence[int] = ()) -> np.ndarray:
  """(out, in) -> (in, out).

  With the (H, W, C) shape of a map input, the rows go from torch's CHW flattening to our
  HWC flattening.
  """
  kernel = weight.T
  if len(input_shape) == 3:
    h, w, c = input_shape
    kernel = kernel.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(h * w * c, -1)
  return np.ascontiguousarray(kernel)


def dense_to_torch(kernel: np.ndarray, input_shape: Sequence[int] = ()) -> np.ndarray:
  """(in, out) -> (out, in), rows from HWC to CHW order for an (H, W, C) map input."""
  if len(input_shape) == 3:
    h, w, c = input_shape
    kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
  return np.ascontiguousarray(kernel.T)


def _numpy(value, key: str) -> np.ndarray:
  """A new float32 numpy array from a torch tensor or array-like.

  Bit-exact for float32; never a view of the source.
  """
  if hasattr(value, 'detach'):  # a torch tensor
    value = value.detach().cpu()
    if not value.dtype.is_floating_point:
      raise InteropError(f'{key}: expected a floating-point tensor, got {value.dtype}')
    value = value.float().numpy()
  array = np.asarray(value)
  if not np.issubdtype(array.dtype, np.floating):
    raise InteropError(f'{key}: expected floating-point values, got {array.dtype}')
  return np.array(array, dtype=np.float32)


# ------------------------------------------------------------------------ state dicts


def check_state_dict(state_dict: Mapping, spec: architecture.Spec, arch: str,
                     input_shape: Sequence[int] = architecture.INPUT_SHAPE) -> None:
  """Checks a state dict against `arch`'s layout of `spec`.

  InteropError naming the missing or unexpected keys or the first key of the wrong
  shape, with the layouts the state dict would fit instead.
  """
  expected = torch_shapes(spec, arch, input_shape)
  missing = [k for k in expected if k not in state_dict]
  unexpected = [k for k in state_dict if k not in expected]
  problem = None
  if missing or unexpected:
    problem = (f'state dict does not match arch {arch!r}: missing keys {missing}, '
               f'unexpected keys {unexpected}')
  else:
    for key, shape in expected.items():
      actual = tuple(np.shape(state_dict[key]))
      if actual != shape:
        problem = f'{key}: expected shape {shape} for arch {arch!r}, got {actual}'
        break
  if problem:
    fits = [a for a in ARCHS if a != arch and _fits(state_dict, a)]
    hint = f' (it fits --arch {" or ".join(fits)})' if fits else ''
    raise InteropError(problem + hint)


def _fits(state_dict: Mapping, arch: str) -> bool:
  try:
    spec = spec_for(arch, _num_classes(state_dict, arch))
    expected = torch_shapes(spec, arch)
  except (KeyError, ValueError):
    return False
  return (set(expected) == set(state_dict)
          and all(tuple(np.shape(state_dict[k])) == s for k, s in expected.items()))


def _num_classes(state_dict: Mapping, arch: str) -> int:
  """The width of the last layer in a state dict of `arch`'s layout."""
  key = f'{module_names(spec_for(arch, 1), arch)["fc8"]}.bias'
  if key not in state_dict:
    raise KeyError(key)
  return int(np.shape(state_dict[key])[0])


def from_torch(state_dict: Mapping, arch: str, spec: Optional[architecture.Spec] = None,
               input_shape: Sequence[int] = architecture.INPUT_SHAPE
               ) -> tuple[architecture.Spec, dict]:
  """(spec, variables) of a PyTorch state dict (tensors or arrays) in `arch`'s layout.

  `spec` defaults to `spec_for(arch, classes of the last layer)`; give it for zfjax
  exports of other models. variables = {'params': {'conv1': {'kernel' HWIO, 'bias'},
  ..., 'fc6': {'kernel' (in, out), 'bias'}, ...}} as float32 numpy arrays.
  """
  check_arch(arch)
  state_dict = weight_files.unwrap(state_dict)
  if spec is None:
    try:
      spec = spec_for(arch, _num_classes(state_dict, arch))
    except KeyError as e:
      check_state_dict(state_dict, spec_for(arch), arch, input_shape)  # names the keys
      raise InteropError(f'state dict has no {e.args[0]!r}') from None
  check_state_dict(state_dict, spec, arch, input_shape)
  names, dense_inputs = module_names(spec, arch), _dense_inputs(spec, input_shape)
  params = {}
  for record in spec:
    if not isinstance(record, (Conv, Dense)):
      continue
    prefix = names[record.name]
    weight = _numpy(state_dict[f'{prefix}.weight'], f'{prefix}.weight')
    kernel = (conv_from_torch(weight) if isinstance(record, Conv)
              else dense_from_torch(weight, dense_inputs[record.name]))
    params[record.name] = {'kernel': kernel,
                           'bias': _numpy(state_dict[f'{prefix}.bias'], f'{prefix}.bias')}
  return spec, {'params': params}


def to_torch(variables: Mapping, spec: architecture.Spec, arch: str = 'zfjax',
             tensors: bool = False,
             input_shape: Sequence[int] = architecture.INPUT_SHAPE) -> dict:
  """The state dict of `arch`'s layout for zfjax variables.

  `variables` is {'params': ...} or the params themselves. Values are float32 numpy
  arrays, or torch tensors with `tensors=True`.
  """
  params = variables.get('params', variables)
  names, dense_inputs = module_names(spec, arch), _dense_inputs(spec, input_shape)
  expected = torch_shapes(spec, arch, input_shape)
  out = {}
  for record in spec:
    if not isinstance(record, (Conv, Dense)):
      continue
    if record.name not in params:
      raise InteropError(f'params have no layer {record.name!r}; they have {sorted(params)}')
    prefix = names[record.name]
    torch_weight = expected[f'{prefix}.weight']
    ours = ((*torch_weight[2:], torch_weight[1], torch_weight[0]) if isinstance(record, Conv)
            else torch_weight[::-1])
    kernel = _numpy(params[record.name]['kernel'], f"params['{record.name}']['kernel']")
    bias = _numpy(params[record.name]['bias'], f"params['{record.name}']['bias']")
    for what, value, shape in (('kernel', kernel, ours), ('bias', bias, (record.features,))):
      if value.shape != shape:
        raise InteropError(f"params['{record.name}']['{what}']: expected shape {shape}, "
                         f'got {value.shape}')
    out[f'{prefix}.weight'] = (conv_to_torch(kernel) if isinstance(record, Conv)
                               else dense_to_torch(kernel, dense_inputs[record.name]))
    out[f'{prefix}.bias'] = np.ascontiguousarray(bias)
  if tensors:
    torch = extras.require('torch', 'interop', 'torch tensors')
    out = {k: torch.from_numpy(v if v.flags.writeable else v.copy()) for k, v in out.items()}
  return out


def fold_input_scale(params: Mapping, spec: architecture.Spec,
                     std: Sequence[float] = preprocess.IMAGENET_STD,
                     pixel_scale: float = 255.0) -> dict:
  """Params for inputs `pixel_scale * std` times larger per channel.

  conv1's kernel is divided by that. A source trained on (x / 255 - mean) / std then sees
  the paper's x - mean image up to the difference between the mean image and 255 * mean
  (exact where that is zero). Returns new params; the others are shared.
  """
  first = next(r.name for r in spec if isinstance(r, Conv))
  scale = (pixel_scale * np.asarray(std, np.float32))[None, None, :, None]
  layer = dict(params[first], kernel=np.asarray(params[first]['kernel']) / scale)
  return {**params, first: layer}


# ---------------------------------------------------------------------------- configs


def imported_config(arch: str, source: str = '',
                    base: Optional[Mapping] = None,
                    input_transform: str = SOURCE_INPUT,
                    normalization: Optional[str] = None) -> ml_collections.ConfigDict:
  """A config that rebuilds an imported model with models.from_config.

  `base` (a zfjax export's own config) or configs/zfnet.py's fields for ImageNet 2012,
  with the model fields of `arch`, and notes of where it came from (`imported_from`) and
  which input it expects (`input_transform`, in words, and `input_normalization`:
  `normalization`, else 'imagenet' for torchvision's and pytorchcv's layouts; zfjax's
  own exports keep their config's).
  """
  values = (configs.from_dict(base).to_dict() if base is not None
            else _imagenet_fields())
  if base is None:
    values.update(model_fields(arch), fc_features=(), remove_layers=(), dropout=0.5,
                  init='paper', dtype='float32')
    if arch == 'torchvision_alexnet':
      values['filter_rms_radius'] = 0.0
  values.update(imported_from=f'{arch}:{source}' if source else arch,
                input_transform=input_transform)
  if normalization is None and base is None and arch != 'zfjax':
    normalization = preprocess.IMAGENET  # torchvision's and pytorchcv's weights
  if normalization is not None:
    values['input_normalization'] = normalization
  config = ml_collections.ConfigDict(values)
  config.lock()
  return config


def _imagenet_fields() -> dict:
  """configs/zfnet.py's fields (ImageNet 2012 at 224x224), keeping no Fig. 4 epochs."""
  values = zfnet_config.get_config().to_dict()
  values.update(keep_epochs=())
  return values


# ------------------------------------------------------------------------ checkpoints


def write_checkpoint(out: PathLike, params: Mapping,
                     config: ml_collections.ConfigDict) -> pathlib.Path:
  """Writes params as step 0 of a workdir `out` (out/checkpoints/0, out/config.json).

  The checkpoint holds {'step': 0, 'params': params}, the config in the step's metadata.
  `out` must be new or empty. Returns the step directory.
  """
  out = pathlib.Path(out).absolute()
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise InteropError(f'--out {out} exists and is not an empty directory')
  out.mkdir(parents=True, exist_ok=True)
  (out / 'config.json').write_text(config.to_json(indent=2) + '\n')
  state = {'step': jnp.zeros((), jnp.int32), 'params': jax.tree.map(jnp.asarray, params)}
  manager = checkpoints.create_manager(out / checkpoints.CHECKPOINTS, keep=1,
                                       async_save=False)
  try:
    checkpoints.save(manager, 0, state, config=config)
    checkpoints.wait(manager)
  finally:
    manager.close()
  return out / checkpoints.CHECKPOINTS / '0'


# ------------------------------------------------------------------------ import, export


def import_weights(source: PathLike, arch: str, out: PathLike,
                   config_path: Optional[PathLike] = None,
                   fold_normalization: bool = False) -> pathlib.Path:
  """A weights file of `arch`'s layout -> a workdir `out` with an Orbax checkpoint.

  SOURCE is a .pth or .safetensors (`weight_files.load_weights`). `out` gets
  checkpoints/0 (params only: `loading.load` and the figures read it, training cannot
  resume from it) and config.json (`imported_config`). For 'zfjax' the config comes from
  `config_path`, else SOURCE.json beside the file (written by export), else the paper's
  ZFNet is assumed. `fold_normalization` scales conv1 for the paper's 0-255
  mean-subtracted inputs (`fold_input_scale`). Returns the step directory.
  """
  check_arch(arch)
  state_dict = weight_files.load_weights(source)
  base, spec, input_shape = None, None, architecture.INPUT_SHAPE
  if arch == 'zfjax':
    config_path = pathlib.Path(config_path or pathlib.Path(source).with_suffix('.json'))
    if config_path.is_file():
      base, spec, input_shape = _exported_model(config_path, state_dict)
  elif config_path:
    raise InteropError('--config is only for --arch zfjax')
  spec, variables = from_torch(state_dict, arch, spec, input_shape)
  params = variables['params']
  transform = SOURCE_INPUT if base is None else base.get(
      'input_transform', f'its config\'s pipeline ({base.get("dataset")}, mean image subtracted)')
  if fold_normalization:
    params = fold_input_scale(params, spec)
    transform = ('0-255 RGB minus the mean image (conv1 scaled by 1 / (255 std) from the '
                 f'source, which expects: {transform})')
  normalization = preprocess.PAPER if fold_normalization else None
  config = imported_config(arch, str(source), base, transform, normalization)
  return write_checkpoint(out, params, config)


def _exported_model(config_path: pathlib.Path, state_dict: Mapping) -> tuple:
  """(config values, spec, input shape) of a zfjax export from its config JSON."""
  base = json.loads(config_path.read_text())
  if not isinstance(base, dict) or 'model' not in base:
    raise InteropError(f'{config_path} is not a zfjax config (no "model" field)')
  config = configs.from_dict(base)
  last = f'{models.spec_from_config(config, 1)[-1].name}.bias'
  if last not in state_dict:
    raise InteropError(f"state dict has no {last!r} (the last layer of {config_path}'s "
                       'model)')
  spec = models.spec_from_config(config, int(np.shape(state_dict[last])[0]))
  return base, spec, _input_shape(config)


def _input_shape(config) -> tuple[int, int, int]:
  """The model input of a config: image_size square RGB (fc6's input depends on it)."""
  size = int(config.get('image_size', architecture.INPUT_SHAPE[0]))
  return (size, size, 3)


def export_checkpoint(checkpoint: PathLike, out: PathLike, step: Union[int, str] = 'latest',
                      arch: str = 'zfjax') -> pathlib.Path:
  """A trained or imported net -> FILE in `arch`'s layout, and its config as FILE.json.

  `checkpoint` is a workdir, checkpoints directory or step directory (`loading.load`).
  FILE.safetensors is written with safetensors (no torch needed), any other name with
  torch.save. 'zfjax' takes any model; another layout only the model it names (a
  checkpoint imported with that --arch, or trained with its model fields), so that the
  source's torch module gives the same outputs; `import --arch zfjax` reads the 'zfjax'
  layout back with its config.
  """
  check_arch(arch)
  if pathlib.Path(out).is_dir():
    raise InteropError(f'--out {out} is a directory; name a FILE.pth or FILE.safetensors')
  net = loading.load(checkpoint, step, mean='imagenet_channels')  # the mean is not exported
  if arch != 'zfjax' and net.spec != spec_for(arch, net.num_classes):
    raise InteropError(f"checkpoint {net.checkpoint} holds model {net.config.model!r}, not "
                       f"arch {arch!r}'s; export it with --arch zfjax")
  state_dict = to_torch(net.params, net.spec, arch, input_shape=_input_shape(net.config))
  out = weight_files.save_weights(state_dict, out)
  out.with_suffix('.json').write_text(net.config.to_json(indent=2) + '\n')
  return out

