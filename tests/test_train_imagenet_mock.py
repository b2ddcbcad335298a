"""configs/zfnet.py end to end on TFDS imagenet2012 under tfds.testing.mock_data.

The paper's TFDS path trains a few real steps, checkpoints, evaluates with 10 crops.
"""

import json

import tensorflow_datasets as tfds

from zfjax.configs import zfnet
from zfjax import checkpoints, train


def test_zfnet_smoke_config_trains_on_mock_imagenet(tmp_path):
  config = zfnet.get_config('smoke')
  with config.unlocked():
    config.data_dir = str(tmp_path / 'data')  # the mean image is cached here
    config.ten_crop_eval = True
  with tfds.testing.mock_data(num_examples=24):
    results = train.train_and_evaluate(config, tmp_path / 'work')
  assert results['step'] == 3
  for key in ('top1_error', 'top5_error', 'ten_crop_top1_error', 'train_top1_error'):
    assert 0.0 <= results[key] <= 1.0
  assert json.loads((tmp_path / 'work' / 'results.json').read_text())['step'] == 3
  assert list((tmp_path / 'data' / 'zfjax_mean_images').glob('*.npy'))
  restored_config, params = checkpoints.restore_params(tmp_path / 'work')
  assert restored_config.dataset == 'imagenet2012'
  assert params['fc8']['kernel'].shape == (16, 1000)
