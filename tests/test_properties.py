"""Property tests (hypothesis) of deconv.project and occlusion.sensitivity at their edges,
on a tiny small_zfnet (8-wide convs, fc 16) and small images: random valid image sizes,
channel lists (empty, repeated), occluder patches and strides (patch as large as the
image, strides that do not divide it), fills, batch sizes 1 and a prime, all-zero images.
Valid input gives finite results of the documented shape; invalid input gives a
ValueError naming the argument.

Each new shape compiles a program, so the valid-input properties draw from a few sizes
and run a handful of examples; the invalid-input ones fail before anything compiles.
Params are He-normal numbers of the model's shapes for each image size (fc6's input
depends on it), drawn with NumPy: nothing is compiled for them.
"""

import jax.numpy as jnp
import numpy as np
import pytest

hypothesis = pytest.importorskip('hypothesis')
# pylint: disable=wrong-import-position
from hypothesis import example, given, settings, strategies as st

from zfjax import architecture, checkpoints, deconv, models, occlusion

SPEC = architecture.small_zfnet(5, conv_features=(8, 8, 8, 8, 8), fc_features=(16, 16))
MODEL = models.ConvNet(SPEC)
CONVS = architecture.conv_names(SPEC)
SIZES = (9, 13, 32)  # valid image sides (3 ceil pools); 32 is the digits model's
FEW = settings(max_examples=4, deadline=None, derandomize=True)  # + the explicit example
FEWER = settings(max_examples=2, deadline=None, derandomize=True)
MANY = settings(max_examples=25, deadline=None, derandomize=True)

_VARIABLES = {}


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


# ------------------------------------------------------------------------- deconvnet


@FEW
@given(height=st.sampled_from(SIZES), width=st.sampled_from(SIZES),
       batch=st.sampled_from((1, 3)), zero=st.booleans(), layer=st.sampled_from(CONVS),
       channels=st.lists(st.integers(0, 7), max_size=4),
       rule=st.sampled_from(deconv.RULES), chunk_size=st.sampled_from((1, 5, 64)))
@example(height=13, width=9, batch=3, zero=True, layer='conv5', channels=[2, 7, 2],
         rule='deconvnet', chunk_size=5)  # a prime batch, 9 units in chunks of 5
def test_project_valid_inputs(height, width, batch, zero, layer, channels, rule, chunk_size):
  x = images(batch, height, width, zero)
  out = deconv.project(MODEL, variables_for(height, width), x, layer, np.asarray(channels,
                       np.int32), rule=rule, chunk_size=chunk_size)
  assert out.shape == (batch, len(channels), height, width, 3)
  assert bool(jnp.isfinite(out).all())
  for k, channel in enumerate(channels):  # a repeated channel projects the same
    first = channels.index(channel)
    np.testing.assert_array_equal(out[:, k], out[:, first])


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
  """(height, width, patch, stride): patches up to the whole image, strides up to past
  it, so the last positions need not line up with the edge."""
  height, width = draw(st.sampled_from(SIZES[:2])), draw(st.sampled_from(SIZES[:2]))
  patch = draw(st.integers(1, min(height, width)))
  stride = draw(st.integers(1, max(height, width) + 2))
  return height, width, patch, stride


@FEWER
@given(geometry=occluders(), fill=st.floats(-100, 100, allow_nan=False),
       label=st.integers(0, 4), zero=st.booleans(), layer=st.sampled_from(CONVS))
# the patch as wide as the image and a stride past its end: one column of positions
@example(geometry=(13, 9, 9, 11), fill=-50.0, label=4, zero=False, layer='conv5')
def test_sensitivity_valid_inputs(geometry, fill, label, zero, layer):
  height, width, patch, stride = geometry
  image = images(1, height, width, zero)[0]
  maps = occlusion.sensitivity(MODEL, variables_for(height, width), image, label,
                               patch=patch, stride=stride, fill=fill, layer=layer)
  grid = ((height - patch) // stride + 1, (width - patch) // stride + 1)
  assert maps.prob.shape == maps.top_class.shape == maps.feature.shape == grid
  assert maps.projection.shape == (height, width, 3)
  for value in (maps.prob, maps.feature, maps.projection, maps.unoccluded_prob,
                maps.unoccluded_feature):
    assert bool(jnp.isfinite(value).all())
  assert bool(((maps.prob >= 0) & (maps.prob <= 1)).all())
  assert bool(((maps.top_class >= 0) & (maps.top_class < 5)).all())
  assert 0 <= int(maps.channel) < 8 and bool((maps.feature >= 0).all())


BAD_SENSITIVITY = [  # (argument, value): every one of these is tried (image 13x13)
    *[('patch', v) for v in (14, 0, -3, 2.5, '4', None, True)],
    *[('stride', v) for v in (0, -1, 1.5, '2', None)],
    *[('label', v) for v in (-1, 5, 99, 2.5, '1', None)],
    *[('fill', v) for v in (float('nan'), float('inf'), '0', None, [0.0, 1.0])],
    *[('layer', v) for v in ('fc6', 'pool5', 'conv6')],
    *[('method', v) for v in ('fast', 'Naive')],
    *[('field_threshold', v) for v in (0.0, -0.5, 1.5)],
    *[('chunk_size', v) for v in (0, -2, 2.5, None)],
    *[('image', shape) for shape in ((1, 13, 13, 3), (13, 13), (13, 13, 1), (13, 13, 4),
                                     (2, 2, 3))],
]


def sensitivity_with(name, value):
  kwargs = {'patch': 4, 'stride': 3, 'label': 1, 'fill': 0.0, 'layer': None,
            'method': 'incremental', 'field_threshold': None, 'chunk_size': 64}
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
