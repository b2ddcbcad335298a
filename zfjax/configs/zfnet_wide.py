r"""The paper's wide model (b): conv3/4/5 with 512/1024/512 maps (Tables 2 and 3).

    python train.py --config configs/zfnet_wide.py --workdir /tmp/zfnet_wide
"""

import ml_collections

from zfjax.configs import zfnet


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = zfnet.get_config(arg)
  if not arg:
    config.model = 'zfnet_wide'
  return config
