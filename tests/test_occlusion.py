"""Occlusion sensitivity against a full forward per position and the PyTorch ZFNet.

Occlusion sensitivity: the incremental evaluation equals a full forward per position, the
default mode's probabilities those of the independent PyTorch ZFNet on every occluded
image, and the maps' projection the PyTorch deconvnet (tools/torch_zfnet.py). The other
networks against torch: tests/test_occlusion_torch.py."""

import inspect
import math
import pathlib
import sys
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from zfjax import architecture, models, occlusion
from testing_models import alive_variables, random_images

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'tools'))
import torch_zfnet as tz  # pylint: disable=wrong-import-position

# ZFNet's geometry, narrow maps: the network, weights (before halving) and images of
# tests/test_deconv.py, so that a test session draws them once.
FEATURES, FC = (12, 16, 24, 24, 16), (8, 8)
SPEC = architecture.zfnet(num_classes=4, conv_features=FEATURES, fc_features=FC)

# The default tier's occlusion: 9 x 9 = 81 positions (the last ones touch the image's
# edge) in chunks of at most 16, which padded_map evens out to 6 chunks of 14 (3 padded
# copies): several chunks and an uneven split. Shared by the tests below, so it compiles
# once per mode.
SHARED = dict(patch=48, stride=22, fill=30.0, chunk_size=16)
DEFAULTS = dict(fill=0.0, method='incremental', winograd='auto', field_threshold=None,
                chunk_size=256)


@pytest.fixture(scope='module')
def setup():
  model = models.ConvNet(SPEC)
  variables = jax.tree.map(lambda a: 0.5 * a, alive_variables(model))  # unsaturated softmax
  return model, variables, random_images(2)[0]


@pytest.fixture(scope='module')
def maps(setup):
  """maps(**kwargs) -> occlusion.sensitivity(model, variables, image, 3, **kwargs), cached."""
  model, variables, image = setup
  cache = {}

  def run(**kwargs):
    kwargs = {**DEFAULTS, **kwargs}
    key = tuple(sorted(kwargs.items()))
    if key not in cache:
      cache[key] = occlusion.sensitivity(model, variables, image, 3, **kwargs)
    return cache[key]
  return run


@pytest.mark.parametrize('patch,stride,fill,winograd,chunk_size', [
    # Several chunks, the last one padded; the default mode and the exact direct one.
    pytest.param(SHARED['patch'], SHARED['stride'], SHARED['fill'], 'auto',
                 SHARED['chunk_size'], id='several-chunks'),
    # All positions in one chunk (None): one compiled loop body, no padding.
    pytest.param(32, 16, 0.0, 'auto', None, marks=pytest.mark.slow),
    pytest.param(48, 20, 0.0, False, None, marks=pytest.mark.slow),
    pytest.param(7, 29, 30.0, 'auto', None, marks=pytest.mark.slow),
    pytest.param(224, 1, -50.0, False, None, marks=pytest.mark.slow),
    pytest.param(224, 1, -50.0, 'auto', None, marks=pytest.mark.slow),  # conv2 by m = 2
    pytest.param(32, 16, 0.0, 'auto', 50, marks=pytest.mark.slow),  # 169 positions: 4 of 43
])
def test_incremental_equals_naive(maps, patch, stride, fill, winograd, chunk_size):
  rows = (224 - patch) // stride + 1
  chunk_size = chunk_size or rows * rows
  slow = maps(patch=patch, stride=stride, fill=fill, method='naive')
  for w in (False, winograd) if winograd else (False,):
    fast = maps(patch=patch, stride=stride, fill=fill, winograd=w, chunk_size=chunk_size)
    assert fast.prob.shape == fast.top_class.shape == fast.feature.shape == (rows, rows)
    np.testing.assert_allclose(fast.prob, slow.prob, atol=1e-5)
    np.testing.assert_array_equal(fast.top_class, slow.top_class)
    np.testing.assert_allclose(fast.feature, slow.feature, rtol=1e-5,
                               atol=1e-5 * float(slow.unoccluded_feature))
    assert float(jnp.abs(fast.prob - fast.unoccluded_prob).max()) > 1e-4  # it matters
    assert float(jnp.abs(fast.feature - fast.unoccluded_feature).max()) > 0


def test_the_dense_layers_run_in_each_loop_when_the_last_maps_are_too_many(setup, maps):
  """Past _HEAD_AFTER_BYTES of last maps, each group's loop runs the dense layers itself.

  The same maps as the naive method's, with the dense layers taken in each loop step
  (_then_head) instead of over every position after the loops."""
  model, variables, image = setup
  slow = maps(patch=SHARED['patch'], stride=SHARED['stride'], fill=SHARED['fill'],
              method='naive')
  with mock.patch.object(occlusion, '_HEAD_AFTER_BYTES', 0), \
       mock.patch.object(occlusion, '_then_head', wraps=occlusion._then_head) as in_loop:
    fast = occlusion.sensitivity(model, variables, image, 3, **{**SHARED, 'chunk_size': 15})
    assert in_loop.called
  np.testing.assert_allclose(fast.prob, slow.prob, atol=1e-5)
  np.testing.assert_array_equal(fast.top_class, slow.top_class)


def test_the_default_is_winograd_where_it_applies(maps):
  """winograd='auto' (the default) is True with the incremental method, False with naive.

  The default, winograd='auto', is winograd=True with the incremental method (the same
  compiled program) and, with method='naive', the naive maps rather than an error."""
  assert inspect.signature(occlusion.sensitivity).parameters['winograd'].default == 'auto'
  for method, same in (('incremental', True), ('naive', False)):
    auto = maps(**SHARED, method=method)
    explicit = maps(**SHARED, method=method, winograd=same)
    np.testing.assert_array_equal(auto.prob, explicit.prob)
    np.testing.assert_array_equal(auto.feature, explicit.feature)


def test_the_shared_run_spans_several_chunks_split_unevenly():
  """The several-chunks case really runs several chunks, the last one padded.

  What test_incremental_equals_naive[several-chunks] relies on (invariance.padded_map
  evens chunks out, padding the last with copies)."""
  num = occlusion.positions(224, SHARED['patch'], SHARED['stride']) ** 2
  chunks = -(-num // SHARED['chunk_size'])
  assert chunks > 1 and num % chunks, (num, chunks)


@pytest.mark.parametrize('patch,tiles', [
    (32, {'conv2': (4, 4), 'conv3': (4, 4), 'conv4': (3, 3), 'conv5': (4, 4)}),
    (7, {'conv2': (3, 3), 'conv3': (3, 3), 'conv4': (4, 4), 'conv5': (4, 4)}),
    (224, {'conv2': (2, 2)})])  # conv3-5's whole 13x13 maps: no tile size fits
def test_winograd_plan(patch, tiles):
  """Winograd's plan: conv2-5 by F(m_h x m_w, 3 x 3) with the cheapest tile that fits.

  winograd=True: the windows of conv2-5 (ceil(kernel / stride) = 3) by F(m_h x m_w, 3 x 3),
  per axis the m with the fewest multiplies, each window rounded up to whole tiles inside
  its map."""
  plan = occlusion._plan(SPEC, (224, 224, 3), patch, winograd=True)
  assert {step.record.name: step.tile for step in plan if step.tile} == tiles
  for step in plan:
    assert all(c % m == 0 and s <= c < s + m and c <= n for c, s, n, m in
               zip(step.computed_size, step.size, step.map_size, step.tile or (1, 1)))


@pytest.mark.parametrize('window,map_size,tile', [
    ((7, 9), (13, 13), (4, 3)),   # 12 x 15 products' rows and columns: 180, not 216 (4 x 4)
    ((9, 7), (13, 13), (3, 4)),
    ((8, 11), (13, 13), (4, 4)),  # 11: 3 tiles of 4 (18) before 4 of 3 (20)
    ((4, 4), (13, 13), (4, 4)),   # one tile of 4 (6) before two of 2 (8)
    ((6, 6), (6, 6), (3, 3)),     # 8 cells of tiles of 4 would not fit in 6
    ((13, 6), (13, 13), ()),      # 13 cells fit no whole tiles of 2..4 inside 13
])
def test_winograd_tile_is_cheapest_per_axis(window, map_size, tile):
  assert occlusion._winograd_tile(window, map_size) == tile


def test_border_groups_cover_every_change():
  """ZFNet's benchmark grid (patch 32, stride 8): border and interior classes per axis.

  Four groups, each position in one; a group's windows hold, at every layer, each of its
  occluders' changed cells (_axis of that occluder alone), and the border groups' windows
  are smaller than the interior's. NumPy only: nothing compiles."""
  spec = architecture.zfnet(num_classes=1000)
  groups = occlusion._groups(spec, (224, 224, 3), 32, 8, winograd=True)
  assert len(groups) == 4
  index = np.concatenate([index for *_, index in groups])
  assert sorted(index) == list(range(25 * 25))
  sizes = [math.prod(plan[-1].size) for plan, *_ in groups]
  assert min(sizes) < max(sizes) == 36
  runs = [occlusion._axis(spec, (224, 224, 3), 0, np.array([8 * i]), 32) for i in range(25)]
  for plan, windows, index in groups:
    at = np.stack([np.asarray(w.at) for w in windows], 1)  # (N, steps, 2)
    for axis, number in enumerate(divmod(index, 25)):  # the square grid: rows' runs = columns'
      computed = np.array([step.computed_size[axis] for step in plan])
      first = np.array([[f[0] for _, _, f in runs[i]] for i in number])
      exact = np.array([[e for e, _, _ in runs[i]] for i in number])
      assert (at[..., axis] <= first).all() and (first + exact <= at[..., axis] + computed).all()


def test_maps_mean_what_the_paper_says(setup, maps):
  model, variables, image = setup
  out = maps(**SHARED)
  patch, stride, fill = SHARED['patch'], SHARED['stride'], SHARED['fill']
  acts = models.activations(model, variables, image[None], ('conv5', 'fc8'))
  conv5 = acts['conv5'][0]
  channel = int(out.channel)
  assert channel == int(jnp.argmax(conv5.reshape(-1, FEATURES[-1]).max(0)))
  np.testing.assert_allclose(out.unoccluded_feature, conv5[..., channel].sum(), rtol=1e-6)
  np.testing.assert_allclose(out.unoccluded_prob, jax.nn.softmax(acts['fc8'][0])[3], rtol=1e-6)
  # Occluding positions (0, 0) and (2, 5) by hand gives the same probability and feature.
  for i, j in ((0, 0), (2, 5)):
    occluded = image.at[i * stride:i * stride + patch, j * stride:j * stride + patch].set(fill)
    by_hand = models.activations(model, variables, occluded[None], ('conv5', 'fc8'))
    logits = by_hand['fc8'][0]
    np.testing.assert_allclose(out.prob[i, j], jax.nn.softmax(logits)[3], rtol=1e-5)
    assert int(out.top_class[i, j]) == int(jnp.argmax(logits))
    np.testing.assert_allclose(out.feature[i, j], by_hand['conv5'][0, ..., channel].sum(),
                               rtol=1e-5)
  torch_model = tz.load_flax_params(
      tz.TorchZFNet(4, conv_features=FEATURES, fc_features=FC).eval(),
      jax.tree.map(np.array, variables['params']))
  # The default mode's probabilities against the torch ZFNet on every occluded image.
  rows = occlusion.positions(224, patch, stride)
  occluded = np.repeat(np.asarray(image)[None], rows * rows, axis=0)
  for i in range(rows):
    for j in range(rows):
      occluded[i * rows + j, i * stride:i * stride + patch, j * stride:j * stride + patch] = fill
  with torch.no_grad():
    torch_prob = torch.softmax(torch_model(tz.to_nchw(occluded)).double(), -1)[:, 3]
  assert np.abs(np.asarray(out.prob, np.float64).ravel() - torch_prob.numpy()).max() <= 1e-4
  # The projection (panel c) against the independent PyTorch deconvnet: switches,
  # scatter-add unpooling, rectification and transposed filters written out in torch.
  reference = tz.literal_deconvnet(torch_model, tz.to_nchw(image[None]), 'conv5',
                                   [channel]).numpy()[0, 0].transpose(1, 2, 0)
  projection = np.asarray(out.projection)
  assert projection.shape == reference.shape == (224, 224, 3)
  scale = np.abs(reference).max()
  assert scale > 0
  assert np.abs(projection - reference).max() <= 1e-4 * scale


def test_field_threshold_one_is_exact(maps):
  exact = maps(**SHARED)
  same = maps(**SHARED, field_threshold=1.0)
  np.testing.assert_array_equal(same.prob, exact.prob)
  np.testing.assert_array_equal(same.feature, exact.feature)


@pytest.mark.slow  # one more program to compile, for the approximate opt-in mode
def test_smaller_field_thresholds_approximate(maps):
  exact = maps(**SHARED)
  rough = maps(**SHARED, field_threshold=0.3)
  assert rough.prob.shape == exact.prob.shape and bool(jnp.isfinite(rough.prob).all())
  assert 0 < float(jnp.abs(rough.prob - exact.prob).max()) < 0.5   # approximate, not wild


# Other layer orders and geometries: the full tier (the default tier's checks above run
# the same code on ZFNet; each variant here compiles three more programs).
@pytest.mark.slow
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
    (dict(winograd='yes'), "winograd must be 'auto', True or False"),
    (dict(winograd=None), "winograd must be 'auto', True or False"),
    (dict(winograd=True, method='naive'), 'True only with the incremental method'),
    (dict(image=jnp.zeros((1, 224, 224, 3))), r'one \(H, W, 3\) image'),
    (dict(image=jnp.zeros((224, 224))), r'one \(H, W, 3\) image'),
])
def test_bad_input_is_a_clear_value_error(setup, kwargs, message):
  model, variables, image = setup
  args = dict(image=image, label=3)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    occlusion.sensitivity(model, variables, args.pop('image'), args.pop('label'), **args)
