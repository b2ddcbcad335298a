r"""The paper's Table 3 ablations on ImageNet 2012, one config per row.

    python train.py --config configs/ablations.py:NAME --workdir /tmp/NAME
    python train.py --config configs/ablations.py:NAME,smoke --workdir /tmp/NAME_smoke

NAME (the paper's Table 3 row):

    zfnet                    our model as per Fig. 3 (the baseline)
    zfnet-fc2048             fc6, fc7: 2048 units
    zfnet-fc8192             fc6, fc7: 8192 units
    zfnet-wide               conv3, 4, 5: 512, 1024, 512 maps (Table 2's model (b))
    zfnet-wide-fc8192        both: 512, 1024, 512 maps and 8192-unit fc6, fc7
    alexnet                  the paper's replication of AlexNet (one tower)
    alexnet-no-conv34        AlexNet without conv3 and conv4 (conv2 feeds conv5)
    alexnet-no-fc7           AlexNet without fc7 (fc6 feeds fc8)
    alexnet-no-fc67          AlexNet without fc6 and fc7 (pool5 feeds fc8)
    alexnet-no-conv34-fc67   AlexNet without conv3, conv4, fc6 and fc7
    alexnet-fc2048           AlexNet with 2048-unit fc6, fc7
    alexnet-fc8192           AlexNet with 8192-unit fc6, fc7

Each is configs/zfnet.py (ZFNet rows) or configs/alexnet.py (AlexNet rows, no filter
renormalization) with `model`, `conv_features`, `fc_features` and `remove_layers` set;
everything else is the paper's recipe. The logits layer keeps the name fc8 whatever is
removed (architecture.without). Table 3 reports train top-1 (results.json's
train_top1_error) and validation top-1 and top-5.

',smoke' (for tests): the same layer sequence at 64x64 with 1/32 of the conv maps and
1/256 of the fc units, a few steps on few images (configs/zfnet.py:smoke's bookkeeping).
"""

import ml_collections

from zfjax.configs import alexnet
from zfjax.configs import zfnet

from zfjax import architecture


def _fields(maps, units, removed) -> dict:
  """The config fields that differ from the base model's for a Table 3 row."""
  fields = {}
  if maps != architecture.ZFNET_MAPS:
    fields['conv_features'] = maps
  if units != architecture.FC_UNITS:
    fields['fc_features'] = units
  if removed:
    fields['remove_layers'] = removed
  return fields


# name -> (base config module, fields set on it), from architecture.VARIANTS.
BASES = {'zfnet': zfnet, 'alexnet': alexnet}
VARIANTS = {name: (BASES[family], _fields(maps, units, removed))
            for name, (family, maps, units, removed) in architecture.VARIANTS.items()}

# Smoke runs: widths divided by these, at this input size (the smallest where AlexNet's
# 11x11/4 conv1 still leaves a 1x1 pool5).
SMOKE_CONV_DIVISOR = 32
SMOKE_FC_DIVISOR = 256
SMOKE_IMAGE_SIZE = 64
_ARCHITECTURE_FIELDS = ('model', 'conv_features', 'fc_features', 'remove_layers')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """The config of Table 3's row `arg` (a name of VARIANTS, optionally ',smoke')."""
  name, _, option = arg.partition(',')
  if name not in VARIANTS or option not in ('', 'smoke'):
    raise ValueError(f'unknown ablation {arg!r}: use configs/ablations.py:NAME or '
                     f'NAME,smoke with NAME one of {", ".join(VARIANTS)}')
  base, fields = VARIANTS[name]
  config = base.get_config()
  config.update(fields)
  if option == 'smoke':
    _shrink(config)
  return config


def _shrink(config: ml_collections.ConfigDict) -> None:
  """The smoke version of a variant, in place.

  zfnet.py:smoke's data and bookkeeping fields, the variant's layers with fewer maps and
  units, 64x64 inputs."""
  default, smoke = zfnet.get_config(), zfnet.get_config('smoke')
  config.update({k: v for k, v in smoke.items()
                 if v != default[k] and k not in _ARCHITECTURE_FIELDS})
  maps = config.conv_features or architecture.ZFNET_MAPS
  units = config.fc_features or architecture.FC_UNITS
  config.update(conv_features=tuple(m // SMOKE_CONV_DIVISOR for m in maps),
                fc_features=tuple(u // SMOKE_FC_DIVISOR for u in units),
                image_size=SMOKE_IMAGE_SIZE, resize_size=SMOKE_IMAGE_SIZE + 8)
