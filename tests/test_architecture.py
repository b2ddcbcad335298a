"""Specs: the paper's Fig. 3 shapes, parameter counts, variants, receptive fields."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zfjax import architecture, models

FIG3_SHAPES = {
    'conv1': (110, 110, 96), 'pool1': (55, 55, 96), 'norm1': (55, 55, 96),
    'conv2': (26, 26, 256), 'pool2': (13, 13, 256), 'norm2': (13, 13, 256),
    'conv3': (13, 13, 384), 'conv4': (13, 13, 384), 'conv5': (13, 13, 256),
    'pool5': (6, 6, 256), 'fc6': (4096,), 'fc7': (4096,), 'fc8': (1000,),
}


def test_zfnet_shapes_are_the_papers_fig3():
  assert architecture.shapes(architecture.zfnet()) == FIG3_SHAPES


def test_parameter_counts():
  assert architecture.num_params(architecture.zfnet()) == 62_357_608
  assert architecture.num_params(architecture.zfnet_wide()) == 107_627_624
  model = models.ZFNet()
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  assert sum(np.prod(a.shape) for a in jax.tree.leaves(shapes)) == 62_357_608


def test_wide_and_alexnet_shapes():
  wide = architecture.shapes(architecture.zfnet_wide())
  assert (wide['conv3'], wide['conv4'], wide['conv5']) == ((13, 13, 512), (13, 13, 1024),
                                                           (13, 13, 512))
  alex = architecture.shapes(architecture.alexnet())
  assert alex['conv1'] == (55, 55, 96) and alex['pool1'] == (27, 27, 96)
  assert alex['conv2'] == (27, 27, 256) and alex['pool5'] == (6, 6, 256)
  assert architecture.layer_names(architecture.alexnet())[:3] == ('conv1', 'norm1', 'pool1')
  assert architecture.layer_names(architecture.zfnet(norm_before_pool=True))[:3] == (
      'conv1', 'norm1', 'pool1')


def test_ablations_from_the_spec():
  spec = architecture.without(architecture.alexnet(), 'conv3', 'conv4')
  assert architecture.shapes(spec)['conv5'] == (13, 13, 256)
  no_fc = architecture.without(architecture.zfnet(), 'fc6', 'fc7')
  assert architecture.layer_names(no_fc)[-2:] == ('pool5', 'fc8')
  assert architecture.num_params(no_fc) == 62_357_608 - (37_752_832 + 16_781_312
                                                         + 4_097_000) + 9216 * 1000 + 1000
  big = architecture.resize(architecture.zfnet(), fc6=8192, fc7=8192)
  assert architecture.shapes(big)['fc7'] == (8192,)
  with pytest.raises(ValueError, match='unknown layer'):
    architecture.without(architecture.zfnet(), 'conv9')


def test_small_zfnet_shapes():
  shapes = architecture.shapes(architecture.small_zfnet(), (32, 32, 3))
  assert shapes['pool1'] == (16, 16, 32) and shapes['pool2'] == (8, 8, 64)
  assert shapes['pool5'] == (4, 4, 64) and shapes['fc8'] == (10,)


def test_cone_windows_of_conv5():
  sizes = {name: w.size for name, w in architecture.windows(architecture.zfnet(), 'conv5')}
  assert (sizes['conv4'], sizes['conv3'], sizes['pool2'], sizes['conv2'], sizes['pool1'],
          sizes['conv1'], sizes['input']) == (3, 5, 7, 15, 33, 67, 139)


def _gradient_support(spec, layers, layer, y, x, image):
  """Pixels where the gradient of unit (y, x, channel 0) of `layer` is nonzero.

  One program per spec and tuple of layers, for every layer of the tuple and unit."""
  model = models.ConvNet(spec)
  # The paper's init made positive: |normal(1e-2)| + 0.01 kernels, 0.01 biases; with a
  # positive image every path is alive.
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  rng = np.random.default_rng(0)
  variables = jax.tree.map(
      lambda a: (np.abs(rng.normal(0.0, 1e-2, a.shape)) + 0.01).astype(np.float32)
      if len(a.shape) > 1 else np.full(a.shape, 0.01, np.float32), shapes)
  return np.asarray(_support(variables, image, layers.index(layer), y, x, model=model,
                             layers=layers))


@functools.partial(jax.jit, static_argnames=('model', 'layers'))
def _support(variables, image, index, y, x, *, model, layers):
  def unit(x_):
    maps = models.activations(model, variables, x_, layers)
    return jnp.stack([maps[name][0, y, x, 0] for name in layers])[index]
  return jnp.abs(jax.grad(unit)(image))[0].sum(-1) > 0


def _window_mask(spec, layer, y, x):
  (r0, r1), (c0, c1) = architecture.receptive_field(spec, layer, y, x)
  mask = np.zeros((224, 224), bool)
  mask[r0:r1, c0:c1] = True
  return mask


# ZFNet's geometry with each 3x3/2 max pool replaced by a 3x3/2 convolution: the same
# window arithmetic, and a gradient that reaches every pixel of the receptive field.
ALL_CONV = (
    architecture.Conv('conv1', 2, kernel=7, stride=2, padding=1),
    architecture.Conv('pool1', 2, kernel=3, stride=2),
    architecture.Conv('conv2', 2, kernel=5, stride=2),
    architecture.Conv('pool2', 2, kernel=3, stride=2),
    architecture.Conv('conv3', 2, kernel=3, stride=1, padding=1),
    architecture.Conv('conv5', 2, kernel=3, stride=1, padding=1),
)


SLOW = pytest.mark.slow  # the full tier: more positions of the same check


@pytest.mark.parametrize('layer,y,x', [
    ('conv1', 0, 0), pytest.param('conv1', 109, 50, marks=SLOW),
    pytest.param('pool1', 0, 53, marks=SLOW), pytest.param('conv2', 3, 20, marks=SLOW),
    pytest.param('conv5', 0, 0, marks=SLOW), ('conv5', 5, 11),
    pytest.param('conv5', 11, 11, marks=SLOW)])
def test_receptive_field_is_the_support_of_the_units_gradient(layer, y, x):
  support = _gradient_support(ALL_CONV, ('conv1', 'pool1', 'conv2', 'conv5'), layer, y, x,
                              jnp.ones((1, 224, 224, 3)))
  np.testing.assert_array_equal(support, _window_mask(ALL_CONV, layer, y, x))


@pytest.mark.parametrize('layer,y,x', [pytest.param('conv2', 25, 0, marks=SLOW),
                                       ('conv5', 6, 6), pytest.param('pool5', 5, 5, marks=SLOW)])
def test_zfnet_gradients_stay_inside_the_receptive_field(layer, y, x):
  spec = architecture.zfnet(num_classes=2, conv_features=(4, 4, 4, 4, 4), fc_features=(2, 2))
  image = 1.0 + np.random.default_rng(3).uniform(size=(1, 224, 224, 3)).astype(np.float32)
  support = _gradient_support(spec, ('conv2', 'conv5', 'pool5'), layer, y, x, image)
  window = _window_mask(spec, layer, y, x)
  assert support.any() and not (support & ~window).any()
  rows, cols = np.nonzero(support)
  assert rows.max() - rows.min() > 0.5 * window.any(1).sum()  # reaches across the field


def test_receptive_field_values():
  spec = architecture.zfnet()
  assert architecture.receptive_field(spec, 'conv1', 0, 0) == ((0, 6), (0, 6))
  assert architecture.receptive_field(spec, 'conv1', 5, 109) == ((9, 16), (217, 224))
  assert architecture.receptive_field(spec, 'conv5', 6, 6) == ((47, 186), (47, 186))
  assert architecture.windows(spec, 'conv5')[-1] == ('input', architecture.Window(16, -49, 139))


def test_receptive_field_rejects_dense_layers():
  with pytest.raises(ValueError, match='not a spatial map layer'):
    architecture.receptive_field(architecture.zfnet(), 'fc6', 0, 0)


def test_unknown_model_name():
  with pytest.raises(ValueError, match='unknown model'):
    architecture.get('vgg', 10)
