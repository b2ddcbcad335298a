"""A package's public names, each imported from its module on first use.

    __getattr__, __dir__ = lazy_names.exports(__name__, {'gallery': 'folder', ...})

The package's `__init__` then imports none of its modules: `import zfjax.report.tables`
stays light, and the package's modules import each other without a circle through it.
"""

import importlib
import sys
from typing import Callable, Mapping


def exports(package: str, homes: Mapping[str, str]) -> tuple[Callable, Callable]:
  """(__getattr__, __dir__) for `package`: NAME -> `package.homes[NAME]`.NAME."""
  def getattr_(name: str):
    if name not in homes:
      raise AttributeError(f'module {package!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(f'{package}.{homes[name]}'), name)
    setattr(sys.modules[package], name, value)
    return value

  def dir_() -> list:
    return sorted(set(vars(sys.modules[package])) | set(homes))

  return getattr_, dir_
