"""Imports of optional dependencies, with a one-line message naming the extra to install.

    tf = extras.require('tensorflow', 'train', 'reading TFDS datasets')

`pip install zfjax` (the core) gives the analyses, figures and checkpoints; the extras add
`train` (TensorFlow, TFDS, TensorBoard, scikit-learn, scikit-image: training, datasets,
the digits and the sample photos) and `interop` (torch and safetensors).
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
  """An optional dependency is not installed; the message says which extra brings it."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
  """`import module`, or MissingExtraError naming `extra` (e.g. 'train') and `purpose`."""
  try:
    return importlib.import_module(module)
  except ImportError as error:
    if error.name is not None and error.name.split('.')[0] != module.split('.')[0]:
      raise  # the module is there but one of its own imports failed: not ours to name
    raise MissingExtraError(
        f'{purpose} needs {module.split(".")[0]}, which is not installed: '
        f'pip install "zfjax[{extra}]"') from None
