"""zfjax's deconvnet against an independent PyTorch one (tools/torch_zfnet.py).

Two groups:
- the torch reference checked against itself and against zfjax's forward pass: the
  literal deconvnet (switches, scatter-add unpooling, rectify, transposed filters) equals
  autograd with a relu(g) ReLU backward and an identity normalization backward; torch's
  pooling breaks ties at the first maximum; load_flax_params reproduces zfjax's maps and
  logits; Captum's NeuronDeconvolution agrees once its normalization backward is identity.
- zfjax.deconv.project against the reference: conv layers, both methods, the three rules,
  zero outside the receptive field, and tied pooling windows on blank input.

Widths: the full tier (--full) uses ZFNet's conv widths (96, 256, 384, 384, 256) and
channels (0, 5, 17). The default tier uses narrow maps (12, 16, 24, 24, 16), channels
(0, 5, 11) and the full geometry (the network of tests/test_deconv.py, so that a test
session compiles each projection once) and projects from conv1, conv2 and conv5 (guided
and plain backprop from conv5); the rest of the grid is marked slow. The fc layers are
narrow: they play no part in projections.

Weights are He-normal with small random biases and images uniform on [-100, 100] (the
paper's normal(1e-2) init leaves conv5 nearly dead). Errors are max |a - b| / max |b| per
projection.
"""

import pathlib
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import captum.attr  # noqa: F401  (tz.captum_projection uses it)
import torch
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'tools'))
import torch_zfnet as tz  # pylint: disable=wrong-import-position

from zfjax import architecture, deconv, models  # pylint: disable=wrong-import-position
from testing_models import FULL  # pylint: disable=wrong-import-position

# Compiled as users do in the default tier too (conftest.py): the gradient form's
# full-size transposed convolutions run far slower at XLA's lowest optimization level
# (test_tied_pooling_windows_match_torch[conv5-gradient]: 19.7 s instead of 0.3).
pytestmark = pytest.mark.optimized

LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
if FULL:
  CONV, CHANNELS, NUM_CLASSES, FC = (96, 256, 384, 384, 256), (0, 5, 17), 10, (64, 64)
else:
  CONV, CHANNELS, NUM_CLASSES, FC = (12, 16, 24, 24, 16), (0, 5, 11), 4, (8, 8)
TOLERANCE = 1e-4
slow = pytest.mark.slow


# ---------------------------------------------------------------------------- fixtures


class Setup:
  """One set of weights in both frameworks and a batch of images in both layouts."""

  def __init__(self, images, bias_range=(0.0, 0.1), seed=0, **model_kwargs):
    self.params = tz.random_flax_params(num_classes=NUM_CLASSES, conv_features=CONV,
                                        fc_features=FC, seed=seed, bias_range=bias_range)
    self.model = models.ZFNet(num_classes=NUM_CLASSES, conv_features=CONV, fc_features=FC,
                              **model_kwargs)
    self.variables = {'params': jax.tree.map(jnp.asarray, self.params)}
    self.torch_model = tz.load_flax_params(
        tz.TorchZFNet(NUM_CLASSES, conv_features=CONV, fc_features=FC, **model_kwargs).eval(),
        self.params)
    self.images = images                      # (N, 224, 224, 3) numpy
    self.torch_images = tz.to_nchw(images)    # (N, 3, 224, 224)
    self._references = {}

  def reference(self, layer, rule='deconvnet'):
    """(N, K, 224, 224, 3) torch projections (cached)."""
    if (layer, rule) not in self._references:
      if rule == 'deconvnet':
        out = tz.literal_deconvnet(self.torch_model, self.torch_images, layer, CHANNELS)
      else:
        out = tz.autograd_projection(self.torch_model, self.torch_images, layer, CHANNELS,
                                     rule)
      self._references[layer, rule] = out.numpy().transpose(0, 1, 3, 4, 2)
    return self._references[layer, rule]


@pytest.fixture(scope='module')
def setup():
  return Setup(tz.random_images(2, seed=0))


@pytest.fixture(scope='module')
def blank_setup():
  """Image 0 all zeros, image 1 zero outside its top-left quadrant, biases of both signs.

  conv1 is exactly its bias (or 0) on the blank parts, so most pooling windows are exact
  ties (constants or post-ReLU zeros) and the tie rule decides the switches."""
  images = tz.random_images(2, seed=1)
  images[0] = 0
  images[1, 112:] = 0
  images[1, :, 112:] = 0
  return Setup(images, bias_range=(-1.0, 0.5))


@pytest.fixture(scope='module')
def project():
  """project(setup, layer, rule, method) -> (N, K, 224, 224, 3) numpy, cached."""
  cache = {}

  def run(s, layer, rule='deconvnet', method=None):
    key = (id(s), layer, rule, method)
    if key not in cache:
      kwargs = {} if method is None else {'method': method}
      out = deconv.project(s.model, s.variables, jnp.asarray(s.images), layer=layer,
                           channels=jnp.array(CHANNELS), rule=rule, **kwargs)
      cache[key] = np.asarray(out)
    return cache[key]
  return run


def assert_close(actual, reference, tolerance=TOLERANCE):
  """Per projection: max abs error / max abs of the reference projection <= tolerance.

  A projection that is zero in the reference must be (nearly) zero."""
  assert actual.shape == reference.shape, (actual.shape, reference.shape)
  floor = 1e-6 * np.abs(reference).max()
  for n in range(reference.shape[0]):
    for k in range(reference.shape[1]):
      a, b = actual[n, k], reference[n, k]
      scale = max(np.abs(b).max(), floor)
      error = np.abs(a - b).max() / scale
      assert error <= tolerance, (f'image {n}, channel {CHANNELS[k]}: relative error '
                                  f'{error:.3g} (max |ref| {np.abs(b).max():.3g})')


# ------------------------------------------------------------- the torch reference itself


@pytest.mark.parametrize('norm_before_pool', [False, True])
def test_torch_model_geometry_matches_architecture(norm_before_pool):
  spec = architecture.zfnet(NUM_CLASSES, conv_features=CONV, fc_features=FC,
                            norm_before_pool=norm_before_pool)
  model = tz.TorchZFNet(NUM_CLASSES, conv_features=CONV, fc_features=FC,
                        norm_before_pool=norm_before_pool)
  assert model.order == architecture.map_names(spec)
  for name, (c, h, w) in model.map_shapes.items():
    assert architecture.shapes(spec)[name] == (h, w, c), name
  n_params = sum(p.numel() for p in model.parameters())
  assert n_params == architecture.num_params(spec)


def test_full_size_parameter_count():
  model = tz.TorchZFNet(1000)
  assert sum(p.numel() for p in model.parameters()) == 62_357_608


def test_random_params_have_init_structure():
  model = models.ZFNet(num_classes=NUM_CLASSES, conv_features=CONV, fc_features=FC)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  ours = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                      {'params': tz.random_flax_params(num_classes=NUM_CLASSES,
                                                       conv_features=CONV, fc_features=FC)})
  assert jax.tree.structure(shapes) == jax.tree.structure(ours)
  assert jax.tree.leaves(shapes) == jax.tree.leaves(ours)


@pytest.mark.parametrize('norm_before_pool', [False, True])
def test_load_flax_params_reproduces_zfjax_forward(norm_before_pool):
  s = Setup(tz.random_images(1, seed=3), norm_before_pool=norm_before_pool)
  names = s.torch_model.order
  maps = models.activations(s.model, s.variables, s.images, names)
  with torch.no_grad():
    x = s.torch_images
    for name in names:
      x = s.torch_model.layer(name)(x)
      np.testing.assert_allclose(x.numpy().transpose(0, 2, 3, 1), maps[name],
                                 rtol=1e-4, atol=1e-4 * float(x.abs().max()), err_msg=name)
    logits = s.torch_model(s.torch_images).numpy()
  expected = s.model.apply(s.variables, s.images)
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(logits).max())


def test_activations_are_alive(setup):
  """The test weights leave every layer alive.

  The test weights give every layer real, distinct activations (not the dead conv5 of
  the paper's init): most channels have a positive maximum."""
  with torch.no_grad():
    x = setup.torch_images
    for name in setup.torch_model.order:
      x = setup.torch_model.layer(name)(x)
      if name.startswith('conv'):
        alive = (x.flatten(2).max(2).values > 0).float().mean()
        assert alive > 0.8, (name, float(alive))


def test_torch_pooling_ties_go_to_first_maximum():
  x = torch.tensor([[[[1., 1., 1., 0.], [1., 1., 1., 0.], [0., 0., 0., 0.]]]])
  _, indices = tz.max_pool(x, return_indices=True)
  assert indices.flatten().tolist() == [0, 2]  # windows at columns 0 and 2 (overhang)
  rng = torch.Generator().manual_seed(0)
  maps = torch.randint(0, 3, (2, 4, 27, 26), generator=rng).float()  # many ties
  np.testing.assert_array_equal(tz.max_pool(maps, return_indices=True)[1],
                                tz.window_switches(maps))
  assert not torch.equal(tz.window_switches(maps), tz.window_switches(maps, last=True))
  assert torch.argmax(torch.tensor([0., 2., 2.])) == 1


def test_unpool_adds_values_of_windows_sharing_a_switch():
  x = torch.tensor([[[[0., 0., 9., 0., 0.]]]])  # both 3-wide windows pick column 2
  pooled, switches = F_pool_1d(x)
  assert switches.flatten().tolist() == [2, 2]
  signal = torch.tensor([[[[1., 2.]]]])
  out = tz.unpool(signal, switches, x.shape)
  assert out.flatten().tolist() == [0., 0., 3., 0., 0.]
  overwritten = torch.nn.functional.max_unpool2d(signal, switches, (1, 3), (1, 2),
                                                 output_size=x.shape[-2:])
  assert overwritten.sum() != 3.0  # why the reference does not use max_unpool2d
  assert pooled.flatten().tolist() == [9., 9.]


def F_pool_1d(x):  # pylint: disable=invalid-name
  """(1, 3) windows, stride (1, 2): the row version of 3x3/2 pooling."""
  return torch.nn.functional.max_pool2d(x, (1, 3), (1, 2), return_indices=True)


@pytest.mark.parametrize('layer', ['conv2', 'conv5'])
def test_literal_deconvnet_equals_autograd_with_modified_backward(setup, layer):
  literal = setup.reference(layer)
  hooked = tz.autograd_projection(setup.torch_model, setup.torch_images, layer, CHANNELS)
  assert_close(hooked.numpy().transpose(0, 1, 3, 4, 2), literal, 1e-5)
  assert np.abs(literal).max() > 0


def test_literal_deconvnet_equals_autograd_on_tied_input(blank_setup):
  literal = blank_setup.reference('conv5')
  hooked = tz.autograd_projection(blank_setup.torch_model, blank_setup.torch_images,
                                  'conv5', CHANNELS)
  assert_close(hooked.numpy().transpose(0, 1, 3, 4, 2), literal, 1e-5)


def test_rules_agree_at_conv1(setup):
  """Below conv1's own ReLU there is nothing to rectify.

  All three rules give the seed times conv1's filter."""
  deconvnet = setup.reference('conv1')
  for rule in ('guided', 'backprop'):
    assert_close(setup.reference('conv1', rule), deconvnet, 1e-5)


def test_rules_differ_at_conv5(setup):
  references = [setup.reference('conv5', rule) for rule in tz.RULES]
  for i in range(3):
    for j in range(i):
      error = tz.relative_error(references[i], references[j])
      assert error > 1e-2, (tz.RULES[i], tz.RULES[j], error)


@pytest.mark.parametrize('rule', tz.RULES)
def test_captum_matches_reference(setup, rule):
  """Captum's deconvnet, guided backprop and gradient agree with the reference.

  Captum's NeuronDeconvolution / NeuronGuidedBackprop / NeuronGradient agree with the
  reference; the deconvnet needs the identity normalization backward (Captum only hooks
  ReLUs), guided and backprop use the true one."""
  norm_backward = 'identity' if rule == 'deconvnet' else 'true'
  model = tz.load_flax_params(
      tz.TorchZFNet(NUM_CLASSES, conv_features=CONV, fc_features=FC,
                    norm_backward=norm_backward).eval(), setup.params)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    captum = tz.captum_projection(model, setup.torch_images, 'conv5', CHANNELS, rule)
  assert_close(captum.numpy().transpose(0, 1, 3, 4, 2), setup.reference('conv5', rule), 1e-5)


def test_tie_rule_changes_projections(blank_setup):
  """The tied-input tests can tell a first-maximum rule from a last-maximum one."""
  first = blank_setup.reference('conv2')
  last = tz.literal_deconvnet(blank_setup.torch_model, blank_setup.torch_images, 'conv2',
                              CHANNELS, ties='last').numpy().transpose(0, 1, 3, 4, 2)
  assert tz.relative_error(last, first) > 1e-2


# ------------------------------------------------------------------- zfjax.deconv against it


# Default tier: conv1, conv2 and conv5 (the programs the tied-input test compiles too);
# conv3 and conv4, whose cones are between, in the full tier.
@pytest.mark.parametrize('method', ['literal', 'gradient'])
@pytest.mark.parametrize('layer', ['conv1', 'conv2', pytest.param('conv3', marks=slow),
                                   pytest.param('conv4', marks=slow), 'conv5'])
def test_deconvnet_matches_torch_literal(setup, project, layer, method):
  assert_close(project(setup, layer, 'deconvnet', method), setup.reference(layer))


@pytest.mark.parametrize('rule', ['guided', 'backprop'])
@pytest.mark.parametrize('layer', [pytest.param('conv2', marks=slow), 'conv5'])
def test_guided_and_backprop_match_torch_autograd(setup, project, layer, rule):
  assert_close(project(setup, layer, rule), setup.reference(layer, rule))


def test_default_method_matches_torch_literal(setup, project):
  assert_close(project(setup, 'conv5'), setup.reference('conv5'))


@pytest.mark.parametrize('layer,rule', [
    ('conv2', 'deconvnet'), pytest.param('conv2', 'guided', marks=slow),
    pytest.param('conv2', 'backprop', marks=slow),
    ('conv5', 'deconvnet'), ('conv5', 'guided'), ('conv5', 'backprop')])
def test_projection_is_zero_outside_receptive_field(setup, project, layer, rule):
  proj = project(setup, layer, rule)
  where = tz.channel_argmax(setup.torch_model, setup.torch_images, layer, CHANNELS)
  for n in range(proj.shape[0]):
    for k in range(proj.shape[1]):
      rows, cols = pixel_box(setup.model.spec, layer, *where[n, k])
      outside = np.ones(proj.shape[2:4], bool)
      outside[slice(*rows), slice(*cols)] = False
      assert not np.any(proj[n, k][outside]), (n, k, rows, cols)
  assert np.abs(proj).max() > 0


def pixel_box(spec, layer, y, x):
  """A unit's receptive field, clipped to the image.

  ((row_start, row_stop), (col_start, col_stop)) of a unit's receptive field, clipped
  to the image (accepts the older ((row_start, col_start), size) form too)."""
  first, second = architecture.receptive_field(spec, layer, int(y), int(x))
  if not isinstance(second, tuple):  # ((row_start, col_start), size), unclipped
    (row, col), size = first, second
    first, second = (row, row + size), (col, col + size)
  return tuple((max(0, int(a)), int(b)) for a, b in (first, second))


@pytest.mark.parametrize('method', ['literal', 'gradient'])
@pytest.mark.parametrize('layer', ['conv1', 'conv2', 'conv5'])
def test_tied_pooling_windows_match_torch(blank_setup, project, layer, method):
  """Blank input: most pooling windows are exact ties.

  Switches go to the first maximum in row-major order, as in torch."""
  assert_close(project(blank_setup, layer, 'deconvnet', method), blank_setup.reference(layer))
