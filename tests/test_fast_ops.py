"""zfjax.fast_ops: the same functions as the plain ops, and gradients equal to jax.grad's."""

import contextlib
import functools
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from zfjax import architecture, fast_ops, models

NHWC = ('NHWC', 'HWIO', 'NHWC')


def plain_pool(x, window, stride, padding):
  return nn.max_pool(x, (window,) * 2, strides=(stride,) * 2, padding=padding)


def relative_error(got, expected) -> float:
  got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
  return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-30))


def distinct(shape, seed=0):
  """Values with no ties: a permutation of 0..size-1, as float32."""
  size = int(np.prod(shape))
  return jnp.asarray(np.random.default_rng(seed).permutation(size).reshape(shape), jnp.float32)


# ----------------------------------------------------------------------------- max pool

POOLS = [  # (height, width, window, stride, padding)
    pytest.param(110, 110, 3, 2, ((0, 1), (0, 1)), marks=pytest.mark.slow),  # ZFNet's pool1
    (13, 13, 3, 2, ((0, 0), (0, 0))),
    pytest.param(8, 9, 2, 2, ((0, 0), (0, 1)), marks=pytest.mark.slow),
    (10, 7, 3, 3, ((1, 2), (0, 2))),
    pytest.param(11, 12, 5, 2, ((0, 0), (2, 1)), marks=pytest.mark.slow),
]


@pytest.mark.parametrize('one_pass', [False, True], ids=['rows-then-columns', '2-D'])
@pytest.mark.parametrize('height,width,window,stride,padding', POOLS)
def test_max_pool_equals_reduce_window_and_its_gradient(height, width, window, stride,
                                                        padding, one_pass, monkeypatch):
  if one_pass:  # the 2-D reduce_window that large maps take
    monkeypatch.setattr(fast_ops, 'SEPARABLE_POOL_BYTES', 0)
  x = distinct((2, height, width, 3))
  def value_and_grad(pool, g):
    y, vjp = jax.vjp(lambda x: pool(x, window, stride, padding), x)
    return y, vjp(g)[0]
  g = jax.random.normal(jax.random.key(1), plain_pool(x, window, stride, padding).shape)
  expected, expected_grad = jax.jit(value_and_grad, static_argnums=0)(plain_pool, g)
  got, got_grad = jax.jit(value_and_grad, static_argnums=0)(fast_ops.max_pool, g)
  np.testing.assert_array_equal(got, expected)
  assert relative_error(got_grad, expected_grad) < 1e-6


def first_max_gradient(x, g, window, stride, padding):
  """numpy: each output's gradient added at its window's first maximum (row-major)."""
  x, g = np.asarray(x), np.asarray(g)
  (lo_h, hi_h), (lo_w, hi_w) = padding
  padded = np.pad(x, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)), constant_values=-np.inf)
  grad = np.zeros_like(padded)
  n, out_h, out_w, c = g.shape
  for b, i, j, k in np.ndindex(n, out_h, out_w, c):
    patch = padded[b, i * stride:i * stride + window, j * stride:j * stride + window, k]
    dy, dx = np.unravel_index(np.argmax(patch), patch.shape)  # argmax: first maximum
    grad[b, i * stride + dy, j * stride + dx, k] += g[b, i, j, k]
  return grad[:, lo_h:lo_h + x.shape[1], lo_w:lo_w + x.shape[2]]


def test_max_pool_gradient_goes_to_the_first_maximum_on_ties():
  x = jnp.asarray(np.random.default_rng(0).integers(0, 3, (2, 9, 8, 2)), jnp.float32)
  padding = ((0, 0), (0, 1))
  y, vjp = jax.vjp(lambda x: fast_ops.max_pool(x, 3, 2, padding), x)
  g = jax.random.normal(jax.random.key(2), y.shape)
  np.testing.assert_allclose(vjp(g)[0], first_max_gradient(x, g, 3, 2, padding), rtol=1e-6,
                             atol=1e-6)


def test_max_pool_gradient_is_the_deconvnets_unpooling():
  from zfjax import deconv  # pylint: disable=import-outside-toplevel
  record = architecture.Pool('pool', window=3, stride=2, ceil=True)
  x = jnp.asarray(np.random.default_rng(1).integers(0, 4, (1, 11, 11, 4)), jnp.float32)
  y, vjp = jax.vjp(lambda x: models.max_pool(x, record), x)
  g = jax.random.normal(jax.random.key(3), y.shape)
  unpooled = deconv.unpool(g, deconv.switches(x, record), record)[:, :11, :11]
  np.testing.assert_allclose(vjp(g)[0], unpooled, rtol=1e-6, atol=1e-6)


# -------------------------------------------------------------------------- convolution

CONVS = [  # (size, in, out, kernel, stride, padding)
    (37, 3, 8, 7, 2, ((1, 1), (1, 1))),     # ZFNet's conv1 geometry
    pytest.param(23, 6, 8, 5, 2, ((0, 0), (0, 0)), marks=pytest.mark.slow),  # ZFNet's conv2
    pytest.param(47, 3, 8, 11, 4, ((2, 2), (2, 2)), marks=pytest.mark.slow),  # AlexNet conv1
    pytest.param(13, 6, 8, 5, 1, ((2, 2), (2, 2)), marks=pytest.mark.slow),   # AlexNet conv2
    pytest.param(13, 6, 8, 3, 1, ((1, 1), (1, 1)), marks=pytest.mark.slow),   # conv3..conv5
    (17, 5, 4, 4, 3, ((1, 2), (0, 1))),     # uneven padding, a kernel the stride splits
    pytest.param(9, 5, 4, 1, 1, ((0, 0), (0, 0)), marks=pytest.mark.slow),
]


@pytest.mark.parametrize('size,cin,cout,kernel,stride,padding', CONVS)
def test_conv_equals_lax_and_its_gradients(size, cin, cout, kernel, stride, padding):
  # 5 images, at most 4 a step: evaluated, fast_ops builds the patches of 3 at a time,
  # the batch padded to 6
  x = jax.random.normal(jax.random.key(0), (5, size, size + 1, cin))
  k = jax.random.normal(jax.random.key(1), (kernel, kernel, cin, cout))
  plain = lambda x, k: lax.conv_general_dilated(x, k, (stride,) * 2, padding,
                                                dimension_numbers=NHWC)
  fast = lambda x, k: fast_ops.conv_general_dilated(x, k, (stride,) * 2, padding,
                                                    dimension_numbers=NHWC)
  per_image = plain(x[:1], k)[0, ..., 0].size * kernel * kernel * cin * 4
  with mock.patch.object(fast_ops, 'PATCH_BYTES', 4 * per_image), \
       mock.patch.object(fast_ops, 'LARGE_PATCH_BYTES', 0):  # these small maps too
    in_steps = jax.jit(fast)(x, k)
  assert relative_error(in_steps, plain(x, k)) < 1e-6
  assert relative_error(jax.jit(fast)(x, k), plain(x, k)) < 1e-6  # small maps: lax
  # differentiated, the value is the patches times the kernel: the same function
  value_and_grads = jax.jit(lambda x, k, g, f: (lambda y, vjp: (y, *vjp(g)))(*jax.vjp(f, x, k)),
                            static_argnums=3)
  g = jax.random.normal(jax.random.key(2), plain(x, k).shape)
  for got, expected in zip(value_and_grads(x, k, g, fast), value_and_grads(x, k, g, plain)):
    assert relative_error(got, expected) < 1e-5


def test_conv_other_calls_go_to_lax_unchanged():
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 4))
  k = jax.random.normal(jax.random.key(1), (3, 3, 2, 4))
  cases = [dict(window_strides=(1, 1), padding='SAME', feature_group_count=2),
           dict(window_strides=(2, 2), padding=[(1, 1), (1, 1)], rhs_dilation=(2, 2),
                feature_group_count=2),
           dict(window_strides=(1, 2), padding=[(0, 0), (0, 0)], feature_group_count=2)]
  for kwargs in cases:
    expected = lax.conv_general_dilated(x, k, dimension_numbers=NHWC, **kwargs)
    got = fast_ops.conv_general_dilated(x, k, dimension_numbers=NHWC, **kwargs)
    np.testing.assert_array_equal(got, expected)
    jaxpr = str(jax.make_jaxpr(
        lambda x, k, kw=kwargs: fast_ops.conv_general_dilated(x, k, dimension_numbers=NHWC,
                                                              **kw))(x, k))
    assert 'custom_jvp' not in jaxpr and 'platform_index' not in jaxpr


# ---------------------------------------------------------------------------- Winograd

WINOGRAD_CONVS = [  # (height, width, in, out, kernel, stride, padding): ceil(k / s) = 3
    (13, 13, 6, 8, 3, 1, ((1, 1), (1, 1))),    # conv3..conv5: 13 outputs, a part-filled tile
    (27, 28, 6, 8, 5, 2, ((0, 0), (0, 0))),    # ZFNet's conv2
    (47, 45, 3, 8, 11, 4, ((2, 2), (2, 2))),   # AlexNet's conv1
    (12, 11, 5, 4, 6, 2, ((0, 1), (1, 0))),    # uneven padding, a kernel of three whole strides
]


@pytest.mark.parametrize('m', [2, 3, 4])
def test_winograd_matrices_are_minimal_filtering(m):
  """y = A^T [(G g) * (B^T d)] is the valid correlation of m + 2 inputs with 3 taps."""
  a_t, g, b_t = fast_ops.winograd_matrices(m)
  assert a_t.shape == (m, m + 2) and g.shape == (m + 2, 3) and b_t.shape == (m + 2, m + 2)
  rng = np.random.default_rng(m)
  for _ in range(5):
    d, taps = rng.normal(size=m + 2), rng.normal(size=3)
    np.testing.assert_allclose(a_t @ ((g @ taps) * (b_t @ d)), np.correlate(d, taps, 'valid'),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('height,width,cin,cout,kernel,stride,padding', WINOGRAD_CONVS)
def test_winograd_equals_lax_for_every_tile_size(height, width, cin, cout, kernel, stride,
                                                 padding):
  x = jax.random.normal(jax.random.key(0), (3, height, width, cin))
  k = jax.random.normal(jax.random.key(1), (kernel, kernel, cin, cout))
  expected = lax.conv_general_dilated(x, k, (stride,) * 2, padding, dimension_numbers=NHWC,
                                      precision=lax.Precision.HIGHEST)
  for m in (2, 3, 4, (4, 3), (2, 4)):  # measured: about 3e-7, 9e-7 and 2.5e-6 for 2..4
    got = jax.jit(fast_ops.winograd, static_argnums=(2, 3, 4, 5))(x, k, stride, padding,
                                                                  None, m)
    assert got.shape == expected.shape
    assert relative_error(got, expected) < 2e-6 * np.max(m), m
  with pytest.raises(ValueError, match=r'ceil\(kernel / stride\) = 3, got a 4x4 kernel'):
    fast_ops.winograd(x, jnp.zeros((4, 4, cin, cout)), 2, padding)


@pytest.mark.parametrize('height,width,cin,cout,kernel,stride,padding', WINOGRAD_CONVS)
def test_large_float32_maps_go_by_winograd_with_the_same_gradients(height, width, cin, cout,
                                                                   kernel, stride, padding):
  """conv_general_dilated on a CPU: Winograd where ceil(k / s) = 3 on large float32 maps."""
  x = jax.random.normal(jax.random.key(0), (2, height, width, cin))
  k = jax.random.normal(jax.random.key(1), (kernel, kernel, cin, cout))
  plain = lambda x, k: lax.conv_general_dilated(x, k, (stride,) * 2, padding,
                                                dimension_numbers=NHWC)
  fast = lambda x, k: fast_ops.conv_general_dilated(x, k, (stride,) * 2, padding,
                                                    dimension_numbers=NHWC)
  value_and_grads = jax.jit(lambda x, k, g, f: (lambda y, vjp: (y, *vjp(g)))(*jax.vjp(f, x, k)),
                            static_argnums=3)
  g = jax.random.normal(jax.random.key(2), plain(x, k).shape)
  expected = value_and_grads(x, k, g, plain)
  with mock.patch.object(fast_ops, 'winograd', wraps=fast_ops.winograd) as winograd:
    jax.make_jaxpr(fast)(x, k)  # these maps are small: lax's convolution
    assert not winograd.called
    with mock.patch.object(fast_ops, 'LARGE_PATCH_BYTES', 0):  # these small maps too
      jax.make_jaxpr(fast)(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16))
      assert not winograd.called  # float32 only
      got = value_and_grads(x, k, g, fast)
      assert winograd.called
  for got_array, expected_array in zip(got, expected):
    assert relative_error(got_array, expected_array) < 1e-5


@pytest.mark.slow  # the full tier (float32 is the default everywhere)
def test_bfloat16_runs_and_stays_close():
  x = jax.random.normal(jax.random.key(0), (2, 23, 23, 6)).astype(jnp.bfloat16)
  k = (jax.random.normal(jax.random.key(1), (5, 5, 6, 8)) * 0.1).astype(jnp.bfloat16)

  def grads(pool, conv):
    def loss(x, k):
      y = conv(x, k, (2, 2), [(0, 0)] * 2, dimension_numbers=NHWC)
      return jnp.sum(jax.nn.relu(pool(y, 3, 2, ((0, 1), (0, 1)))).astype(jnp.float32) ** 2)
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, k)
  got = grads(fast_ops.max_pool, fast_ops.conv_general_dilated)
  expected = grads(plain_pool, lax.conv_general_dilated)
  for got_grad, expected_grad in zip(got, expected):
    assert got_grad.dtype == jnp.bfloat16
    assert relative_error(got_grad, expected_grad) < 3e-2


# ---------------------------------------------------------------- the model's gradients


@functools.partial(jax.jit, static_argnums=(0, 4))
def parameter_gradients(model, params, images, labels, plain: bool):
  """jax.grad of the mean cross-entropy in training mode (dropout on, a fixed key).

  With plain=True, of the same net with nn.max_pool and lax's convolution."""
  def loss(params):
    logits = model.apply({'params': params}, images, train=True,
                         rngs={'dropout': jax.random.key(7)})
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))
  with contextlib.ExitStack() as stack:
    if plain:
      stack.enter_context(mock.patch.object(fast_ops, 'max_pool', plain_pool))
      stack.enter_context(mock.patch.object(fast_ops, 'conv_general_dilated',
                                            lax.conv_general_dilated))
    return jax.grad(loss)(params)


def random_params(model, size, seed=0):
  """Parameters of the model's shapes: normal weights (std 0.05), biases 0.1."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, s: jnp.asarray(np.full(s.shape, 0.1) if path[-1].key == 'bias' else
                                  0.05 * rng.standard_normal(s.shape), jnp.float32),
      shapes['params'])


def check_gradients_equal_plain(spec, size, images=None, batch=2):
  """The ConvNet's parameter gradients equal the plain net's (nn.max_pool, lax's conv).

  Within 1e-5 relative: per parameter, the largest difference over the largest entry."""
  model = models.ConvNet(spec)
  params = random_params(model, size)
  if images is None:
    images = jax.random.normal(jax.random.key(1), (batch, size, size, 3)) * 50
  labels = jnp.arange(images.shape[0]) % spec[-1].features
  got = parameter_gradients(model, params, images, labels, False)
  expected = parameter_gradients(model, params, images, labels, True)
  errors = jax.tree.map(relative_error, got, expected)
  assert max(jax.tree.leaves(errors)) < 1e-5, errors
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(expected))


NARROW = dict(conv_features=(8, 12, 16, 16, 12), fc_features=(16, 16))


@pytest.mark.slow  # full tier (the conv and pool gradients above stay in the default one)
def test_zfnet_gradients_equal_the_plain_models():
  """ZFNet's geometry (7x7/2, 5x5/2, ceil pools), narrow, on 64x64 images."""
  check_gradients_equal_plain(architecture.zfnet(5, **NARROW), 64)


@pytest.mark.slow  # the full tier (ZFNet's gradients stay in the default one)
def test_tie_windows_leave_the_parameter_gradients_unchanged():
  """Flat images: conv1's map is constant inside each flat area, its pool windows ties."""
  images = jnp.full((2, 64, 64, 3), 30.0).at[1, 20:40, 20:40].set(-30.0)
  check_gradients_equal_plain(architecture.zfnet(5, **NARROW), 64, images=images)


@pytest.mark.slow  # the full tier (AlexNet's geometry; ZFNet's stays in the default one)
def test_alexnet_gradients_equal_the_plain_models():
  """11x11/4 with padding, normalization before pooling, a 5x5 stride-1 conv2."""
  check_gradients_equal_plain(architecture.alexnet(5, **NARROW), 67)


@pytest.mark.slow
def test_zfnet_gradients_at_224_equal_the_plain_models():
  check_gradients_equal_plain(architecture.zfnet(5, **NARROW), 224)


@pytest.mark.slow
@pytest.mark.parametrize('variant', sorted(architecture.VARIANTS))
def test_table3_variants_gradients_equal_the_plain_models(variant):
  """Table 3's nets, removed layers and all, with an eighth of the maps and units."""
  family, maps, units, removed = architecture.VARIANTS[variant]
  spec = architecture.get(family, 5, conv_features=tuple(m // 8 for m in maps),
                          fc_features=tuple(u // 64 for u in units))
  check_gradients_equal_plain(architecture.without(spec, *removed), 224, batch=1)


@pytest.mark.slow
def test_full_zfnet_gradients_equal_the_plain_models():
  check_gradients_equal_plain(architecture.zfnet(1000), 224)
