"""PyTorch weights in and out of zfjax checkpoints (pytorchcv, torchvision, zfjax layouts).

    zfjax-interop import zfnet.pth --arch zfnet --out /tmp/zfnet_torch
    zfjax-interop import zfnet.safetensors --arch zfnet --out /tmp/zfnet_st
    zfjax-interop import zfnet.pth --arch zfnet --out /tmp/zfnet_paper --fold-normalization
    zfjax-interop export /tmp/zfnet/checkpoints --out /tmp/zfnet.pth          # zfjax layout
    zfjax-interop export /tmp/zfnet_torch --arch zfnet --out /tmp/zfnet_pytorchcv.pth
    python -m zfjax.interop import zfnet.pth --arch zfnet --out /tmp/zfnet_torch

`import` writes a workdir (checkpoints/0 and config.json) that `zfjax.loading.load`, the
figures and `export` read; `export` writes FILE.pth (torch.save) or FILE.safetensors in
the layout --arch names, and the checkpoint's config as FILE.json. Weights files are
never unpickled beyond tensors. docs/interop.md gives the layouts and conversions.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from absl import flags

from zfjax import cli
from zfjax import interop
from zfjax import weight_files

ARGV_SPELLINGS = {'--fold_normalization': '--fold-normalization',
                  '--nofold_normalization': '--nofold-normalization'}


def define_import(argv: list) -> flags.FlagValues:
  """The flags of `zfjax-interop import SOURCE`."""
  del argv
  flag_values = flags.FlagValues()
  flags.DEFINE_enum('arch', None, interop.ARCHS, 'The layout of SOURCE.',
                    flag_values=flag_values)
  flags.DEFINE_string('out', None, 'A new (or empty) workdir to write.', flag_values=flag_values)
  flags.DEFINE_string('config', None, '--arch zfjax: the exported config JSON (default '
                      'SOURCE with the suffix .json).', flag_values=flag_values)
  flags.DEFINE_boolean('fold-normalization', False, "Scale conv1 for the paper's 0-255 "
                       'mean-subtracted inputs (the source expects ImageNet-normalized '
                       'ones).', flag_values=flag_values)
  return flag_values


def import_body(flag_values: flags.FlagValues, args: list) -> int:
  """Reads SOURCE (a .pth of tensors or a .safetensors) and writes the workdir --out."""
  source = _one_path(args, 'SOURCE (the .pth or .safetensors file to import)')
  where = interop.import_weights(source, flag_values.arch, flag_values.out,
                                 flag_values.config, flag_values['fold-normalization'].value)
  print(f'wrote {where} ({flag_values.arch} from {source})')
  return 0


def define_export(argv: list) -> flags.FlagValues:
  """The flags of `zfjax-interop export CHECKPOINT`."""
  del argv
  flag_values = flags.FlagValues()
  flags.DEFINE_enum('arch', 'zfjax', interop.ARCHS, 'The layout to write: zfjax (any model) '
                    "or the layout of the checkpoint's own model.", flag_values=flag_values)
  flags.DEFINE_string('out', None, 'FILE.pth or FILE.safetensors (the config goes to '
                      'FILE.json).', flag_values=flag_values)
  flags.DEFINE_string('step', 'latest', "'latest', 'best' or a step number.",
                      flag_values=flag_values)
  return flag_values


def export_body(flag_values: flags.FlagValues, args: list) -> int:
  """Writes CHECKPOINT (a workdir, checkpoints or step directory) as --out."""
  checkpoint = _one_path(args, 'CHECKPOINT (a workdir, checkpoints or step directory)')
  where = interop.export_checkpoint(checkpoint, flag_values.out,
                                    cli.parse_step(flag_values.step), flag_values.arch)
  print(f'wrote {where} and {where.with_suffix(".json")} ({flag_values.arch} layout)')
  return 0


def _one_path(args: list, what: str) -> str:
  """The one positional argument, or a UserError saying what it should be."""
  if len(args) != 1:
    raise cli.UserError(f'expected one argument, {what}; got {len(args)}: {args}')
  return args[0]


COMMANDS = {
    'import': cli.Command('SOURCE (a PyTorch .pth or .safetensors) -> a checkpoint workdir.',
                          define_import, import_body, required=('arch', 'out')),
    'export': cli.Command('CHECKPOINT (a workdir or checkpoint directory) -> a .pth or '
                          '.safetensors in the layout --arch names.',
                          define_export, export_body, required=('out',)),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
  """zfjax-interop: see the module doc."""
  argv = sys.argv[1:] if argv is None else list(argv)
  argv = [_spelled(arg) for arg in argv]
  return cli.run_commands('zfjax-interop', __doc__, COMMANDS, argv,
                          user_errors=(interop.InteropError, weight_files.WeightFileError))


def _spelled(arg: str) -> str:
  """--fold_normalization (absl's usual spelling) as the flag's name, --fold-normalization."""
  name, equals, value = arg.partition('=')
  return ARGV_SPELLINGS.get(name, name) + equals + value
