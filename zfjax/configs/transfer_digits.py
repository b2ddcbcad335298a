r"""The offline transfer analog (Sec. 5.2 on data that ships with scikit-learn).

    python -m zfjax.transfer --config configs/transfer_digits.py --workdir /tmp/zf_transfer

Trains the digits net (configs/digits.py) on the digits 0-4 only (into WORKDIR/source,
unless --config.source names a trained workdir), then transfers it to the digits 5-9 with
1, 5 or 10 training images per class, testing on every other 5-9 digit, over 5 seeded
splits: layers 1-7 frozen with a new softmax on fc7, fine-tuning, and the same net
trained from scratch (the paper's baseline), and linear SVM / softmax probes on every
layer (Table 7's analog). The source never sees a 5-9 digit.
"""

import ml_collections

from zfjax.configs import digits
from zfjax.configs import transfer_caltech101


def source_config() -> ml_collections.ConfigDict:
  """configs/digits.py on the digits 0-4 (5 classes, the same split rule)."""
  config = digits.get_config()
  config.digits_classes = (0, 1, 2, 3, 4)
  config.ten_crop_eval = False
  return config


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """arg 'smoke': a short source run and few steps (for tests)."""
  config = transfer_caltech101.get_config()
  config.update(dataset='digits', digits_classes=(5, 6, 7, 8, 9), pool_splits=(),
                train_per_class=(1, 5, 10), test_per_class=0, num_splits=5,
                methods=('frozen', 'finetune', 'scratch'), pool_grid=2,
                network_steps=60, network_batch_size=16,
                finetune_learning_rate=3e-3, scratch_learning_rate=3e-3)
  with config.unlocked():
    config.source_config = source_config()
  if arg == 'smoke':
    config.source_config.update(conv_features=(8, 8, 8, 8, 8), fc_features=(16, 16),
                                batch_size=16, num_train_steps=20, eval_every_steps=20,
                                checkpoint_every_steps=20, log_every_steps=10)
    config.update(train_per_class=(1, 5), num_splits=2, network_steps=5,
                  probe_layers=('conv1', 'fc7'))
  elif arg:
    raise ValueError(f'unknown config variant {arg!r}; try "smoke"')
  return config
