"""Invariance sweeps (Fig. 5).

The transforms' exact cases and directions, the sweep's distances and probabilities, and bad
input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
import skimage.transform

from zfjax import architecture, invariance, models
from testing_models import alive_variables, random_images

# ZFNet's geometry with narrow maps (224 inputs), and a tiny 32x32 model for the
# semantics that do not need the paper's geometry: the networks, weights and images of
# tests/test_deconv.py and tests/test_correspondence.py, which a test session then
# initializes once.
SPEC = architecture.zfnet(num_classes=4, conv_features=(12, 16, 24, 24, 16), fc_features=(8, 8))
SMALL_SPEC = architecture.small_zfnet(num_classes=5, conv_features=(4, 4, 4, 4, 6),
                                      fc_features=(8, 8))


@pytest.fixture(scope='module')
def small():
  model = models.ConvNet(SMALL_SPEC)
  return model, alive_variables(model, image_size=32), images32(3)


def images32(n):
  """n <= 4 random 32x32 images: the first of one draw of four (one compiled program)."""
  return random_images(4, size=32)[:n]


def astronaut():
  """skimage's astronaut at 224x224 on the 0-255 scale, minus its mean pixel."""
  image = skimage.transform.resize(skimage.data.astronaut(), (224, 224),
                                   anti_aliasing=True) * 255.0
  return jnp.asarray(image - image.mean(axis=(0, 1)), jnp.float32)


def ramp(size=32):
  """An image whose three channels are the row index, the column index and 1."""
  rows, cols = jnp.meshgrid(jnp.arange(size, dtype=jnp.float32),
                            jnp.arange(size, dtype=jnp.float32), indexing='ij')
  return jnp.stack([rows, cols, jnp.ones_like(rows)], axis=-1)


# ------------------------------------------------------------------------- transforms


@pytest.mark.parametrize('transform, amount', [
    (invariance.translate_vertical, 0.0), (invariance.scale, 1.0),
    (invariance.rotate, 0.0), (invariance.rotate, 360.0), (invariance.rotate, -720.0)])
def test_identity_amounts_are_exact(transform, amount):
  images = images32(2)
  np.testing.assert_array_equal(transform(images, amount), images)
  np.testing.assert_array_equal(transform(images[0], amount), images[0])


@pytest.mark.parametrize('quarter_turns', [1, 2, 3, -1])
def test_rotation_by_quarter_turns_equals_rot90(quarter_turns):
  images = images32(2)
  rotated = invariance.rotate(images, 90.0 * quarter_turns)
  np.testing.assert_array_equal(rotated, jnp.rot90(images, k=quarter_turns, axes=(1, 2)))


def test_rotation_turns_counter_clockwise_about_the_centre():
  """Bilinear interpolation is exact on linear images.

  Inside the disc that stays in the image, the rotated ramp is the ramp of the rotated
  coordinates."""
  size, degrees = 32, 30.0
  rotated = invariance.rotate(ramp(size), degrees, fill=-1.0)
  centre = (size - 1) / 2
  theta = np.deg2rad(degrees)
  rows, cols = np.meshgrid(np.arange(size) - centre, np.arange(size) - centre, indexing='ij')
  src_rows = centre + np.cos(theta) * rows + np.sin(theta) * cols
  src_cols = centre - np.sin(theta) * rows + np.cos(theta) * cols
  disc = rows ** 2 + cols ** 2 < (centre - 1) ** 2
  np.testing.assert_allclose(np.asarray(rotated[..., 0])[disc], src_rows[disc], atol=1e-3)
  np.testing.assert_allclose(np.asarray(rotated[..., 1])[disc], src_cols[disc], atol=1e-3)
  # A spot right of the centre moves up (counter-clockwise as displayed).
  spot = jnp.zeros((33, 33, 3)).at[16, 26].set(1.0)
  row, col = np.unravel_index(int(jnp.argmax(invariance.rotate(spot, 30.0)[..., 0])), (33, 33))
  assert (row, col) == (round(16 - 10 * np.sin(theta)), round(16 + 10 * np.cos(theta)))


def test_translation_there_and_back_restores_the_covered_rows():
  images = images32(2)
  moved = invariance.translate_vertical(images, 7.0, fill=3.0)
  np.testing.assert_array_equal(moved[:, 7:], images[:, :-7])
  np.testing.assert_array_equal(moved[:, :7], jnp.full_like(moved[:, :7], 3.0))
  back = invariance.translate_vertical(moved, -7.0, fill=3.0)
  np.testing.assert_array_equal(back[:, :-7], images[:, :-7])
  np.testing.assert_array_equal(back[:, -7:], jnp.full_like(back[:, -7:], 3.0))


def test_fractional_translation_interpolates_and_blends_the_fill():
  image = ramp(8)
  moved = invariance.translate_vertical(image, 0.5, fill=10.0)
  np.testing.assert_allclose(moved[1:, :, 0], image[1:, :, 0] - 0.5)
  np.testing.assert_allclose(moved[0, :, 0], 0.5 * 0.0 + 0.5 * 10.0)   # half the edge row


def test_scale_zooms_about_the_centre():
  size = 32
  centre = (size - 1) / 2
  zoomed = invariance.scale(ramp(size), 2.0, fill=-1.0)
  expected = centre + (np.arange(size) - centre) / 2.0
  np.testing.assert_allclose(zoomed[:, 5, 0], expected, atol=1e-5)
  np.testing.assert_allclose(zoomed[5, :, 1], expected, atol=1e-5)
  shrunk = invariance.scale(ramp(size), 0.5, fill=-1.0)
  assert float(shrunk[0, 0, 0]) == -1.0 and float(shrunk[-1, -1, 2]) == -1.0
  np.testing.assert_allclose(shrunk[size // 2 - 1: size // 2 + 1, 8:24, 2], 1.0)


def test_transforms_jit_and_vmap_over_amounts():
  image = images32(1)[0]
  amounts = jnp.array([12.5, 200.0])
  for transform in (invariance.translate_vertical, invariance.scale, invariance.rotate):
    batched = jax.jit(jax.vmap(transform, in_axes=(None, 0, None)))(image, amounts + 1.0, 0.5)
    one_by_one = jnp.stack([transform(image, a + 1.0, 0.5) for a in amounts])
    # Fused and eager code round the source coordinates differently (~1e-5 px).
    np.testing.assert_allclose(batched, one_by_one, atol=5e-3)


def test_transforms_reject_bad_ranks():
  with pytest.raises(ValueError, match='H, W, C'):
    invariance.rotate(jnp.zeros((4, 4)), 10.0)


# ----------------------------------------------------------------------------- sweeps


def test_sweep_shapes_identity_and_probabilities(small):
  model, variables, images = small
  labels = jnp.array([0, 3, 4])
  # batch_size 2: two chunks of two amounts and a last one padded from one.
  amounts = jnp.array([0.0, 3.0, -5.0, 9.0, 0.0])
  layers = ('conv1', 'pool5', 'fc7')
  result = invariance.sweep(model, variables, images, labels, invariance.translate_vertical,
                            amounts, layers=layers, batch_size=2)
  np.testing.assert_array_equal(result.amounts, amounts)
  assert set(result.distance) == set(layers)
  reference = models.activations(model, variables, images, layers)
  for name, distance in result.distance.items():
    assert distance.shape == (3, 5)
    # Zero up to rounding: the reference and the sweep run as batches of different sizes.
    norm = float(jnp.linalg.norm(reference[name]))
    np.testing.assert_allclose(distance[:, [0, 4]], 0.0, atol=1e-6 * norm)
    assert np.all(distance[:, 1:4] > 1e-3 * norm)
  assert result.probability.shape == result.top_class.shape == (3, 5)
  moved = jax.vmap(invariance.translate_vertical, in_axes=(None, 0))(images, amounts)
  logits = jnp.stack([model.apply(variables, batch) for batch in moved])  # (5, 3, classes)
  expected = jax.nn.softmax(logits)[:, jnp.arange(3), labels].T
  np.testing.assert_allclose(result.probability, expected, rtol=1e-4, atol=1e-30)
  np.testing.assert_array_equal(result.top_class, jnp.argmax(logits, -1).T)
  features = models.activations(model, variables, moved[2], ('conv1',))['conv1']
  np.testing.assert_allclose(result.distance['conv1'][:, 2], jnp.linalg.norm(
      (features - reference['conv1']).reshape(3, -1), axis=1), rtol=1e-5)


def test_padded_map_equals_a_plain_map():
  xs = jnp.arange(7.0)
  for batch_size in (1, 3, 6, 7, 10):
    ys = invariance.padded_map(lambda x: {'a': x * 2, 'b': x[None] + 1}, xs, batch_size)
    np.testing.assert_array_equal(ys['a'], xs * 2)
    np.testing.assert_array_equal(ys['b'], xs[:, None] + 1)


def test_padded_map_maps_a_pytree_of_inputs():
  xs = {'a': jnp.arange(7.0), 'b': jnp.arange(14).reshape(7, 2)}
  for batch_size in (1, 3, 7, 10):
    ys = invariance.padded_map(lambda x: x['a'] * x['b'].sum(), xs, batch_size)
    np.testing.assert_array_equal(ys, xs['a'] * xs['b'].sum(1))


@pytest.mark.parametrize('num,batch_size,chunk', [(625, 128, 125), (7, 3, 3), (7, 6, 4),
                                                  (7, 10, 7), (101, 64, 51)])
def test_padded_map_runs_even_chunks(num, batch_size, chunk):
  """As few chunks as batch_size allows, all of one size.

  625 positions at 128 run as five chunks of 125 (no padding), 101 at 64 as two of 51 (one
  copy)."""
  sizes = []

  def f(x):
    sizes.append(x.shape)  # traced once per distinct chunk shape, vmapped: per element
    return x

  jaxpr = jax.make_jaxpr(lambda xs: invariance.padded_map(f, xs, batch_size))(
      jnp.arange(float(num)))
  assert sizes == [()]  # one loop body
  scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == 'scan']
  mapped = [v.aval.shape for e in scans for v in e.invars if v.aval.shape]
  assert mapped and all(shape[1] == chunk for shape in mapped), mapped


@pytest.mark.slow  # the full tier (a 224x224 sweep)
def test_distance_grows_with_translation_on_a_photo():
  model = models.ConvNet(SPEC)
  variables = alive_variables(model)
  pixels = jnp.array([0.0, 10.0, 30.0, 60.0])
  result = invariance.sweep(model, variables, astronaut()[None], jnp.array([0]),
                            invariance.translate_vertical, pixels)
  conv1, fc7 = result.distance['conv1'][0], result.distance['fc7'][0]
  assert float(conv1[0]) < 1e-6 * float(conv1[-1]) and float(fc7[0]) < 1e-3 * float(fc7[-1])
  assert np.all(np.diff(np.asarray(conv1)) > 0), conv1
  assert np.all(np.asarray(fc7[1:]) > 100 * float(fc7[0])), fc7


@pytest.mark.slow  # the sweeps themselves run in the default tier
def test_paper_sweeps_use_the_default_grids(small):
  model, variables, images = small
  sweeps = invariance.paper_sweeps(model, variables, images[:1], jnp.array([2]),
                                   batch_size=16)
  assert set(sweeps) == {'translation', 'scale', 'rotation'}
  np.testing.assert_array_equal(sweeps['translation'].amounts, np.arange(-60, 61, 5))
  np.testing.assert_allclose(sweeps['scale'].amounts, np.arange(17) * 0.05 + 1.0, atol=1e-6)
  np.testing.assert_array_equal(sweeps['rotation'].amounts, np.arange(0, 360, 10))
  assert sweeps['rotation'].distance['fc7'].shape == (1, 36)
  assert float(sweeps['scale'].distance['conv1'][0, 0]) < 1e-3


@pytest.mark.parametrize('change, match', [
    (dict(images=jnp.zeros((32, 32, 3))), 'rank 4'),
    (dict(labels=jnp.array([0, 1])), r'labels: expected shape \(3,\)'),
    (dict(labels=jnp.array([0, 1, 5])), r'labels: expected classes in \[0, 5\)'),
    (dict(labels=jnp.array([0.0, 1.0, 2.0])), 'labels: expected integer'),
    (dict(amounts=jnp.zeros((2, 2))), 'amounts: expected a non-empty rank-1'),
    (dict(layers=('conv1', 'conv9')), r"unknown layer\(s\) \['conv9'\].*'fc6'"),
    (dict(batch_size=0), 'batch_size'),
])
def test_bad_input_raises(small, change, match):
  model, variables, images = small
  args = dict(images=images, labels=jnp.array([0, 1, 2]), amounts=jnp.array([0.0, 1.0]),
              layers=('conv1',), batch_size=2)
  args.update(change)
  with pytest.raises(ValueError, match=match):
    invariance.sweep(model, variables, args['images'], args['labels'],
                     invariance.rotate, args['amounts'], layers=args['layers'],
                     batch_size=args['batch_size'])
