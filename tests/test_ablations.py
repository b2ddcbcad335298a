"""configs/ablations.py: every Table 3 row builds the layers the paper describes.

Shapes and parameter counts are worked out here from the layer arithmetic; every row loads
through train.py's config flag, and one smoke variant trains.
"""

import json

import pytest

from zfjax.configs import ablations
from zfjax import architecture, checkpoints, cli, models, train
from zfjax.cli import train as train_cli
from zfjax.report import results

# (conv1 kernel, conv1..conv5 maps, fc6/fc7 units, removed layers) of each Table 3 row.
ZF, WIDE, FC = (96, 256, 384, 384, 256), (96, 256, 512, 1024, 512), (4096, 4096)
LAYERS = {
    'zfnet': (7, ZF, FC, ()),
    'zfnet-fc2048': (7, ZF, (2048, 2048), ()),
    'zfnet-fc8192': (7, ZF, (8192, 8192), ()),
    'zfnet-wide': (7, WIDE, FC, ()),
    'zfnet-wide-fc8192': (7, WIDE, (8192, 8192), ()),
    'alexnet': (11, ZF, FC, ()),
    'alexnet-no-conv34': (11, ZF, FC, ('conv3', 'conv4')),
    'alexnet-no-fc7': (11, ZF, FC, ('fc7',)),
    'alexnet-no-fc67': (11, ZF, FC, ('fc6', 'fc7')),
    'alexnet-no-conv34-fc67': (11, ZF, FC, ('conv3', 'conv4', 'fc6', 'fc7')),
    'alexnet-fc2048': (11, ZF, (2048, 2048), ()),
    'alexnet-fc8192': (11, ZF, (8192, 8192), ()),
}
# Totals worked out by hand for a few rows (the formula below must agree with them):
# ZFNet and model (b) are the counts PAPER.md quotes; single-tower AlexNet's is the usual
# 62,378,344 (ZFNet's with conv1 11x11 instead of 7x7: + (121 - 49) * 3 * 96); without
# conv3, conv4, fc6, fc7: conv1 34,944 + conv2 614,656 + conv5 (3x3x256x256) 590,080
# + fc8 (9216 x 1000) 9,217,000.
TOTALS = {'zfnet': 62_357_608, 'zfnet-wide': 107_627_624, 'alexnet': 62_378_344,
          'alexnet-no-conv34-fc67': 10_456_680}


def expected_shapes(first_kernel, maps, units, removed, classes=1000):
  """Layer -> output shape at 224x224, from the paper's geometry.

  Fig. 3; AlexNet as replicated: 55 -> pool 27 -> 27 -> pool 13 -> 13 -> pool 6.
  """
  m1, m2, m3, m4, m5 = maps
  if first_kernel == 7:   # ZFNet: conv, pool, norm
    shapes = [('conv1', (110, 110, m1)), ('pool1', (55, 55, m1)), ('norm1', (55, 55, m1)),
              ('conv2', (26, 26, m2)), ('pool2', (13, 13, m2)), ('norm2', (13, 13, m2))]
  else:                   # AlexNet: conv, norm, pool
    shapes = [('conv1', (55, 55, m1)), ('norm1', (55, 55, m1)), ('pool1', (27, 27, m1)),
              ('conv2', (27, 27, m2)), ('norm2', (27, 27, m2)), ('pool2', (13, 13, m2))]
  shapes += [('conv3', (13, 13, m3)), ('conv4', (13, 13, m4)), ('conv5', (13, 13, m5)),
             ('pool5', (6, 6, m5)), ('fc6', (units[0],)), ('fc7', (units[1],)),
             ('fc8', (classes,))]
  return [(name, shape) for name, shape in shapes if name not in removed]


def expected_params(first_kernel, maps, units, removed, classes=1000):
  """Weights + biases: k*k*in*out + out per conv, in*out + out per dense layer."""
  kernels = (first_kernel, 5, 3, 3, 3)
  total, channels = 0, 3
  for i, (k, m) in enumerate(zip(kernels, maps)):
    if f'conv{i + 1}' not in removed:
      total += k * k * channels * m + m
      channels = m
  inputs = 6 * 6 * channels  # pool5
  for name, u in zip(('fc6', 'fc7'), units):
    if name not in removed:
      total += inputs * u + u
      inputs = u
  return total + inputs * classes + classes


def test_hand_totals_agree_with_the_formula():
  for name, total in TOTALS.items():
    assert expected_params(*LAYERS[name]) == total, name


def test_every_variant_is_listed_in_the_docstring():
  assert list(ablations.VARIANTS) == list(LAYERS)
  for name in LAYERS:
    assert f'\n    {name} ' in ablations.__doc__


@pytest.mark.parametrize('name', list(LAYERS))
def test_variant_builds_the_papers_layers(name):
  config = ablations.get_config(name)
  spec = models.spec_from_config(config, 1000)
  assert list(architecture.shapes(spec).items()) == expected_shapes(*LAYERS[name])
  assert architecture.num_params(spec) == expected_params(*LAYERS[name])
  assert config.dataset == 'imagenet2012' and config.image_size == 224
  assert config.filter_rms_radius == (0.0 if name.startswith('alexnet') else 0.1)
  assert config.train_error_eval  # Table 3 reports train top-1
  assert results.variant(config) == name  # zfjax-tables puts its results on this row


@pytest.mark.parametrize('name', list(LAYERS))
def test_smoke_variant_keeps_the_layer_sequence(name):
  full = models.spec_from_config(ablations.get_config(name), 1000)
  config = ablations.get_config(f'{name},smoke')
  small = models.spec_from_config(config, 1000)
  assert architecture.layer_names(small) == architecture.layer_names(full)
  shapes = architecture.shapes(small, (config.image_size, config.image_size, 3))
  assert shapes['pool5'][:2] == (1, 1) and shapes['fc8'] == (1000,)
  assert config.num_train_steps == 3 and results.variant(config) is None  # not the paper's


@pytest.mark.parametrize('arg', ['', 'zfnet-fc4096', 'zfnet,tiny', 'resnet'])
def test_unknown_variant_names_the_valid_ones(arg):
  with pytest.raises(ValueError, match=f'unknown ablation {arg!r}.*alexnet-no-conv34-fc67'):
    ablations.get_config(arg)


def test_train_py_config_flag_loads_a_variant():
  argv = cli.with_packaged_configs(['train.py',
                                    '--config=configs/ablations.py:alexnet-no-fc67,smoke'])
  values = train_cli.define(argv)
  values(argv)
  assert values.config.remove_layers == ('fc6', 'fc7') and values.config.num_train_steps == 3


@pytest.mark.slow  # a training run; test_training and test_train_cli cover the loop
def test_smoke_variant_trains_without_four_layers(tmp_path):
  """The smallest ablation end to end: train, checkpoint, evaluate on both splits.

  On the offline digits instead of ImageNet: TFDS's path is tested on mock ImageNet in
  test_train_imagenet_mock.py.
  """
  config = ablations.get_config('alexnet-no-conv34-fc67,smoke')
  config.update(dataset='digits', train_split='train', eval_split='test', random_flip=False,
                eval_batch_size=120)
  results = train.train_and_evaluate(config, tmp_path)
  assert results['step'] == 3 and results['count'] == 360
  saved = json.loads((tmp_path / 'results.json').read_text())
  for key in ('top1_error', 'top5_error', 'train_top1_error', 'train_top5_error'):
    assert 0.0 <= saved[key] <= 1.0
  assert saved['train_count'] == 1437  # the whole digits training split
  _, params = checkpoints.restore_params(tmp_path)
  assert sorted(params) == ['conv1', 'conv2', 'conv5', 'fc8']
  assert params['fc8']['kernel'].shape == (8, 10)  # pool5 (1x1x8) -> fc8
