"""Writes a golden reference file (zfjax.reference) for other frameworks to check against.

    zfjax-reference --out ref.npz                        # full: ZFNet at 224x224, 18 MB
    zfjax-reference --small --out small.npz              # a few hundred KB (tests/data)
    python -m zfjax.reference --out ref.npz --images 2   # each image adds about 8 MB
    python tools/check_reference_torch.py ref.npz        # an independent PyTorch check

docs/reference.md gives the file's layout, generators and conventions.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Optional, Sequence

from absl import flags

from zfjax import cli
from zfjax import reference


def define(argv: list) -> flags.FlagValues:
  """The flags of zfjax-reference."""
  del argv
  flag_values = flags.FlagValues()
  flags.DEFINE_string('out', None, 'The .npz to write.', flag_values=flag_values)
  flags.DEFINE_integer('seed', 0, 'The seed of the parameters (the images use seed + 1).',
                       flag_values=flag_values)
  flags.DEFINE_integer('images', None, 'Number of images (default 1; each adds about 8 MB '
                       'to the full file).', flag_values=flag_values)
  flags.DEFINE_boolean('small', False, 'The small variant (64x64 images, narrow maps).',
                       flag_values=flag_values)
  return flag_values


def body(flag_values: flags.FlagValues, args: list) -> int:
  """Generates the arrays of the chosen variant and writes them to --out."""
  if args:
    raise cli.UserError(f'unexpected arguments: {args}')
  config = reference.SMALL if flag_values.small else reference.FULL
  if flag_values.images is not None:
    if flag_values.images < 1:
      raise cli.UserError(f'--images must be at least 1, got {flag_values.images}')
    config = dataclasses.replace(config, num_images=flag_values.images)
  arrays = reference.generate(config, flag_values.seed)
  reference.save(arrays, flag_values.out)
  size = os.path.getsize(flag_values.out) / 1e6
  print(f'wrote {flag_values.out}: {len(arrays)} arrays, {size:.1f} MB', file=sys.stderr)
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """zfjax-reference: see the module doc."""
  return cli.run('zfjax-reference', __doc__, define, body, argv, required=('out',))
