"""The deconvnet: cone path against gradient, switches, unpooling, rules, bad input.

The deconvnet: the literal cone path against the gradient formulation, switches,
unpooling, the rules and bad input. (tests/test_deconv_torch.py checks against an
independent PyTorch deconvnet.)

Each (layer, rule, method, batch shape) compiles its own program: the default tier's
checks share a few (the deconvnet from conv1, conv2 and conv5 and guided backpropagation
from conv5, both methods, two images and CHANNELS: the network and programs of the default
tier of tests/test_deconv_torch.py); the rest of the grid, the blank image and the other
variants are marked slow."""

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zfjax import architecture, deconv, deconv_ops, fast_ops, models
from testing_models import alive_variables, random_images

# Compiled as users do in the default tier too (conftest.py): the gradient form's
# full-size transposed convolutions run far slower at XLA's lowest optimization level
# (test_literal_equals_gradient_formulation[conv2-deconvnet]: 22 s instead of 0.3).
pytestmark = pytest.mark.optimized

# Full ZFNet conv geometry, narrow maps: fast, and the cones are the paper's.
SPEC = architecture.zfnet(num_classes=4, conv_features=(12, 16, 24, 24, 16),
                          fc_features=(8, 8))
CHANNELS = jnp.array([0, 5, 11])
slow = pytest.mark.slow
# Default tier: the deconvnet at conv1, conv2 and conv5 (whose cone crosses every kind of
# layer) and guided backpropagation at conv5 (the two rules with a custom ReLU backward);
# the other cells in the full tier (the plain gradient's 'gradient' method is jax.grad).
DEFAULT_CELLS = {('conv1', 'deconvnet'), ('conv2', 'deconvnet'), ('conv5', 'deconvnet'),
                 ('conv5', 'guided')}


def test_this_file_compiles_as_users_do():
  """Marked `optimized`: conftest leaves XLA's optimizations on here, in both tiers."""
  assert not jax.config.read('jax_disable_most_optimizations')


@pytest.fixture(scope='module')
def setup():
  model = models.ConvNet(SPEC)
  return model, alive_variables(model), random_images(2)


@pytest.mark.parametrize('layer,rule', [
    pytest.param(layer, rule, marks=() if (layer, rule) in DEFAULT_CELLS else slow)
    for layer in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5') for rule in deconv.RULES])
def test_literal_equals_gradient_formulation(setup, layer, rule):
  model, variables, images = setup
  literal = deconv.project(model, variables, images, layer, CHANNELS, rule=rule)
  gradient = deconv.project(model, variables, images, layer, CHANNELS, rule=rule,
                            method='gradient')
  assert literal.shape == (2, 3, 224, 224, 3)
  scale = float(jnp.abs(gradient).max())
  assert scale > 0
  np.testing.assert_allclose(literal, gradient, atol=1e-5 * scale)


def test_rules_differ_and_deconvnet_ignores_forward_signs(setup):
  model, variables, images = setup
  out = {rule: deconv.project(model, variables, images, 'conv5', CHANNELS, rule=rule)
         for rule in deconv.RULES}
  assert not np.allclose(out['deconvnet'], out['guided'])
  assert not np.allclose(out['guided'], out['backprop'])
  # The deconvnet's ReLU backward rectifies the signal but never looks at the forward
  # signs, so it is not the gradient.
  assert float(jnp.abs(out['deconvnet'] - out['backprop']).max()) > 1e-3


def test_projection_is_the_seed_times_the_filter_at_conv1(setup):
  """conv1's projection is the channel's transposed filter times the activation.

  conv1: the transposed filter of the channel, scaled by the activation, placed at
  the unit's receptive field (one step of the chain, checked by hand)."""
  model, variables, images = setup
  acts = models.activations(model, variables, images[:1], ('conv1',))['conv1'][0]
  channel = 5
  assert int(CHANNELS[1]) == channel
  flat = int(jnp.argmax(acts[..., channel]))
  y, x = divmod(flat, acts.shape[1])
  value = float(acts[y, x, channel])
  # Image 0, CHANNELS[1]: the program of the other tests (both images, CHANNELS).
  proj = np.asarray(deconv.project(model, variables, images, 'conv1', CHANNELS))[0, 1]
  kernel = np.asarray(variables['params']['conv1']['kernel'])[..., channel]   # (7, 7, 3)
  expected = np.zeros((226, 226, 3), np.float32)                              # padded image
  expected[2 * y:2 * y + 7, 2 * x:2 * x + 7] = value * kernel
  np.testing.assert_allclose(proj, expected[1:225, 1:225], rtol=1e-5, atol=1e-5)


# conv2's cone (conv, norm, pool, conv) and conv4's in the full tier (the default one
# checks project_units through topk: tests/test_topk.py, conv1).
@pytest.mark.parametrize('layer', [pytest.param('conv2', marks=slow),
                                   pytest.param('conv4', marks=slow)])
def test_project_units_equals_project_for_the_strongest(setup, layer):
  model, variables, images = setup
  acts = models.activations(model, variables, images, (layer,))[layer]
  units = deconv.strongest(acts, CHANNELS)
  by_units = deconv.project_units(model, variables, images, layer, units.image,
                                  units.channel, units.y, units.x)
  grid = deconv.project(model, variables, images, layer, CHANNELS)
  np.testing.assert_allclose(by_units.reshape(grid.shape), grid, rtol=1e-6, atol=1e-6)
  by_gradient = deconv.project_units(model, variables, images, layer, units.image,
                                     units.channel, units.y, units.x, method='gradient')
  np.testing.assert_allclose(by_gradient.reshape(grid.shape), grid, atol=1e-5 * float(
      jnp.abs(grid).max()))


# Units on the maps' corners and edges: their windows hang over the border, where the
# literal path relies on the padded switches (-1) and masks. conv2 with 6 units reuses the
# program of the test above; conv5 in chunks of 4 (one full chunk and a remainder of 2).
@pytest.mark.parametrize('layer,chunk_size', [
    ('conv2', 64), pytest.param('conv5', 4, marks=pytest.mark.slow)])
def test_border_units_literal_equals_gradient(setup, layer, chunk_size):
  model, variables, images = setup
  last = architecture.shapes(model.spec)[layer][0] - 1
  image, channel = [0, 1, 0, 1, 0, 1], [0, 5, 11, 3, 7, 2]
  y, x = [0, 0, last, last, 0, last // 2], [0, last, 0, last, last // 2, 1]
  literal = deconv.project_units(model, variables, images, layer, image, channel, y, x,
                                 chunk_size=chunk_size)
  gradient = deconv.project_units(model, variables, images, layer, image, channel, y, x,
                                  method='gradient', chunk_size=chunk_size)
  scale = float(jnp.abs(gradient).max())
  assert scale > 0 and literal.shape == (6, 224, 224, 3)
  np.testing.assert_allclose(literal, gradient, atol=1e-5 * scale)


@pytest.mark.parametrize('kernel,stride,cin,cout,size', [
    (7, 2, 3, 12, 9),    # conv1's shape: patches channel-major, adds along columns
    (5, 2, 16, 24, 4),   # conv2's: patches channel-last, adds along channels
    (3, 1, 24, 16, 3)])  # conv3-5's
def test_gemm_overlap_add_equals_transpose_conv(kernel, stride, cin, cout, size):
  rng = np.random.default_rng(0)
  signal = jnp.asarray(rng.standard_normal((3, size, size + 1, cout)), jnp.float32)
  weights = jnp.asarray(rng.standard_normal((kernel, kernel, cin, cout)), jnp.float32)
  record = architecture.Conv('conv', cout, kernel, stride)
  expected = deconv.transpose_conv(signal, weights, record)
  actual = jax.jit(deconv_ops.transpose_conv_batch, static_argnums=2)(signal, weights, stride)
  assert actual.shape == expected.shape == (3, (size - 1) * stride + kernel,
                                            size * stride + kernel, cin)
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * float(
      jnp.abs(expected).max()))


def test_strongest_ties_go_to_the_first_in_row_major_order():
  feature_map = jnp.zeros((1, 4, 5, 2)).at[0, 1, 3, 0].set(2.0).at[0, 2, 1, 0].set(2.0)
  units = deconv.strongest(feature_map, jnp.array([0, 1]))
  assert (units.y.tolist(), units.x.tolist(), units.value.tolist()) == ([1, 0], [3, 0],
                                                                        [2.0, 0.0])


@pytest.mark.parametrize('two_pass', [True, False], ids=['two-pass', 'argmax'])
def test_first_maximum_is_argmax_with_ties_infinities_and_nans(two_pass, monkeypatch):
  if not two_pass:  # the single pass that large arrays take
    monkeypatch.setattr(deconv_ops, 'TWO_PASS_BYTES', 0)
  rng = np.random.default_rng(0)
  x = rng.integers(-2, 3, (3, 40, 5)).astype(np.float32)  # many ties
  x[0, :, 1] = -np.inf
  x[1, 7, 2], x[1, 30, 2], x[2, :, 3] = np.nan, np.nan, np.inf
  for axis in (0, 1, -1):
    value, index = deconv_ops.first_maximum(jnp.asarray(x), axis)  # eager: the branch taken now
    np.testing.assert_array_equal(index, np.argmax(x, axis=axis))
    np.testing.assert_array_equal(value, np.max(x, axis=axis))
    assert index.dtype == jnp.int32


def test_switches_pick_the_first_maximum_of_each_window():
  record = architecture.Pool('pool')
  x = jnp.array([[0., 5., 5., 1., 0.],
                 [0., 1., 2., 9., 0.],
                 [0., 0., 0., 0., 0.],
                 [0., 0., 0., 0., 0.],
                 [7., 0., 0., 0., 7.]]).reshape(1, 5, 5, 1)
  where = deconv.switches(x, record)[0, ..., 0]
  # windows (rows 0-2, cols 0-2): first 5 at (0, 1); (rows 0-2, cols 2-4): 9 at (1, 1);
  # (rows 2-4, cols 0-2): 7 at (2, 0); (rows 2-4, cols 2-4): 7 at (2, 2).
  np.testing.assert_array_equal(where, [[1, 4], [6, 8]])
  zeros = deconv.switches(jnp.zeros((1, 110, 110, 3)), record)
  assert zeros.shape == (1, 55, 55, 3) and int(jnp.abs(zeros).max()) == 0


def test_switches_agree_with_the_pool_and_ignore_the_overhang():
  record = architecture.Pool('pool1')
  x = np.random.default_rng(0).standard_normal((2, 110, 110, 4)).astype(np.float32)
  # One compiled program (not one per operation); the checks in NumPy.
  where, pooled = map(np.asarray, jax.jit(lambda x: (deconv.switches(x, record),
                                                     models.max_pool(x, record)))(x))
  dy, dx = where // 3, where % 3
  rows = 2 * np.arange(55)[None, :, None, None] + dy
  cols = 2 * np.arange(55)[None, None, :, None] + dx
  assert int(rows.max()) <= 109 and int(cols.max()) <= 109
  picked = x[np.arange(2)[:, None, None, None], rows, cols, np.arange(4)]
  np.testing.assert_array_equal(picked, pooled)


def test_unpool_adds_values_that_share_a_switch():
  record = architecture.Pool('pool')
  # Both windows along a row (cols 0-2 and 2-4) chose column 2: their values add there.
  signal = jnp.array([[3.0, 4.0]]).reshape(1, 2, 1)
  where = jnp.array([[2, 0]]).reshape(1, 2, 1)
  out = deconv.unpool(signal[None], where[None], record)[0, ..., 0]
  assert out.shape == (3, 5)
  expected = np.zeros((3, 5))
  expected[0, 2] = 7.0
  np.testing.assert_array_equal(out, expected)


# The full tier: the default tier's blank image is tests/test_deconv_torch.py's
# test_tied_pooling_windows_match_torch (an all-zero image, both methods, exact ties).
@pytest.mark.slow
def test_all_zero_image_gives_finite_zero_free_ties(setup):
  model, variables, _ = setup
  # One image: the literal method runs its forward pass on the batch, the gradient method
  # on one image at a time, and from conv2 up a blank image's nearly constant maps round
  # differently in a batch of two (by ~1e-8): near-ties that rounding decides are no test
  # of the tie rule (tests/test_deconv_torch.py has exact ties).
  # Both forward passes on lax's convolution too (fast_ops' matrix products round
  # differently on large maps).
  images = jnp.zeros((1, 224, 224, 3))
  with mock.patch.object(fast_ops, 'LARGE_PATCH_BYTES', float('inf')):
    out = {method: deconv.project(model, variables, images, 'conv5', CHANNELS, method=method)
           for method in deconv.METHODS}
  for method in deconv.METHODS:
    assert bool(jnp.isfinite(out[method]).all())
  literal, gradient = out['literal'], out['gradient']
  np.testing.assert_allclose(literal, gradient, atol=1e-5 * (float(jnp.abs(gradient).max())
                                                             + 1e-12))


# Other layer orders and geometries, each a new network to initialize and two programs to
# compile: the full tier (the default tier runs the same code on ZFNet).
@pytest.mark.slow
@pytest.mark.parametrize('spec', [
    architecture.alexnet(num_classes=3, conv_features=(8, 8, 8, 8, 8), fc_features=(4, 4)),
    architecture.zfnet(num_classes=3, conv_features=(8, 8, 8, 8, 8), fc_features=(4, 4),
                       norm_before_pool=True),
    architecture.without(architecture.zfnet(num_classes=3, conv_features=(8, 8, 8, 8, 8),
                                            fc_features=(4, 4)), 'conv3', 'conv4'),
], ids=['alexnet', 'norm_before_pool', 'without_conv3_conv4'])
def test_other_variants_literal_equals_gradient(spec):
  model = models.ConvNet(spec)
  variables = alive_variables(model)
  images = random_images(1)
  for rule in ('deconvnet',):
    literal = deconv.project(model, variables, images, 'conv5', jnp.arange(3), rule=rule)
    gradient = deconv.project(model, variables, images, 'conv5', jnp.arange(3), rule=rule,
                              method='gradient')
    np.testing.assert_allclose(literal, gradient, atol=1e-5 * float(jnp.abs(gradient).max()))


@pytest.mark.parametrize('kwargs,message', [
    (dict(layer='pool2'), "cannot project from layer 'pool2'"),
    (dict(layer='conv9'), "cannot project from layer 'conv9'"),
    (dict(channels=[16]), r'channels out of range: got values in \[16, 16\] but conv5 has 16'),
    (dict(channels=[-1]), 'channels out of range'),
    (dict(channels=[[0, 1]]), '1-D array of integer'),
    (dict(channels=[0.5]), '1-D array of integer'),
    (dict(rule='lrp'), "unknown rule 'lrp'"),
    (dict(method='fast'), "unknown method 'fast'"),
    (dict(images=jnp.zeros((224, 224, 3))), 'rank 4'),
    (dict(images=jnp.zeros((1, 224, 224, 4))), '3 color channels'),
    (dict(images=jnp.zeros((1, 200, 200, 3))), 'fc6 was initialized for 576 input features'),
])
def test_bad_input_is_a_clear_value_error(setup, kwargs, message):
  model, variables, images = setup
  args = dict(images=images[:1], layer='conv5', channels=[0])
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    deconv.project(model, variables, args.pop('images'), args.pop('layer'),
                   args.pop('channels'), **args)


def test_project_units_rejects_positions_outside_the_map(setup):
  model, variables, images = setup
  with pytest.raises(ValueError, match=r'y out of range.*13'):
    deconv.project_units(model, variables, images, 'conv5', [0], [0], [13], [0])
  with pytest.raises(ValueError, match='image out of range'):
    deconv.project_units(model, variables, images, 'conv5', [2], [0], [0], [0])
  with pytest.raises(ValueError, match='one entry per unit'):
    deconv.project_units(model, variables, images, 'conv5', [0, 1], [0], [0], [0])


def test_empty_channel_list(setup):
  model, variables, images = setup
  out = deconv.project(model, variables, images, 'conv2', jnp.zeros((0,), jnp.int32))
  assert out.shape == (2, 0, 224, 224, 3)
