r"""ZFNet on ImageNet 2012, as the paper trains it (Sec. 3; PAPER.md, Training).

    python train.py --config configs/zfnet.py --workdir /tmp/zfnet
    python train.py --config configs/zfnet.py:smoke --workdir /tmp/zfnet_smoke

ImageNet needs a manual download into the TFDS data dir (see zfjax.input_pipeline).
Variants import this get_config and change a few fields (configs/zfnet_wide.py,
configs/alexnet.py); any field can be overridden, e.g. --config.batch_size=256.
"""

import ml_collections
from ml_collections import config_dict

# Epochs whose checkpoints are kept for the feature-evolution figure (Fig. 4).
FIG4_EPOCHS = (1, 2, 5, 10, 20, 30, 40, 64)


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """The paper's settings; arg 'smoke' runs a few tiny steps (for tests)."""
  config = ml_collections.ConfigDict()

  # Data (zfjax.input_pipeline).
  config.dataset = 'imagenet2012'
  config.data_dir = config_dict.placeholder(str)  # None: TFDS's default
  config.train_split = 'train'
  config.eval_split = 'validation'
  config.image_size = 224          # random crops of the resized image
  config.resize_size = 256         # shorter side, then a center square
  config.random_flip = True
  config.mean_image_examples = 0   # images averaged for the mean image; 0 = all
  config.shuffle_buffer = 16384
  config.num_train_examples = 0    # 0 = from the dataset's metadata
  config.num_eval_examples = 0

  # Model (zfjax.architecture.get(model, num_classes, ...)).
  config.model = 'zfnet'           # zfnet | zfnet_wide | alexnet | small_zfnet
  config.conv_features = ()        # () = the model's own widths
  config.fc_features = ()          # e.g. (2048, 2048) for Table 3's ablation
  config.remove_layers = ()        # e.g. ('conv3', 'conv4') or ('fc6', 'fc7')
  config.norm_before_pool = False  # True: pytorchcv's layout (zfnet only)
  config.dropout = 0.5             # on fc6 and fc7
  config.init = 'paper'            # paper: normal(1e-2); he_normal | lecun_normal | glorot_uniform
  config.dtype = 'float32'         # computation dtype; params stay float32

  # Optimization.
  config.batch_size = 128          # global, over all devices and processes
  config.eval_batch_size = 128
  config.num_epochs = 70
  config.num_train_steps = -1      # > 0 overrides num_epochs
  config.learning_rate = 1e-2
  config.momentum = 0.9
  config.weight_decay = 5e-4       # added to the weights' gradient (AlexNet's rule)
  config.filter_rms_radius = 0.1   # conv filters renormalized to this RMS; 0 disables
  config.lr_patience = 1           # evaluations without improvement before lowering
  config.lr_decay_factor = 10.0    # the learning rate is divided by this on a plateau

  # Bookkeeping.
  config.seed = 0
  config.log_every_steps = 100
  config.eval_every_steps = 10_000   # about one epoch of ImageNet at batch 128
  config.checkpoint_every_steps = 2_000
  config.keep_checkpoints = 3        # latest N; the best by validation error is kept too
  config.keep_epochs = FIG4_EPOCHS   # and these epochs' checkpoints
  config.ten_crop_eval = True        # final evaluation also with the paper's 10 crops
  config.train_error_eval = True     # final evaluation also on the training split (center
                                     # crop; Table 3's train top-1): one more pass over it

  if arg == 'smoke':
    config.update(model='small_zfnet', image_size=32, resize_size=36, batch_size=8,
                  eval_batch_size=8, num_train_steps=3, log_every_steps=1, eval_every_steps=3,
                  checkpoint_every_steps=3, keep_epochs=(), ten_crop_eval=False,
                  conv_features=(8, 8, 8, 8, 8), fc_features=(16, 16),
                  mean_image_examples=64, num_train_examples=64, num_eval_examples=16)
  elif arg:
    raise ValueError(f'unknown config variant {arg!r}; try "smoke"')
  config.lock()
  return config
