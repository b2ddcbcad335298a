r"""PyTorch state dicts in and out: published ZFNet/AlexNet weights as zfjax models.

    spec, variables = interop.from_torch(torch.load(path, weights_only=True), 'zfnet')
    logits = models.ConvNet(spec).apply(variables, images)      # NHWC, the source's input
    state_dict = interop.to_torch(variables, spec, 'zfjax')      # numpy, torch layouts

    python -m zfjax.interop import zfnet.pth --arch zfnet --out /tmp/zfnet_torch
    python visualize.py occlusion --checkpoint /tmp/zfnet_torch --images dog.jpg
    python -m zfjax.interop export /tmp/zfnet/checkpoints --out /tmp/zfnet.pth
    python -m zfjax.interop import zfnet.safetensors --arch zfnet --out /tmp/zfnet_st

Layouts (`arch`), each a map from our layer names to the source's parameter names:

- 'zfnet', 'zfnetb': osmr/imgclsmob's pytorchcv `zfnet` and `zfnetb` (public ImageNet
  weights). Keys features.stage1.unit1.conv.weight (conv1), features.stage2.unit1.conv
  (conv2), features.stage3.unit1/2/3.conv (conv3-5), output.fc1.fc, output.fc2.fc,
  output.fc3 (fc6-8). Both normalize (F.local_response_norm, size 5, torch alpha 1e-4,
  beta 0.75, k 2) right after conv1's and conv2's ReLU, before pooling: no module holds
  it, so it is absent from the state dict. Spec: `architecture.pytorchcv_zfnet` (our
  alpha = torch alpha / size = 2e-5); zfnetb has conv3-5 widths 512/1024/512.
- 'torchvision_alexnet': torchvision's `alexnet`: features.0/3/6/8/10 (conv1-5),
  classifier.1/4/6 (fc6-8). Spec: `architecture.torchvision_alexnet`.
- 'zfjax': our own export, any spec: conv1.weight, conv1.bias, ..., fc8.bias, named after
  our layers, in torch's layouts (see below), so that a torch module with those attribute
  names (tools/torch_zfnet.TorchZFNet for ZFNet) loads it directly.

Conversions, exact both ways (transposes and reshapes only, float32 bit for bit):
conv weight OIHW <-> kernel HWIO; linear weight (out, in) <-> kernel (in, out); the first
fully connected layer (fc6) reads the last map flattened in torch's CHW order, ours in
HWC order, so its input rows are permuted (the map is 6x6 for all these models at 224x224,
AvgPool models included). Inputs are the source's: NCHW images for torch become NHWC for
zfjax, nothing else. pytorchcv and torchvision expect RGB in [0, 1] normalized by
ImageNet's mean and std (`SOURCE_INPUT`); the paper's pipeline (ours) gives 0-255 pixels
minus the mean image, about 1 / (255 std) times larger: the import CLI's
--fold-normalization scales conv1's kernel by that (inexact; see `fold_input_scale`).

Checkpoints: `import` writes a workdir OUT holding OUT/checkpoints/0 (params only, as
{'step', 'params'}; restore_params and visualize.py read it, training cannot resume from
it) and OUT/config.json, whose config rebuilds the model with models.from_config and
notes the source in `imported_from` and `input_transform`. `export` writes the 'zfjax'
layout with torch.save (safetensors for FILE.safetensors) and the checkpoint's config
beside it (FILE.json), which `import --arch zfjax` reads back.

Untrusted files: weights are read with `load_weights`, which never unpickles arbitrary
objects: .pth files go through torch.load(weights_only=True) (a pickle naming anything but
tensors and plain containers is refused with a ValueError naming the file, and nothing in
it runs), and .safetensors files (chosen by suffix or by their header) hold raw arrays
only. Export writes safetensors when --out ends in .safetensors.

torch is optional: it is imported only inside the functions that need it (safetensors
files are read and written without it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys
from typing import Any, Mapping, Optional, Sequence

import ml_collections
import numpy as np

from zfjax import architecture
from zfjax import cli
from zfjax import configs
from zfjax import models
from zfjax import preprocess
from zfjax.architecture import Conv, Dense

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

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SOURCE_INPUT = ('RGB scaled to [0, 1], minus ImageNet mean (0.485, 0.456, 0.406), divided by '
                'std (0.229, 0.224, 0.225); shorter side 256, center crop 224')


# ------------------------------------------------------------------------------ layouts


def check_arch(arch: str) -> str:
  if arch not in ARCHS:
    raise ValueError(f'unknown arch {arch!r}; choose one of {list(ARCHS)}')
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
  """The spec whose forward pass is `arch`'s ('zfjax': the paper's ZFNet; pass your own
  spec to from_torch/to_torch for other zfjax models)."""
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
    raise ValueError(f'arch {arch!r} has no parameters for layer(s) {unknown}; '
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
  """(out, in) -> (in, out). With the (H, W, C) shape of a map input, the rows go from
  torch's CHW flattening to our HWC flattening."""
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
  """A new float32 numpy array from a torch tensor or array-like (bit-exact for float32;
  never a view of the source)."""
  if hasattr(value, 'detach'):  # a torch tensor
    value = value.detach().cpu()
    if not value.dtype.is_floating_point:
      raise ValueError(f'{key}: expected a floating-point tensor, got {value.dtype}')
    value = value.float().numpy()
  array = np.asarray(value)
  if not np.issubdtype(array.dtype, np.floating):
    raise ValueError(f'{key}: expected floating-point values, got {array.dtype}')
  return np.array(array, dtype=np.float32)


# ------------------------------------------------------------------------ state dicts


def unwrap(state_dict: Any) -> dict:
  """The parameter dict of a loaded .pth: itself, or nested under 'state_dict' or
  'model'; a 'module.' prefix on every key (DataParallel) is dropped."""
  for key in ('state_dict', 'model'):
    if isinstance(state_dict, Mapping) and isinstance(state_dict.get(key), Mapping):
      state_dict = state_dict[key]
  if not isinstance(state_dict, Mapping):
    raise ValueError(f'expected a state dict (a mapping of names to tensors), got '
                     f'{type(state_dict).__name__}')
  if state_dict and all(k.startswith('module.') for k in state_dict):
    state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
  return dict(state_dict)


def check_state_dict(state_dict: Mapping, spec: architecture.Spec, arch: str,
                     input_shape: Sequence[int] = architecture.INPUT_SHAPE) -> None:
  """ValueError naming the missing or unexpected keys or the first key of the wrong
  shape, with the layouts the state dict would fit instead."""
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
    raise ValueError(problem + hint)


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
  ..., 'fc6': {'kernel' (in, out), 'bias'}, ...}} as float32 numpy arrays."""
  check_arch(arch)
  state_dict = unwrap(state_dict)
  if spec is None:
    try:
      spec = spec_for(arch, _num_classes(state_dict, arch))
    except KeyError as e:
      check_state_dict(state_dict, spec_for(arch), arch, input_shape)  # names the keys
      raise ValueError(f'state dict has no {e.args[0]!r}') from None
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
  """The state dict of `arch`'s layout for zfjax variables ({'params': ...} or the params
  themselves): float32 numpy arrays, or torch tensors with `tensors=True`."""
  params = variables.get('params', variables)
  names, dense_inputs = module_names(spec, arch), _dense_inputs(spec, input_shape)
  expected = torch_shapes(spec, arch, input_shape)
  out = {}
  for record in spec:
    if not isinstance(record, (Conv, Dense)):
      continue
    if record.name not in params:
      raise ValueError(f'params have no layer {record.name!r}; they have {sorted(params)}')
    prefix = names[record.name]
    torch_weight = expected[f'{prefix}.weight']
    ours = ((*torch_weight[2:], torch_weight[1], torch_weight[0]) if isinstance(record, Conv)
            else torch_weight[::-1])
    kernel = _numpy(params[record.name]['kernel'], f"params['{record.name}']['kernel']")
    bias = _numpy(params[record.name]['bias'], f"params['{record.name}']['bias']")
    for what, value, shape in (('kernel', kernel, ours), ('bias', bias, (record.features,))):
      if value.shape != shape:
        raise ValueError(f"params['{record.name}']['{what}']: expected shape {shape}, "
                         f'got {value.shape}')
    out[f'{prefix}.weight'] = (conv_to_torch(kernel) if isinstance(record, Conv)
                               else dense_to_torch(kernel, dense_inputs[record.name]))
    out[f'{prefix}.bias'] = np.ascontiguousarray(bias)
  if tensors:
    import torch  # pylint: disable=import-outside-toplevel
    out = {k: torch.from_numpy(v if v.flags.writeable else v.copy()) for k, v in out.items()}
  return out


def fold_input_scale(params: Mapping, spec: architecture.Spec,
                     std: Sequence[float] = IMAGENET_STD, pixel_scale: float = 255.0) -> dict:
  """Params for inputs `pixel_scale * std` times larger per channel: conv1's kernel
  divided by that. A source trained on (x / 255 - mean) / std then sees the paper's
  x - mean image up to the difference between the mean image and 255 * mean (exact
  where that is zero). Returns new params; the others are shared."""
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
  """configs/zfnet.py's settings (ImageNet 2012 at 224x224), which zfjax cannot import."""
  return dict(
      dataset='imagenet2012', data_dir=None, train_split='train', eval_split='validation',
      image_size=224, resize_size=256, random_flip=True, mean_image_examples=0,
      shuffle_buffer=16384, num_train_examples=0, num_eval_examples=0,
      batch_size=128, eval_batch_size=128, num_epochs=70, num_train_steps=-1,
      learning_rate=1e-2, momentum=0.9, weight_decay=5e-4, filter_rms_radius=0.1,
      lr_patience=1, lr_decay_factor=10.0, seed=0, log_every_steps=100,
      eval_every_steps=10_000, checkpoint_every_steps=2_000, keep_checkpoints=3,
      keep_epochs=(), ten_crop_eval=True, train_error_eval=True)


# ------------------------------------------------------------------------ checkpoints


def write_checkpoint(out: str | pathlib.Path, params: Mapping,
                     config: ml_collections.ConfigDict) -> pathlib.Path:
  """Writes params as step 0 of a workdir `out` (out/checkpoints/0, out/config.json):
  {'step': 0, 'params': params}, the config in the step's metadata. `out` must be new or
  empty. Returns the step directory."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from zfjax import checkpoints  # pylint: disable=import-outside-toplevel
  out = pathlib.Path(out).absolute()
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise ValueError(f'--out {out} exists and is not an empty directory')
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


SAFETENSORS = '.safetensors'
ACCEPTED = 'only state dicts of tensors (.pth) or .safetensors files are accepted'


def is_safetensors(path: str | pathlib.Path) -> bool:
  """Whether a weights file is in the safetensors format: its suffix is .safetensors, or
  it starts as one does (an 8-byte little-endian header length, then a JSON object)."""
  path = pathlib.Path(path)
  if path.suffix == SAFETENSORS:
    return True
  with open(path, 'rb') as f:
    head = f.read(9)
  return (len(head) == 9 and head[8:9] == b'{'
          and 0 < int.from_bytes(head[:8], 'little') < path.stat().st_size)


def load_weights(path: str | pathlib.Path) -> dict:
  """The state dict of a weights file, unwrapped: a .safetensors file (by suffix or
  content), else a .pth read with torch.load(weights_only=True), which builds only
  tensors, containers and plain values and never calls what a pickle names (so a file
  that tries to run code is refused, and nothing in it runs). ValueError, naming the
  file, for a file that is neither."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'no file {path}')
  return load_safetensors(path) if is_safetensors(path) else load_pth(path)


def load_pth(path: str | pathlib.Path) -> dict:
  """A .pth state dict (torch.load with weights_only=True), unwrapped; ValueError naming
  the file when it holds objects other than tensors or cannot be read."""
  import pickle  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'no file {path}')
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ValueError(f'{path}: reading a .pth needs torch (pip install "zfjax[interop]"), '
                     'or convert it to .safetensors') from None
  try:
    loaded = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as error:
    raise ValueError(f'{path} holds objects other than tensors ({_refusal(error)}; nothing '
                     f'in it was run): {ACCEPTED}') from None
  except (RuntimeError, EOFError, OSError) as error:
    raise ValueError(f'{path} is not a readable PyTorch file (truncated, or not written by '
                     f'torch.save: {_first_line(error)}): {ACCEPTED}') from None
  return unwrap(loaded)


def load_safetensors(path: str | pathlib.Path) -> dict:
  """A .safetensors file as {name: numpy array} (torch tensors for dtypes numpy lacks,
  such as bfloat16), unwrapped; ValueError naming the file when it cannot be read."""
  path = pathlib.Path(path)
  try:
    from safetensors import SafetensorError  # pylint: disable=import-outside-toplevel
    from safetensors import numpy as safetensors_numpy  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ValueError(f'{path}: reading .safetensors needs the safetensors package (pip '
                     'install "zfjax[interop]")') from None
  try:
    try:
      return unwrap(dict(safetensors_numpy.load_file(path)))
    except TypeError as error:  # a dtype numpy does not know (bfloat16): read it with torch
      try:
        from safetensors import torch as torch_format  # pylint: disable=import-outside-toplevel
        return unwrap(dict(torch_format.load_file(path)))
      except ImportError:
        raise ValueError(f'{path} holds tensors of a dtype numpy lacks ({error}); reading it '
                         'needs torch (pip install torch)') from None
  except SafetensorError as error:
    raise ValueError(f'{path} is not a readable .safetensors file (truncated or '
                     f'damaged: {_first_line(error)})') from None


def _refusal(error: Exception) -> str:
  """What torch's weights-only unpickler refused, in a few words."""
  import re  # pylint: disable=import-outside-toplevel
  found = re.search(r'GLOBAL (\S+)', str(error))
  if found:
    return f'it names {found.group(1)}, which only a full unpickler would call'
  found = re.search(r'WeightsUnpickler error: \s*(.+)', str(error))
  return found.group(1).strip() if found else _first_line(error)


def _first_line(error: Exception) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[0] if lines else type(error).__name__


def import_pth(source, arch: str, out, config_path=None,
               fold_normalization: bool = False) -> pathlib.Path:
  """SOURCE (.pth or .safetensors, see `load_weights`) of `arch` -> a workdir `out` with an
  Orbax checkpoint (see module doc).
  For 'zfjax' the config comes from `config_path`, else SOURCE.json beside the file
  (written by export), else the paper's ZFNet is assumed."""
  check_arch(arch)
  state_dict = load_weights(source)
  base, spec, input_shape = None, None, architecture.INPUT_SHAPE
  if arch == 'zfjax':
    config_path = pathlib.Path(config_path or pathlib.Path(source).with_suffix('.json'))
    if config_path.is_file():
      base = json.loads(config_path.read_text())
      if 'model' not in base:
        raise ValueError(f'{config_path} is not a zfjax config (no "model" field)')
      config = configs.from_dict(base)
      last = f'{models.spec_from_config(config, 1)[-1].name}.bias'
      if last not in state_dict:
        raise ValueError(f'state dict has no {last!r} (the last layer of {config_path}\'s '
                         'model)')
      spec = models.spec_from_config(config, int(np.shape(state_dict[last])[0]))
      input_shape = _input_shape(config)
  elif config_path:
    raise ValueError('--config is only for --arch zfjax')
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


def _input_shape(config) -> tuple[int, int, int]:
  """The model input of a config: image_size square RGB (fc6's input depends on it)."""
  size = int(config.get('image_size', architecture.INPUT_SHAPE[0]))
  return (size, size, 3)


def export_checkpoint(checkpoint, out, step='latest') -> pathlib.Path:
  """A checkpoint (workdir, checkpoints directory or step directory) -> FILE in the
  'zfjax' layout and its config as FILE.json: FILE.safetensors with safetensors (no torch
  needed), any other name with torch.save."""
  from zfjax import checkpoints  # pylint: disable=import-outside-toplevel
  config, params = checkpoints.restore_params(checkpoint, step)
  if config is None:
    raise ValueError(f'checkpoint {checkpoint} carries no config: cannot tell its model')
  last = models.spec_from_config(config, 1)[-1].name
  spec = models.spec_from_config(config, int(np.shape(params[last]['bias'])[0]))
  out = pathlib.Path(out)
  writer = _safetensors_writer(out) if out.suffix == SAFETENSORS else _torch_writer(out)
  state_dict = to_torch(params, spec, 'zfjax', tensors=out.suffix != SAFETENSORS,
                        input_shape=_input_shape(config))
  out.parent.mkdir(parents=True, exist_ok=True)
  writer(state_dict, out)
  out.with_suffix('.json').write_text(config.to_json(indent=2) + '\n')
  return out


def _safetensors_writer(out: pathlib.Path):
  try:
    from safetensors import numpy as safetensors_numpy  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ValueError(f'--out {out}: writing .safetensors needs the safetensors package (pip '
                     'install "zfjax[interop]")') from None
  return safetensors_numpy.save_file


def _torch_writer(out: pathlib.Path):
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ValueError(f'--out {out}: writing a .pth needs torch (pip install '
                     '"zfjax[interop]"); or name the file .safetensors') from None
  return torch.save


# -------------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m zfjax.interop', description=__doc__.split(
      '\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest='command', required=True)
  imp = commands.add_parser('import', help='a PyTorch .pth or .safetensors -> an Orbax '
                           'checkpoint workdir')
  imp.add_argument('source', help='the .pth state dict (tensors only) or .safetensors file')
  imp.add_argument('--arch', required=True, choices=ARCHS)
  imp.add_argument('--out', required=True, help='a new (or empty) workdir')
  imp.add_argument('--config', default=None,
                   help='--arch zfjax: the exported config JSON (default SOURCE.json)')
  imp.add_argument('--fold-normalization', action='store_true',
                   help='scale conv1 for the paper\'s 0-255 mean-subtracted inputs')
  exp = commands.add_parser('export', help='an Orbax checkpoint -> a .pth or .safetensors '
                           '(zfjax layout)')
  exp.add_argument('checkpoint', help='a workdir, checkpoints directory or step directory')
  exp.add_argument('--out', required=True, help='FILE.pth or FILE.safetensors (its config '
                   'goes to FILE.json)')
  exp.add_argument('--step', default='latest', help="'latest', 'best' or a step number")
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  # A write the file system refuses fails in Orbax's writer threads, which log its
  # traceback before the error reaches the except below: kept off stderr, as in train.py,
  # so the one line there says it.
  loggers = [logging.getLogger('absl'), logging.getLogger('asyncio')]
  for logger in loggers:
    logger.addFilter(cli.quiet_libraries)
  try:
    if args.command == 'import':
      where = import_pth(args.source, args.arch, args.out, args.config,
                         args.fold_normalization)
      print(f'wrote {where} ({args.arch} from {args.source})')
    else:
      step = args.step if args.step in ('latest', 'best') else int(args.step)
      where = export_checkpoint(args.checkpoint, args.out, step)
      print(f'wrote {where} and {where.with_suffix(".json")}')
  except (ValueError, OSError) as error:  # OSError: missing files, refused writes
    print(f'error: {error}', file=sys.stderr)
    return 2
  finally:
    for logger in loggers:
      logger.removeFilter(cli.quiet_libraries)
  return 0


if __name__ == '__main__':
  status = main()
  if status:  # after a refused write, Orbax's writer threads may still call into their
    # closed event loop while Python shuts down, printing tracebacks under the one-line
    # error: leave at once, as train.py does (everything written is closed by now)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # pylint: disable=protected-access
  sys.exit(status)
