r"""Transfer to Caltech-101 as the paper does it (Sec. 5.2, Table 4; per-layer: Table 7).

    python -m zfjax.transfer --config configs/transfer_caltech101.py --workdir /tmp/c101 \
        --config.source=/data/zf    # a train.py workdir (or an imported checkpoint)

Layers 1-7 of the trained ZFNet fixed, a new softmax on fc7; 15 or 30 training images per
class, tested on up to 50 of the others per class, mean per-class accuracy over 5 seeded
splits; against the same net trained from scratch, and linear SVMs / softmax on every
layer (Table 7). TFDS `caltech101` (downloaded by TFDS on first use): its train and test
splits are pooled and re-sampled, as the paper's protocol draws its own splits.
Other transfer configs import this one and change a few fields.
"""

import ml_collections
from ml_collections import config_dict


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()

  # The trained net (zfjax.train.transfer.load_source, via zfjax.loading.load).
  config.source = ''                # a workdir or checkpoint directory; '' = train one
  config.source_step = 'latest'     # latest | best | a step number
  # '' = the source dataset's mean image; imagenet_channels; a .npy file
  config.source_mean = ''

  # Target data (zfjax.train.transfer_data.load_dataset).
  config.dataset = 'caltech101'     # a TFDS dataset | voc/2012 | folder | digits
  config.data_dir = config_dict.placeholder(str)  # None: TFDS's default
  config.pool_splits = ('train', 'test')  # pooled, then sampled per class; () = all splits
  config.train_split = 'train'      # voc/2012 only: fixed splits
  config.eval_split = 'validation'
  config.folder = ''                # dataset='folder': the directory of class subfolders
  config.exclude_classes = ()       # dataset='folder': class folders to leave out
  config.dataset_name = ''          # dataset='folder': the name in results ('' = folder's)
  config.digits_classes = (5, 6, 7, 8, 9)  # dataset='digits'

  # Protocol.
  config.train_per_class = (15, 30)
  config.test_per_class = 50        # 0 = every remaining image of the class
  config.num_splits = 5
  config.seed = 0
  config.methods = ('frozen', 'scratch')  # frozen | finetune | scratch

  # Frozen features: the new head and the per-layer probes (Table 7).
  config.head_layer = 'fc7'
  config.head_classifier = 'softmax'
  config.probe_layers = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7')
  config.probe_classifiers = ('svm', 'softmax')
  config.pool_grid = 4              # conv maps average-pooled to pool_grid x pool_grid
  config.batch_size = 128           # feature extraction
  config.softmax_l2 = 1e-3          # penalty on the softmax kernel (features standardized)
  config.softmax_steps = 100        # L-BFGS iterations
  config.svm_c = 0.01               # LinearSVC's C

  # Whole-network training (finetune, scratch): the paper's SGD.
  config.network_steps = 3000
  config.network_batch_size = 128
  config.finetune_learning_rate = 1e-3
  config.scratch_learning_rate = 1e-2
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.filter_rms_radius = 0.1
  return config
