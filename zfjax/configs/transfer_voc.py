r"""Transfer to PASCAL VOC 2012 (Sec. 5.2, Table 6): a 20-way softmax on fc7.

    python -m zfjax.transfer --config configs/transfer_voc.py --workdir /tmp/voc \
        --config.source=/data/zf

TFDS `voc/2012`. Multi-label: each image's target is uniform over its labels; per-class
average precision and their mean. The paper trained on train+val and reported test mAP
from the evaluation server; VOC 2012's test labels are not public, so by default this
trains on `train` and tests on `validation` (set train_split/eval_split to change it).
"""

import ml_collections

from zfjax.configs import transfer_caltech101


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = transfer_caltech101.get_config(arg)
  config.update(dataset='voc/2012', train_split='train', eval_split='validation',
                methods=('frozen',), probe_layers=('fc6', 'fc7'),
                probe_classifiers=('softmax',))
  return config
