"""Occlusion sensitivity: the incremental evaluation equals a full forward per position."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zfjax import architecture, deconv, models, occlusion
from testing_models import alive_variables, random_images

SPEC = architecture.zfnet(num_classes=10, conv_features=(12, 16, 24, 24, 16),
                          fc_features=(32, 32))


@pytest.fixture(scope='module')
def setup():
  model = models.ConvNet(SPEC)
  variables = jax.tree.map(lambda a: 0.5 * a, alive_variables(model))  # unsaturated softmax
  return model, variables, random_images(1)[0]


@pytest.mark.parametrize('patch,stride,fill,winograd', [
    (32, 16, 0.0, True), (48, 20, 0.0, False), (7, 29, 30.0, True), (224, 1, -50.0, False)])
def test_incremental_equals_naive(setup, patch, stride, fill, winograd):
  model, variables, image = setup
  slow = occlusion.sensitivity(model, variables, image, 3, patch=patch, stride=stride,
                               fill=fill, method='naive')
  rows = (224 - patch) // stride + 1
  # All positions in one chunk: one compiled loop body (no remainder), a shorter test.
  for fast in [occlusion.sensitivity(model, variables, image, 3, patch=patch, stride=stride,
                                     fill=fill, winograd=w, chunk_size=rows * rows)
               for w in {False, winograd}]:
    assert fast.prob.shape == fast.top_class.shape == fast.feature.shape == (rows, rows)
    np.testing.assert_allclose(fast.prob, slow.prob, atol=1e-5)
    np.testing.assert_array_equal(fast.top_class, slow.top_class)
    np.testing.assert_allclose(fast.feature, slow.feature, rtol=1e-5,
                               atol=1e-5 * float(slow.unoccluded_feature))
    assert float(jnp.abs(fast.prob - fast.unoccluded_prob).max()) > 1e-4  # it matters


@pytest.mark.parametrize('patch,tiles', [
    (32, {'conv2': 4, 'conv3': 4, 'conv4': 3, 'conv5': 4}),
    (7, {'conv2': 3, 'conv3': 3, 'conv4': 4, 'conv5': 4}),
    (224, {'conv2': 2})])  # conv3-5's whole 13x13 maps: no tile size fits
def test_winograd_plan(patch, tiles):
  """winograd=True: the windows of conv2-5 (ceil(kernel / stride) = 3) by F(m x m, 3 x 3),
  m with the fewest multiplies, each window rounded up to whole tiles inside its map."""
  plan = occlusion._plan(SPEC, (224, 224, 3), patch, winograd=True)
  assert {step.record.name: step.tile for step in plan if step.tile} == tiles
  for step in plan:
    m = step.tile or 1
    assert all(c % m == 0 and s <= c < s + m and c <= n for c, s, n in
               zip(step.computed_size, step.size, step.map_size))


@pytest.mark.parametrize('m', [2, 3, 4])
def test_winograd_matrices_are_minimal_filtering(m):
  """y = A^T [(G g) * (B^T d)] is the valid correlation of m + 2 inputs with 3 taps."""
  a_t, g, b_t = occlusion._winograd_matrices(m)
  assert a_t.shape == (m, m + 2) and g.shape == (m + 2, 3) and b_t.shape == (m + 2, m + 2)
  rng = np.random.default_rng(m)
  for _ in range(5):
    d, taps = rng.normal(size=m + 2), rng.normal(size=3)
    np.testing.assert_allclose(a_t @ ((g @ taps) * (b_t @ d)), np.correlate(d, taps, 'valid'),
                               rtol=1e-12, atol=1e-12)


def test_maps_mean_what_the_paper_says(setup):
  model, variables, image = setup
  maps = occlusion.sensitivity(model, variables, image, 3, patch=64, stride=32)
  acts = models.activations(model, variables, image[None], ('conv5', 'fc8'))
  conv5 = acts['conv5'][0]
  assert int(maps.channel) == int(jnp.argmax(conv5.reshape(-1, 16).max(0)))
  np.testing.assert_allclose(maps.unoccluded_feature, conv5[..., maps.channel].sum(), rtol=1e-6)
  np.testing.assert_allclose(maps.unoccluded_prob, jax.nn.softmax(acts['fc8'][0])[3], rtol=1e-6)
  # Occluding position (0, 0) by hand gives the same probability.
  occluded = image.at[:64, :64].set(0.0)
  logits = model.apply(variables, occluded[None])[0]
  np.testing.assert_allclose(maps.prob[0, 0], jax.nn.softmax(logits)[3], rtol=1e-5)
  assert int(maps.top_class[0, 0]) == int(jnp.argmax(logits))
  projection = deconv.project(model, variables, image[None], 'conv5', maps.channel[None])
  np.testing.assert_allclose(maps.projection, projection[0, 0], rtol=1e-6)


def test_field_threshold_one_is_exact_and_smaller_ones_approximate(setup):
  model, variables, image = setup
  exact = occlusion.sensitivity(model, variables, image, 3, patch=32, stride=24)
  same = occlusion.sensitivity(model, variables, image, 3, patch=32, stride=24,
                               field_threshold=1.0)
  np.testing.assert_array_equal(same.prob, exact.prob)
  rough = occlusion.sensitivity(model, variables, image, 3, patch=32, stride=24,
                                field_threshold=0.3)
  assert rough.prob.shape == exact.prob.shape and bool(jnp.isfinite(rough.prob).all())
  assert 0 < float(jnp.abs(rough.prob - exact.prob).max()) < 0.5   # approximate, not wild


@pytest.mark.parametrize('spec,winograd', [
    (architecture.alexnet(num_classes=5, conv_features=(8, 8, 8, 8, 8), fc_features=(8, 8)),
     True),   # AlexNet's conv1 (11x11, stride 4) is Winograd's too
    (architecture.zfnet(num_classes=5, conv_features=(8, 8, 8, 8, 8), fc_features=(8, 8),
                        norm_before_pool=True), False),
], ids=['alexnet', 'norm_before_pool'])
def test_incremental_equals_naive_on_other_variants(spec, winograd):
  model = models.ConvNet(spec)
  variables = jax.tree.map(lambda a: 0.5 * a, alive_variables(model))
  image = random_images(1, seed=3)[0]
  slow = occlusion.sensitivity(model, variables, image, 1, patch=40, stride=24, layer='conv3',
                               method='naive')
  for w in {False, winograd}:
    fast = occlusion.sensitivity(model, variables, image, 1, patch=40, stride=24,
                                 layer='conv3', winograd=w)
    np.testing.assert_allclose(fast.prob, slow.prob, atol=1e-5)
    np.testing.assert_allclose(fast.feature, slow.feature, rtol=1e-5,
                               atol=1e-5 * float(slow.unoccluded_feature))


@pytest.mark.parametrize('kwargs,message', [
    (dict(patch=225), 'patch 225 is larger than the image'),
    (dict(patch=0), 'patch and stride must be positive'),
    (dict(stride=-1), 'patch and stride must be positive'),
    (dict(label=10), 'label 10 out of range'),
    (dict(layer='pool5'), "unknown feature layer 'pool5'"),
    (dict(method='fast'), "unknown method 'fast'"),
    (dict(field_threshold=0.0), 'field_threshold must be in'),
    (dict(field_threshold=0.5, method='naive'), 'field_threshold must be in'),
    (dict(winograd='yes'), 'winograd must be True or False'),
    (dict(winograd=True, method='naive'), 'winograd must be True or False'),
    (dict(image=jnp.zeros((1, 224, 224, 3))), r'one \(H, W, 3\) image'),
    (dict(image=jnp.zeros((224, 224))), r'one \(H, W, 3\) image'),
])
def test_bad_input_is_a_clear_value_error(setup, kwargs, message):
  model, variables, image = setup
  args = dict(image=image, label=3)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    occlusion.sensitivity(model, variables, args.pop('image'), args.pop('label'), **args)
