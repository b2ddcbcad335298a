"""Occlusion's default mode (Winograd windows) against an independent torch reference.

On every network the tests use (ZFNet's geometry, AlexNet, pytorchcv's zfnet layout, the
digits net of configs/digits.py) at full width, with small images: the probability of the
label with the occluder at each position, from occlusion.sensitivity's default against
the torch network (tools/torch_zfnet.py, tools/torch_convnet.py) run on every occluded
copy of the image, within 1e-4. Image size and patch are chosen so that every
convolution with ceil(kernel / stride) = 3 goes by Winograd (asserted), with tiles of
both m = 3 and m = 4 in each network (m = 2: tests/test_occlusion.py, patch 224).

The full tier's (each network compiles its own program, 5-10 s); the default tier holds
the same default mode to torch on the narrow ZFNet of tests/test_occlusion.py.
"""

import pathlib
import sys

import jax
import numpy as np
import pytest
import torch

from testing_models import alive_variables, random_images
from zfjax import architecture, models, occlusion

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'tools'))
import torch_convnet as tc  # pylint: disable=wrong-import-position
import torch_zfnet as tz  # pylint: disable=wrong-import-position

TOLERANCE = 1e-4  # max |probability difference|
PAPER_WIDTHS = dict(conv_features=(96, 256, 384, 384, 256), fc_features=(512, 512))

# name: (spec, image side, patch, stride, winograd tiles the plan must choose)
NETWORKS = {
    'zfnet': (architecture.zfnet(10, **PAPER_WIDTHS), 145, 16, 40,
              {'conv2': (3, 3), 'conv3': (3, 3), 'conv4': (4, 4), 'conv5': (4, 4)}),
    'alexnet': (architecture.alexnet(10, **PAPER_WIDTHS), 143, 12, 40,
                {'conv1': (3, 3), 'conv3': (4, 4), 'conv4': (4, 4), 'conv5': (4, 4)}),
    'pytorchcv_zfnet': (architecture.pytorchcv_zfnet(10, **PAPER_WIDTHS), 145, 8, 40,
                        {'conv2': (3, 3), 'conv3': (3, 3), 'conv4': (4, 4), 'conv5': (4, 4)}),
    'digits': (architecture.small_zfnet(10), 32, 4, 8,   # configs/digits.py's widths
               {'conv1': (3, 3), 'conv2': (3, 3), 'conv3': (3, 3), 'conv4': (4, 4),
                'conv5': (4, 4)}),
}


def torch_network(name, spec, size, params):
  """The independent torch model of `name` with zfjax's params loaded."""
  if name in ('zfnet', 'pytorchcv_zfnet'):
    norm = architecture.layer(spec, 'norm1')
    model = tz.TorchZFNet(10, **PAPER_WIDTHS, input_size=size,
                          norm_before_pool=name == 'pytorchcv_zfnet', lrn_size=norm.size,
                          lrn_alpha=norm.alpha, lrn_beta=norm.beta, lrn_k=norm.k)
    return tz.load_flax_params(model.eval(), params)
  return tc.load_flax_params(tc.TorchConvNet(spec, (size, size, 3)).eval(), params)


def torch_probabilities(model, image, patch, stride, fill, label):
  """(I, J) softmax probability of `label`, the torch model on every occluded copy."""
  size = image.shape[0]
  side = (size - patch) // stride + 1
  occluded = np.repeat(image[None], side * side, axis=0)
  for i in range(side):
    for j in range(side):
      occluded[i * side + j, i * stride:i * stride + patch, j * stride:j * stride + patch] = fill
  with torch.no_grad():
    logits = model(tz.to_nchw(occluded)).double().numpy()
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  return (probs[:, label] / probs.sum(-1)).reshape(side, side)


def unsaturated(model, variables, image):
  """The variables with the last layer scaled to logits of std 1.5 on `image`.

  He-normal weights give logits in the tens: a saturated softmax, whose probabilities
  hardly move. Scaled, the label's probability is far from 0 and 1."""
  logits = model.apply(variables, image[None])[0]
  params = dict(variables['params'])
  last = model.spec[-1].name
  params[last] = jax.tree.map(lambda a: a * (1.5 / float(logits.std())), params[last])
  return {'params': params}


def default_and_torch(name, spec, size, patch, stride, seed):
  """The default maps of a random image's top class, the torch network's, and the net.

  (maps, torch probabilities, (model, variables, image, label))."""
  model = models.ConvNet(spec)
  image = random_images(1, seed=seed, size=size)[0]
  variables = unsaturated(model, alive_variables(model, image_size=size), image)
  label = int(np.argmax(model.apply(variables, image[None])[0]))
  maps = occlusion.sensitivity(model, variables, image, label, patch=patch, stride=stride)
  reference = torch_probabilities(
      torch_network(name, spec, size, jax.tree.map(np.asarray, variables['params'])),
      np.asarray(image), patch, stride, 0.0, label)
  return maps, reference, (model, variables, image, label)


@pytest.mark.slow
@pytest.mark.parametrize('name', NETWORKS)
def test_default_maps_equal_torch(name):
  spec, size, patch, stride, tiles = NETWORKS[name]
  plan = occlusion._plan(spec, (size, size, 3), patch, winograd=True)
  assert {step.record.name: step.tile for step in plan if step.tile} == tiles
  assert set(tiles) == {record.name for record in spec if isinstance(record, architecture.Conv)
                        and -(-record.kernel // record.stride) == 3}
  maps, reference, _ = default_and_torch(name, spec, size, patch, stride, seed=5)
  assert maps.prob.shape == reference.shape and reference.size >= 9
  assert 0.05 < float(maps.unoccluded_prob) < 0.95
  assert np.ptp(reference) > 1e-3  # the occluder matters
  assert np.abs(np.asarray(maps.prob, np.float64) - reference).max() <= TOLERANCE


@pytest.mark.slow
def test_border_groups_equal_torch_and_naive():
  """Positions split into border groups (_groups): default within 1e-4 of torch, exact = naive.

  The several groups' maps are put back in the grid's order. 17 x 17 positions: each axis
  splits, some groups' windows too small at conv4-5 for a whole tile (direct there)."""
  spec = architecture.zfnet(10, **PAPER_WIDTHS)
  size, patch, stride = 129, 16, 7
  groups = occlusion._groups(spec, (size, size, 3), patch, stride, winograd=True)
  assert len(groups) == 4
  assert sorted(np.concatenate([index for *_, index in groups])) == list(range(17 * 17))
  tiles = {tuple(step.tile for step in plan) for plan, *_ in groups}
  assert len(tiles) > 1
  assert {(4, 3), (3, 4)} <= {tile for plan in tiles for tile in plan}  # tiles of 4 x 3
  maps, reference, net = default_and_torch('zfnet', spec, size, patch, stride, seed=6)
  model, variables, image, label = net
  assert np.ptp(reference) > 1e-3
  assert np.abs(np.asarray(maps.prob, np.float64) - reference).max() <= TOLERANCE
  exact = occlusion.sensitivity(model, variables, image, label, patch=patch, stride=stride,
                                winograd=False)
  naive = occlusion.sensitivity(model, variables, image, label, patch=patch, stride=stride,
                                method='naive')
  np.testing.assert_allclose(exact.prob, naive.prob, atol=1e-5)
  np.testing.assert_array_equal(exact.top_class, naive.top_class)
  np.testing.assert_allclose(exact.feature, naive.feature, rtol=1e-5,
                             atol=1e-5 * float(naive.unoccluded_feature))
