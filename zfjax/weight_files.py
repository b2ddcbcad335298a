"""PyTorch weight files in and out, never unpickling arbitrary objects.

    state_dict = weight_files.load_weights('zfnet.pth')        # or 'zfnet.safetensors'
    weight_files.save_weights(state_dict, 'out.safetensors')   # numpy arrays; no torch

A .pth is read with torch.load(weights_only=True): a pickle naming anything but tensors
and plain containers is refused (`WeightFileError`, naming the file) and nothing in it
runs. A .safetensors file (by suffix or by its header) holds raw arrays only and needs no
torch. torch and safetensors are the `interop` extra: without them, one line says
`pip install "zfjax[interop]"`. `zfjax.interop` converts what these read.
"""

from __future__ import annotations

import pathlib
import pickle
import re
from typing import Any, Mapping

import numpy as np

from zfjax import extras

SAFETENSORS = '.safetensors'
ACCEPTED = 'only state dicts of tensors (.pth) or .safetensors files are accepted'
PathLike = str | pathlib.Path


class WeightFileError(ValueError):
  """A weights file that cannot be read as a state dict; the message names the file."""


def unwrap(state_dict: Any) -> dict:
  """The parameter dict of a loaded .pth: itself, or nested under 'state_dict' or 'model'.

  A 'module.' prefix on every key (DataParallel) is dropped.
  """
  for key in ('state_dict', 'model'):
    if isinstance(state_dict, Mapping) and isinstance(state_dict.get(key), Mapping):
      state_dict = state_dict[key]
  if not isinstance(state_dict, Mapping):
    raise WeightFileError(f'expected a state dict (a mapping of names to tensors), got '
                          f'{type(state_dict).__name__}')
  if state_dict and all(k.startswith('module.') for k in state_dict):
    state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
  return dict(state_dict)


def is_safetensors(path: PathLike) -> bool:
  """Whether a weights file is in the safetensors format.

  Its suffix is .safetensors, or it starts as one does (an 8-byte little-endian header
  length, then a JSON object).
  """
  path = pathlib.Path(path)
  if path.suffix == SAFETENSORS:
    return True
  with open(path, 'rb') as f:
    head = f.read(9)
  return (len(head) == 9 and head[8:9] == b'{'
          and 0 < int.from_bytes(head[:8], 'little') < path.stat().st_size)


def load_weights(path: PathLike) -> dict:
  """The state dict of a weights file, unwrapped: .safetensors (by suffix or content) or .pth.

  A .pth goes through torch.load(weights_only=True), which builds only tensors,
  containers and plain values and never calls what a pickle names (so a file that tries
  to run code is refused, and nothing in it runs). WeightFileError, naming the file, for
  a file that is neither; FileNotFoundError for a missing one.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'no file {path}')
  return load_safetensors(path) if is_safetensors(path) else load_pth(path)


def load_pth(path: PathLike) -> dict:
  """A .pth state dict (torch.load with weights_only=True), unwrapped.

  WeightFileError naming the file when it holds objects other than tensors or cannot be
  read; MissingExtraError without torch.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'no file {path}')
  torch = extras.require('torch', 'interop', f'reading {path}')
  try:
    loaded = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as error:
    raise WeightFileError(f'{path} holds objects other than tensors ({_refusal(error)}; '
                          f'nothing in it was run): {ACCEPTED}') from None
  except (RuntimeError, EOFError, OSError) as error:
    raise WeightFileError(f'{path} is not a readable PyTorch file (truncated, or not written '
                          f'by torch.save: {_first_line(error)}): {ACCEPTED}') from None
  return unwrap(loaded)


def load_safetensors(path: PathLike) -> dict:
  """A .safetensors file as {name: numpy array}, unwrapped.

  Dtypes numpy lacks (bfloat16) come back as torch tensors, read with torch.
  WeightFileError naming the file when it cannot be read.
  """
  path = pathlib.Path(path)
  safetensors = extras.require('safetensors', 'interop', f'reading {path}')
  safetensors_numpy = extras.require('safetensors.numpy', 'interop', f'reading {path}')
  try:
    try:
      return unwrap(dict(safetensors_numpy.load_file(path)))
    except TypeError as error:  # a dtype numpy does not know (bfloat16): read it with torch
      extras.require('torch', 'interop', f'reading {path} (its dtype is not numpy\'s: {error})')
      torch_format = extras.require('safetensors.torch', 'interop', f'reading {path}')
      return unwrap(dict(torch_format.load_file(path)))
  except safetensors.SafetensorError as error:
    raise WeightFileError(f'{path} is not a readable .safetensors file (truncated or '
                          f'damaged: {_first_line(error)})') from None


def save_weights(state_dict: Mapping[str, np.ndarray], out: PathLike) -> pathlib.Path:
  """Writes a state dict of numpy arrays: out.safetensors with safetensors, else torch.save.

  torch.save writes torch tensors (as torch.load gives them back). MissingExtraError
  without the package the format needs.
  """
  out = pathlib.Path(out)
  if out.suffix == SAFETENSORS:
    writer = extras.require('safetensors.numpy', 'interop', f'writing {out}').save_file
    arrays = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
  else:
    torch = extras.require('torch', 'interop', f'writing {out}')
    writer = torch.save
    arrays = {k: torch.from_numpy(v if v.flags.writeable else v.copy())
              for k, v in state_dict.items()}
  out.parent.mkdir(parents=True, exist_ok=True)
  writer(arrays, out)
  return out


def _refusal(error: Exception) -> str:
  """What torch's weights-only unpickler refused, in a few words."""
  found = re.search(r'GLOBAL (\S+)', str(error))
  if found:
    return f'it names {found.group(1)}, which only a full unpickler would call'
  found = re.search(r'WeightsUnpickler error: \s*(.+)', str(error))
  return found.group(1).strip() if found else _first_line(error)


def _first_line(error: Exception) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[0] if lines else type(error).__name__
