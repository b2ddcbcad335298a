"""Property tests (hypothesis) of deconv.project, occlusion.sensitivity and topk.search.

Property tests (hypothesis) of deconv.project, occlusion.sensitivity and topk.search at
their edges, on a tiny small_zfnet (8-wide convs, fc 16) and small images: random valid
image sizes, channel lists (empty, repeated), occluder patches and strides (patch as large
as the image, strides that do not divide it), fills, batch sizes 1 and a prime, k larger
than the number of images, all-zero images.
Valid input gives the values of an independent reference: projections those of a torch
network built from the same spec (tools/torch_convnet.py: the literal deconvnet, autograd
with the rule's ReLU backward), occlusion maps those of the whole torch network run on every
occluded copy of the image (brute force), top-k finds a brute-force search. Invalid input
gives a ValueError naming the argument.

Tiers (tests/conftest.py): the default run draws a few fixed (derandomized) examples plus
the explicit @example cases; --full explores at random with several times as many. Each
new shape compiles a program, so the valid-input properties draw from a few sizes; the
invalid-input ones fail before anything compiles and run many examples in both tiers.
Params are He-normal numbers of the model's shapes for each image size (fc6's input
depends on it), drawn with NumPy: nothing is compiled for them.
"""

import math
import pathlib
import sys

import hypothesis
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from testing_models import FULL
from zfjax import architecture, checkpoints, deconv, models, occlusion, topk

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'tools'))
import torch_convnet as tc  # pylint: disable=wrong-import-position

SPEC = architecture.small_zfnet(5, conv_features=(8, 8, 8, 8, 8), fc_features=(16, 16))
MODEL = models.ConvNet(SPEC)
CONVS = architecture.conv_names(SPEC)
MAPS = architecture.map_names(SPEC)
SIZES = (9, 13, 32)  # valid image sides (3 ceil pools); 32 is the digits model's
TOLERANCE = 1e-4  # max |a - b| / max |b| per projection, as tests/test_deconv_torch.py


def tier(examples, full_factor=6):
  """`examples` fixed draws (+ the explicit @example cases) in the default tier.

  In the full tier random ones, `full_factor` times as many."""
  return settings(max_examples=examples * full_factor if FULL else examples, deadline=None,
                  derandomize=not FULL, database=None)


FEW = tier(4)
FEWER = tier(2)
ONE = tier(1)
MANY = tier(100, full_factor=10)  # invalid inputs: refused before anything compiles

_VARIABLES = {}
_TORCH_MODELS = {}


def variables_for(height, width):
  """He-normal kernels, small positive biases, for inputs of (height, width)."""
  if (height, width) not in _VARIABLES:
    rng = np.random.default_rng(height * 1000 + width)
    shapes = checkpoints.param_shapes(SPEC, (height, width, 3))
    def draw(shape):
      if len(shape) == 1:
        return jnp.asarray(rng.uniform(0, 0.1, shape), jnp.float32)
      return jnp.asarray(rng.standard_normal(shape) * np.sqrt(2 / np.prod(shape[:-1])),
                         jnp.float32)
    _VARIABLES[height, width] = {'params': {
        layer: {name: draw(s.shape) for name, s in leaves.items()}
        for layer, leaves in shapes.items()}}
  return _VARIABLES[height, width]


def torch_model(height, width):
  """The independent torch network of SPEC with the params of variables_for."""
  if (height, width) not in _TORCH_MODELS:
    model = tc.TorchConvNet(SPEC, (height, width, 3)).eval()
    _TORCH_MODELS[height, width] = tc.load_flax_params(
        model, variables_for(height, width)['params'])
  return _TORCH_MODELS[height, width]


def images(n, height, width, zero, seed=0):
  if zero:
    return jnp.zeros((n, height, width, 3), jnp.float32)
  return jnp.asarray(60 * np.random.default_rng(seed).standard_normal((n, height, width, 3)),
                     jnp.float32)


def too_small(height, width):
  try:
    architecture.shapes(SPEC, (height, width, 3))
    return False
  except ValueError:
    return True


def torch_projections(x, layer, channels, rule):
  """(N, K, H, W, 3) projections by the torch reference.

  The literal deconvnet for 'deconvnet', autograd with the rule's ReLU backward for the
  others."""
  model = torch_model(*x.shape[1:3])
  nchw = tc.to_nchw(x)
  out = (tc.literal_deconvnet(model, nchw, layer, channels) if rule == 'deconvnet'
         else tc.autograd_projection(model, nchw, layer, channels, rule))
  return out.detach().numpy().transpose(0, 1, 3, 4, 2)


def assert_projections_close(actual, reference, channels, tolerance=TOLERANCE):
  """Per projection: max |a - b| / max |b| <= tolerance.

  A projection that is zero in the reference (a dead channel) must be zero up to 1e-6 of the
  largest one."""
  actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
  assert actual.shape == reference.shape, (actual.shape, reference.shape)
  floor = max(1e-6 * np.abs(reference).max(), np.finfo(np.float32).tiny)
  for n in range(reference.shape[0]):
    for k, channel in enumerate(channels):
      a, b = actual[n, k], reference[n, k]
      error = np.abs(a - b).max() / max(np.abs(b).max(), floor)
      assert error <= tolerance, (f'image {n}, channel {channel}: relative error '
                                  f'{error:.3g} (max |reference| {np.abs(b).max():.3g})')


# ------------------------------------------------------------------------- deconvnet


@pytest.mark.slow  # the full tier; test_deconv and test_topk keep exact checks
@FEW
@given(height=st.sampled_from(SIZES), width=st.sampled_from(SIZES),
       batch=st.sampled_from((1, 3)), zero=st.booleans(), layer=st.sampled_from(CONVS),
       channels=st.lists(st.integers(0, 7), max_size=4),
       rule=st.sampled_from(deconv.RULES), chunk_size=st.sampled_from((1, 5, 64)))
@example(height=13, width=9, batch=3, zero=True, layer='conv5', channels=[2, 7, 2],
         rule='deconvnet', chunk_size=5)  # a prime batch, 9 units in chunks of 5
@example(height=13, width=9, batch=3, zero=False, layer='conv5', channels=[2, 7, 2],
         rule='deconvnet', chunk_size=5)  # the same program on random images
def test_project_valid_inputs(height, width, batch, zero, layer, channels, rule, chunk_size):
  x = images(batch, height, width, zero)
  out = deconv.project(MODEL, variables_for(height, width), x, layer, np.asarray(channels,
                       np.int32), rule=rule, chunk_size=chunk_size)
  assert out.shape == (batch, len(channels), height, width, 3)
  assert bool(jnp.isfinite(out).all())
  for k, channel in enumerate(channels):  # a repeated channel projects the same, up to
    first = channels.index(channel)       # rounding (its copies may sit in other chunks)
    np.testing.assert_allclose(out[:, k], out[:, first], rtol=1e-5,
                               atol=1e-6 * float(np.abs(out[:, first]).max()))
  if channels:
    assert_projections_close(out, torch_projections(x, layer, channels, rule), channels)


BAD_PROJECT = [  # (argument, value): every one of these is tried
    *[('channels', c) for c in ([8], [-1], [0, 8], [[0, 1]], [[1], [2]], [0.5], [True])],
    *[('layer', name) for name in ('fc6', 'pool1', 'conv9', '', 'input', None)],
    *[('rule', rule) for rule in ('Deconvnet', 'gradient', '')],
    *[('method', method) for method in ('fast', 'Literal')],
    *[('chunk_size', size) for size in (0, -1, 2.5, None, True)],
    *[('images', shape) for shape in ((9, 9, 3), (1, 9, 9, 1), (1, 9, 9, 4), (1, 1, 9, 9, 3),
                                      (2, 4, 4, 3), (1, 2, 20, 3))],
]


def project_with(name, value):
  kwargs = {'images': jnp.zeros((1, 9, 9, 3)), 'layer': 'conv2', 'channels': [0],
            'rule': 'deconvnet', 'method': 'literal', 'chunk_size': 64}
  kwargs[name] = jnp.zeros(value) if name == 'images' else value
  return deconv.project(MODEL, variables_for(9, 9), kwargs['images'], kwargs['layer'],
                        np.asarray(kwargs['channels']), rule=kwargs['rule'],
                        method=kwargs['method'], chunk_size=kwargs['chunk_size'])


@pytest.mark.parametrize('name, value', BAD_PROJECT)
def test_project_invalid_inputs_name_the_argument(name, value):
  with pytest.raises(ValueError, match='image' if name == 'images' else name):
    project_with(name, value)


@MANY
@given(channels=st.lists(st.integers(-20, 30), min_size=1, max_size=5)
       .filter(lambda c: min(c) < 0 or max(c) > 7))
def test_project_channels_out_of_range(channels):
  with pytest.raises(ValueError, match=r'channels out of range: .* conv2 has 8'):
    project_with('channels', channels)


# ------------------------------------------------------------------------- occlusion


@st.composite
def occluders(draw):
  """(height, width, patch, stride).

  Patches up to the whole image, strides up to past it, so the last positions need not line
  up with the edge."""
  height, width = draw(st.sampled_from(SIZES[:2])), draw(st.sampled_from(SIZES[:2]))
  patch = draw(st.integers(1, min(height, width)))
  stride = draw(st.integers(1, max(height, width) + 2))
  return height, width, patch, stride


def uncapped_layers(height, width, patch, field_threshold):
  """The map layers where approximate mode's field threshold drops nothing.

  The map layers, bottom up, below the first whose changed window `field_threshold`
  caps (all of them without a threshold): there approximate mode drops nothing, so its
  values are exact. A changed run of S cells at a layer's input changes at most
  (S + k - 2) // s + 1 of the layer's n outputs along an axis (kernel or window k, stride
  s); a threshold tau keeps ceil(tau * n) of them (occlusion.sensitivity's doc)."""
  shapes = architecture.shapes(SPEC, (height, width, 3))
  window, out = (patch, patch), []
  for name in MAPS:
    record = architecture.layer(SPEC, name)
    kernel, stride = ((record.kernel, record.stride) if isinstance(record, architecture.Conv)
                      else (record.window, record.stride)
                      if isinstance(record, architecture.Pool) else (1, 1))
    size = shapes[name][:2]
    window = tuple(min(n, (w + kernel - 2) // stride + 1) for w, n in zip(window, size))
    if field_threshold is not None and any(
        w > max(1, math.ceil(field_threshold * n)) for w, n in zip(window, size)):
      break
    out.append(name)
  return tuple(out)


def softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


APPROXIMATE = [{}, {'field_threshold': 1.0, 'winograd': True},  # 1.0 caps nothing
               {'field_threshold': 0.5, 'winograd': True}]


@pytest.mark.slow  # the full tier: test_occlusion covers the default one
@FEWER
@given(geometry=occluders(), fill=st.floats(-100, 100, allow_nan=False),
       label=st.integers(0, 4), zero=st.booleans(), layer=st.sampled_from(CONVS),
       approximate=st.sampled_from(APPROXIMATE))
# the patch as wide as the image and a stride past its end: one column of positions
@example(geometry=(13, 9, 9, 11), fill=-50.0, label=4, zero=False, layer='conv5',
         approximate={'field_threshold': 0.5, 'winograd': True})
def test_sensitivity_valid_inputs(geometry, fill, label, zero, layer, approximate):
  height, width, patch, stride = geometry
  image = images(1, height, width, zero)[0]
  maps = occlusion.sensitivity(MODEL, variables_for(height, width), image, label,
                               patch=patch, stride=stride, fill=fill, layer=layer,
                               **approximate)
  grid = ((height - patch) // stride + 1, (width - patch) // stride + 1)
  assert maps.prob.shape == maps.top_class.shape == maps.feature.shape == grid
  assert maps.projection.shape == (height, width, 3)
  for value in (maps.prob, maps.feature, maps.projection, maps.unoccluded_prob,
                maps.unoccluded_feature):
    assert bool(jnp.isfinite(value).all())
  assert bool(((maps.prob >= 0) & (maps.prob <= 1)).all())
  assert bool(((maps.top_class >= 0) & (maps.top_class < 5)).all())
  assert 0 <= int(maps.channel) < 8 and bool((maps.feature >= 0).all())

  # Against brute force: the independent torch network on every occluded copy.
  naive = tc.occlusion_naive(torch_model(height, width), np.asarray(image), patch, stride,
                             fill, layer)
  # From the unoccluded image alone: exact in every mode.
  assert int(maps.channel) == naive.channel
  np.testing.assert_allclose(maps.unoccluded_prob, softmax(naive.unoccluded_logits)[label],
                             rtol=0, atol=1e-5)
  np.testing.assert_allclose(maps.unoccluded_feature, naive.unoccluded_feature, rtol=1e-5,
                             atol=1e-7)
  assert_projections_close(np.asarray(maps.projection)[None, None],
                           torch_projections(image[None], layer, [naive.channel],
                                             'deconvnet'), [naive.channel])
  # Occluded: exact (up to Winograd's rounding) below the first capped window, so all of
  # them in exact mode; beyond a cap, approximate mode drops changes and only the range
  # checks above hold (on maps this small, its prob can be off by more than 0.5).
  tolerance = 1e-4 if approximate.get('winograd') else 1e-5
  exact = uncapped_layers(height, width, patch, approximate.get('field_threshold'))
  if layer in exact:
    scale = max(np.abs(naive.feature).max(), naive.unoccluded_feature)
    np.testing.assert_allclose(maps.feature, naive.feature, rtol=0,
                               atol=tolerance * scale + 1e-7)
  if exact == MAPS:
    np.testing.assert_allclose(maps.prob, softmax(naive.logits)[..., label], rtol=0,
                               atol=tolerance)
    # The most probable class, but for logits within rounding of the largest one.
    chosen = np.take_along_axis(naive.logits, np.asarray(maps.top_class)[..., None], -1)
    gap = naive.logits.max(-1) - chosen[..., 0]
    assert (gap <= tolerance * (1 + np.abs(naive.logits).max())).all(), gap.max()


@pytest.mark.slow  # full tier: test_occlusion holds Winograd to the naive maps by default
@ONE  # + the explicit examples
@given(geometry=occluders(), zero=st.booleans(), layer=st.sampled_from(CONVS))
@example(geometry=(13, 9, 9, 11), zero=False, layer='conv5')
@example(geometry=(32, 13, 1, 1), zero=False, layer='conv3')  # 1x1 changed windows
def test_sensitivity_winograd_equals_direct(geometry, zero, layer):
  """Winograd on an all-3x3/1 model tiles conv1 too and leaves unfit windows direct.

  Every conv of this model is 3x3/1, so Winograd tiles conv1 (3 channels) too, and
  windows that cannot be rounded up inside their map stay direct."""
  height, width, patch, stride = geometry
  image = images(1, height, width, zero)[0]
  direct, fast = (occlusion.sensitivity(MODEL, variables_for(height, width), image, 2,
                                        patch=patch, stride=stride, layer=layer,
                                        winograd=winograd, chunk_size=1024)
                  for winograd in (False, True))
  np.testing.assert_allclose(fast.prob, direct.prob, atol=1e-5)
  np.testing.assert_allclose(fast.feature, direct.feature, rtol=1e-5,
                             atol=1e-5 * float(direct.unoccluded_feature))
  np.testing.assert_array_equal(fast.top_class, direct.top_class)


BAD_SENSITIVITY = [  # (argument, value): every one of these is tried (image 13x13)
    *[('patch', v) for v in (14, 0, -3, 2.5, '4', None, True)],
    *[('stride', v) for v in (0, -1, 1.5, '2', None)],
    *[('label', v) for v in (-1, 5, 99, 2.5, '1', None)],
    *[('fill', v) for v in (float('nan'), float('inf'), '0', None, [0.0, 1.0])],
    *[('layer', v) for v in ('fc6', 'pool5', 'conv6')],
    *[('method', v) for v in ('fast', 'Naive')],
    *[('field_threshold', v) for v in (0.0, -0.5, 1.5)],
    *[('winograd', v) for v in (1, None, 'true')],
    *[('chunk_size', v) for v in (0, -2, 2.5, None)],
    *[('image', shape) for shape in ((1, 13, 13, 3), (13, 13), (13, 13, 1), (13, 13, 4),
                                     (2, 2, 3))],
]


def sensitivity_with(name, value):
  kwargs = {'patch': 4, 'stride': 3, 'label': 1, 'fill': 0.0, 'layer': None,
            'method': 'incremental', 'field_threshold': None, 'winograd': False,
            'chunk_size': 64}
  image = jnp.zeros(value) if name == 'image' else jnp.zeros((13, 13, 3))
  if name != 'image':
    kwargs[name] = value
  return occlusion.sensitivity(MODEL, variables_for(13, 13), image, **kwargs)


@pytest.mark.parametrize('name, value', BAD_SENSITIVITY)
def test_sensitivity_invalid_inputs_name_the_argument(name, value):
  with pytest.raises(ValueError, match=name):
    sensitivity_with(name, value)


@MANY
@given(patch=st.integers(-20, 60), stride=st.integers(-5, 20))
def test_sensitivity_bad_patch_or_stride(patch, stride):
  hypothesis.assume(not (1 <= patch <= 13 and stride >= 1))
  with pytest.raises(ValueError, match='patch' if stride >= 1 else 'stride'):
    occlusion.sensitivity(MODEL, variables_for(13, 13), jnp.zeros((13, 13, 3)), 1,
                          patch=patch, stride=stride)


def test_too_small_images_are_refused():
  for height, width in ((4, 9), (9, 4), (1, 1)):
    assert too_small(height, width)
    with pytest.raises(ValueError, match='too small'):
      deconv.project(MODEL, variables_for(9, 9), jnp.zeros((1, height, width, 3)), 'conv1',
                     np.array([0]))
    with pytest.raises(ValueError, match='too small'):
      occlusion.sensitivity(MODEL, variables_for(9, 9), jnp.zeros((height, width, 3)), 0,
                            patch=1, stride=1)


# ------------------------------------------------------------------------- top-k search


def brute_force_topk(height, width, stack, layer, k):
  """Each image's first maximum per channel, sorted by (-value, image), the top k.

  Unfilled entries -inf / -1 (tests/test_topk.py checks search against the same rule in
  depth). Also the (N, H * W, C) map."""
  feature_map = np.asarray(models.activations(MODEL, variables_for(height, width), stack,
                                              (layer,))[layer])
  n, _, map_width, channels = feature_map.shape
  flat = feature_map.reshape(n, -1, channels)
  values = np.full((channels, k), -np.inf, np.float32)
  example, y, x = (np.full((channels, k), -1, np.int32) for _ in range(3))
  for c in range(channels):
    order = np.lexsort((np.arange(n), -flat[:, :, c].max(1)))[:k]
    values[c, :len(order)] = flat[order, :, c].max(1)
    example[c, :len(order)] = order
    y[c, :len(order)], x[c, :len(order)] = divmod(flat[order, :, c].argmax(1), map_width)
  return values, example, y, x, flat


def within_rounding(a, b):
  return bool(np.abs(a - b) <= 1e-5 + 1e-5 * np.abs(b))


@pytest.mark.slow  # the full tier; test_deconv and test_topk keep exact checks
@FEW
@given(height=st.sampled_from(SIZES[:2]), width=st.sampled_from(SIZES[:2]),
       sizes=st.lists(st.sampled_from((1, 2, 3, 5)), min_size=1, max_size=3),
       zero=st.booleans(), layer=st.sampled_from(MAPS), k=st.integers(1, 12))
# batches of 1 and of a prime, k larger than the 6 images, all-zero images (images tie)
@example(height=9, width=13, sizes=[1, 5], zero=True, layer='conv3', k=9)
def test_search_valid_inputs(height, width, sizes, zero, layer, k):
  stack = images(sum(sizes), height, width, zero)
  batches = np.split(np.asarray(stack), np.cumsum(sizes)[:-1])
  result = topk.search(MODEL, variables_for(height, width), batches, layers=layer, k=k)[layer]
  assert all(v.shape == (8, k) for v in result)
  values, example_, y, x, flat = brute_force_topk(height, width, stack, layer, k)
  filled = min(k, len(stack))
  assert bool(jnp.isfinite(result.values[:, :filled]).all())
  assert bool((result.values[:, filled:] == -jnp.inf).all())
  np.testing.assert_allclose(result.values, values, rtol=1e-5, atol=1e-5)
  for name in ('example', 'y', 'x'):
    assert (np.asarray(getattr(result, name))[:, filled:] == -1).all(), name
  # Entries are the brute force's: ties go to the first location in row-major order, then
  # to the earlier example. But XLA can round equal values a bit apart in another program
  # or at another batch row (tests/test_topk.py), so identical images, or equal locations
  # of a blank image, are ties only up to rounding: there another image or location whose
  # value is within rounding of the entry's may stand in (zeros tie exactly).
  map_width = architecture.shapes(SPEC, (height, width, 3))[layer][1]
  for c in range(flat.shape[-1]):
    found, order = np.asarray(result.values[c, :filled]), np.asarray(result.example[c, :filled])
    assert len(set(order.tolist())) == filled, c
    # Sorted by the search's own values; where those tie exactly, the earlier example first.
    assert (found[1:] <= found[:-1]).all(), c
    assert (order[1:] > order[:-1])[found[1:] == found[:-1]].all(), c
    for j in range(filled):
      n = int(result.example[c, j])
      where = int(result.y[c, j]) * map_width + int(result.x[c, j])
      best = flat[n, :, c].max()
      if n != example_[c, j]:
        assert values[c, j] > 0 and within_rounding(best, values[c, j]), (c, j, n)
      if (n, where) != (example_[c, j], y[c, j] * map_width + x[c, j]):
        assert best > 0 and within_rounding(flat[n, where, c], best), (c, j, n, where)


BAD_SEARCH = [  # (argument, value): every one of these is tried
    *[('k', v) for v in (0, -1, 2.5, '3', None, True)],
    *[('layers', v) for v in ('fc6', 'conv9', '', 'input', (), ('conv1', 'fc7'), None)],
    *[('batches', shape) for shape in ((9, 9, 3), (1, 9, 9), (1, 9, 9, 1), (1, 9, 9, 4),
                                       (1, 1, 9, 9, 3), (1, 4, 9, 3))],
    ('batches', {'pixels': (1, 9, 9, 3)}), ('batches', {'image': (2, 9, 9, 3), 'mask': (3,)}),
    ('batches', 7), ('batches', np.zeros((2, 9, 9, 3), np.float32)),
    ('batches', {'image': np.zeros((2, 9, 9, 3), np.float32)}),
]


def search_with(name, value):
  kwargs = {'batches': [np.zeros((1, 9, 9, 3), np.float32)], 'layers': 'conv2', 'k': 3}
  if name == 'batches':
    if isinstance(value, dict) and all(isinstance(v, tuple) for v in value.values()):
      value = [{key: np.zeros(shape, bool if key == 'mask' else np.float32)
                for key, shape in value.items()}]
    elif isinstance(value, tuple):
      value = [np.zeros(value, np.float32)]
  kwargs[name] = value
  return topk.search(MODEL, variables_for(9, 9), kwargs['batches'], layers=kwargs['layers'],
                     k=kwargs['k'])


@pytest.mark.parametrize('name, value', BAD_SEARCH)
def test_search_invalid_inputs_name_the_argument(name, value):
  match = {'k': 'k must', 'layers': 'layer', 'batches': 'batch|image|mask|too small'}[name]
  with pytest.raises(ValueError, match=match):
    search_with(name, value)
