r"""Transfer to Caltech-256 (Sec. 5.2, Table 5; per-layer: Table 7).

    python -m zfjax.transfer --config configs/transfer_caltech256.py --workdir /tmp/c256 \
        --config.source=/data/zf --config.folder=/data/256_ObjectCategories

Caltech-256 has no TFDS builder: download 256_ObjectCategories.tar
(https://data.caltech.edu/records/nyv15-4j048), extract it, and point `folder` at the
256_ObjectCategories directory (one subfolder per class, read with TFDS's ImageFolder).
The clutter class (257.clutter) is left out. 15/30/45/60 training images per class, the
rest of each class for testing, 5 splits.
"""

import ml_collections

from zfjax.configs import transfer_caltech101


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = transfer_caltech101.get_config(arg)
  config.update(dataset='folder', dataset_name='caltech256', exclude_classes=('257.clutter',),
                train_per_class=(15, 30, 45, 60), test_per_class=0)
  return config
