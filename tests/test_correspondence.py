"""Correspondence (Sec. 4.3, Table 1).

The Hamming measure by hand, signs of zero, the occluder, the random baseline, the table,
and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zfjax import architecture, correspondence, models
from testing_models import alive_variables, random_images

# ZFNet's layer sequence on 32x32 images, narrow: conv5 and fc7 exist, and it is fast.
SPEC = architecture.small_zfnet(num_classes=5, conv_features=(4, 4, 4, 4, 6),
                                fc_features=(8, 8))
BOXES = np.array([[4, 6, 8, 10], [10, 2, 8, 10], [20, 20, 8, 10], [0, 0, 8, 10]])


@pytest.fixture(scope='module')
def setup():
  model = models.ConvNet(SPEC)
  return model, alive_variables(model, image_size=32), random_images(4, size=32)


# ------------------------------------------------------------------------ the measure


def test_hamming_normalization_by_hand():
  eps = jnp.array([[1.0, -2.0, 0.0, 3.0],     # signs + - 0 +
                   [1.0, 2.0, 0.0, -3.0],     # signs + + 0 -
                   [-1.0, -2.0, 0.0, 0.0]])   # signs - - 0 0
  # Disagreements: (0, 1) at coordinates 1, 3 -> 2/4; (0, 2) at 0, 3 -> 2/4;
  # (1, 2) at 0, 1, 3 -> 3/4. The shared zero at coordinate 2 agrees.
  expected = np.array([[0, 0.5, 0.5], [0.5, 0, 0.75], [0.5, 0.75, 0]])
  np.testing.assert_allclose(correspondence.hamming_matrix(eps), expected)
  # Sum over ordered pairs i != j (each pair twice) / (D * N * (N - 1)).
  np.testing.assert_allclose(correspondence.delta(eps), 2 * (2 + 2 + 3) / (4 * 3 * 2))
  np.testing.assert_allclose(correspondence.pair_std(eps), np.std([0.5, 0.5, 0.75]),
                             rtol=1e-6)


def test_delta_flattens_feature_maps_and_lies_in_zero_one():
  eps = jnp.asarray(np.random.default_rng(0).standard_normal((5, 3, 3, 4)), jnp.float32)
  value = float(correspondence.delta(eps))
  assert 0.0 < value < 1.0
  np.testing.assert_allclose(value, correspondence.delta(eps.reshape(5, -1)))
  np.testing.assert_allclose(correspondence.delta(jnp.stack([eps[0], -eps[0]])), 1.0)


def test_exact_zeros_have_sign_zero_which_agrees_only_with_zero():
  np.testing.assert_array_equal(correspondence.signs(jnp.array([-2.0, -0.0, 0.0, 3.0])),
                                [-1, 0, 0, 1])
  both_zero = jnp.array([[0.0, 1.0], [-0.0, 1.0]])
  assert float(correspondence.delta(both_zero)) == 0.0
  zero_against_sign = jnp.array([[0.0, 0.0], [1e-30, -1e-30]])
  assert float(correspondence.delta(zero_against_sign)) == 1.0
  # A tolerance turns tiny changes into zeros.
  assert float(correspondence.delta(zero_against_sign, tolerance=1e-20)) == 0.0


def test_occlude_fills_exactly_the_box():
  images = np.random.default_rng(1).normal(0.0, 60.0, (2, 12, 12, 3)).astype(np.float32)
  boxes = jnp.array([[1, 2, 3, 4], [0, 0, 12, 1]])
  out = correspondence.occlude(images, boxes, fill=7.0)
  mask = np.zeros((2, 12, 12, 1), bool)
  mask[0, 1:4, 2:6] = True
  mask[1, :, :1] = True
  np.testing.assert_array_equal(out, np.where(mask, 7.0, images))


def test_random_boxes_keep_the_sizes_and_stay_inside():
  boxes = jnp.array([[0, 0, 5, 30], [3, 3, 32, 1]])
  drawn = correspondence.draw_random_boxes(jax.random.key(3), boxes, (32, 32, 3), 50)
  assert drawn.shape == (50, 2, 4)
  np.testing.assert_array_equal(drawn[..., 2:], jnp.broadcast_to(boxes[:, 2:], (50, 2, 2)))
  assert np.all(drawn[..., :2] >= 0)
  assert np.all(drawn[..., 0] + drawn[..., 2] <= 32) and np.all(drawn[..., 1] + drawn[..., 3] <= 32)
  assert len(np.unique(np.asarray(drawn[:, 0, 0]))) > 5


# ----------------------------------------------------------------------- the analysis


def test_identical_perturbations_give_zero(setup):
  model, variables, images = setup
  same = jnp.broadcast_to(images[:1], (3, 32, 32, 3))
  boxes = np.repeat(BOXES[:1], 3, axis=0)
  result = correspondence.correspondence(model, variables, same, boxes,
                                         layers=('conv1', 'conv5', 'fc7'), num_random=3)
  for name in ('conv1', 'conv5', 'fc7'):
    assert float(result.delta[name]) == 0.0
    assert float(result.pair_std[name]) == 0.0


def test_units_the_occluder_cannot_reach_cancel_exactly(setup):
  """A 1x1 box changes conv1 (3x3, pad 1) at 3x3 positions x 4 maps only.

  Every other coordinate has eps exactly 0, so at most 36 of 32*32*4 coordinates can
  disagree."""
  model, variables, images = setup
  boxes = np.array([[10, 10, 1, 1]] * 3)
  result = correspondence.correspondence(model, variables, images[:3], boxes,
                                         layers=('conv1', 'conv5', 'fc7'), num_random=3)
  assert 0.0 < float(result.delta['conv1']) <= 36 / (32 * 32 * 4)


# Four random sets (five occlusion sets with the part's) in the analyses below: one
# compiled program for them all.
def test_shapes_random_baseline_and_determinism(setup):
  model, variables, images = setup
  run = lambda key: correspondence.correspondence(model, variables, images, BOXES,
                                                  num_random=4, key=key)
  result = run(jax.random.key(7))
  assert set(result.delta) == {'conv5', 'fc7'}
  assert result.random_boxes.shape == (4, 4, 4)
  for name in ('conv5', 'fc7'):
    assert result.delta[name].shape == result.random_mean[name].shape == ()
    assert result.random_deltas[name].shape == (4,)
    assert 0.0 < float(result.random_mean[name]) < 1.0
    assert float(result.random_std[name]) > 0.0
    np.testing.assert_allclose(result.random_mean[name], result.random_deltas[name].mean())
  again = run(jax.random.key(7))
  for a, b in zip(jax.tree.leaves(result), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)
  other = run(jax.random.key(8))
  assert not np.array_equal(other.random_boxes, result.random_boxes)
  np.testing.assert_array_equal(other.delta['conv5'], result.delta['conv5'])


def test_given_random_boxes_are_used_as_they_are(setup):
  model, variables, images = setup
  part = correspondence.correspondence(model, variables, images, BOXES,
                                       random_boxes=np.stack([BOXES] * 4))
  assert part.random_boxes.shape == (4, 4, 4)
  for name in ('conv5', 'fc7'):
    np.testing.assert_allclose(part.random_deltas[name], np.full(4, part.delta[name]),
                               rtol=1e-6)
    assert float(part.random_std[name]) == pytest.approx(0.0, abs=1e-7)


def test_table_rows_match_single_parts(setup):
  model, variables, images = setup
  parts = {'right eye': BOXES, 'nose': BOXES + np.array([2, 1, 0, 0])}
  rows = correspondence.table(model, variables, images, parts, layers=('conv5', 'fc7'),
                              num_random=4, key=jax.random.key(1), batch_size=3)
  assert rows['rows'] == ('right eye', 'nose', 'random')
  assert rows['columns'] == ('conv5', 'fc7')
  assert rows['mean'].shape == rows['std'].shape == (3, 2)
  nose = correspondence.correspondence(model, variables, images, parts['nose'],
                                       num_random=4, key=jax.random.key(1))
  first = correspondence.correspondence(model, variables, images, BOXES,
                                        num_random=4, key=jax.random.key(1))
  for j, name in enumerate(('conv5', 'fc7')):
    np.testing.assert_allclose(rows['mean'][1, j], nose.delta[name], rtol=1e-6)
    np.testing.assert_allclose(rows['std'][1, j], nose.pair_std[name], rtol=1e-5)
    np.testing.assert_allclose(rows['mean'][2, j], first.random_mean[name], rtol=1e-6)
    np.testing.assert_allclose(rows['std'][2, j], first.random_std[name], rtol=1e-5,
                               atol=1e-7)


# -------------------------------------------------------------------------- bad input


@pytest.mark.parametrize('change, match', [
    (dict(boxes=BOXES[:, :3]), r'boxes: expected shape \(4, 4\)'),
    (dict(boxes=BOXES[:3]), r'boxes: expected shape \(4, 4\)'),
    (dict(boxes=BOXES + np.array([0, 0, 0, 30])), 'boxes: expected boxes inside the 32x32'),
    (dict(boxes=BOXES - np.array([5, 0, 0, 0])), 'boxes: expected boxes inside'),
    (dict(boxes=BOXES * np.array([1, 1, 1, -1])), 'boxes: expected positive heights'),
    (dict(boxes=BOXES + 0.5), 'boxes: expected whole pixels'),
    (dict(images=jnp.ones((1, 32, 32, 3)), boxes=BOXES[:1]), 'at least 2 images'),
    (dict(images=jnp.zeros((4, 32, 32))), 'rank 4'),
    (dict(layers=('conv5', 'fc9')), r"unknown layer\(s\) \['fc9'\].*'conv1'"),
    (dict(random_boxes=BOXES), r'random_boxes: expected shape \(R, 4, 4\)'),
    (dict(random_boxes=np.stack([BOXES + np.array([30, 0, 0, 0])])),
     'random_boxes: expected boxes inside'),
    (dict(num_random=1), 'num_random'),
    (dict(batch_size=0), 'batch_size'),
])
def test_bad_input_raises(setup, change, match):
  model, variables, images = setup
  args = dict(images=images, boxes=BOXES)
  args.update(change)
  images, boxes = args.pop('images'), args.pop('boxes')
  with pytest.raises(ValueError, match=match):
    correspondence.correspondence(model, variables, images, boxes, **args)


def test_table_names_the_bad_part(setup):
  model, variables, images = setup
  with pytest.raises(ValueError, match="boxes of 'nose': expected boxes inside"):
    correspondence.table(model, variables, images,
                         {'eye': BOXES, 'nose': BOXES + np.array([0, 30, 0, 0])})
  with pytest.raises(ValueError, match='parts: expected at least one part'):
    correspondence.table(model, variables, images, {})
