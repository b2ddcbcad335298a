r"""AlexNet as the paper replicated it (one tower, 11x11/4 conv1; Table 2's 40.5% top-1).

    python train.py --config configs/alexnet.py --workdir /tmp/alexnet
"""

import ml_collections

from zfjax.configs import zfnet


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = zfnet.get_config(arg)
  if not arg:
    config.model = 'alexnet'
    config.filter_rms_radius = 0.0  # AlexNet had no feature scale clipping
  return config
