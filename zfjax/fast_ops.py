"""Max pooling and convolution, faster on CPUs, the same functions.

    y = fast_ops.max_pool(x, window=3, stride=2, padding=((0, 1), (0, 1)))
    y = fast_ops.conv_general_dilated(x, kernel, (2, 2), [(1, 1), (1, 1)],
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

Evaluated, max pooling is the plain op (`lax.reduce_window` max; rows, then columns, on
maps that fit the caches) and a convolution on a CPU is matrix products (im2col) a few
images at a time; both equal the plain ops (the convolution up to float32 rounding).
What changes most is how their derivatives are computed; `models.ConvNet` trains with
them:

- `max_pool`: a custom VJP that routes each output's gradient to its window's maximum,
  the first one in row-major order on ties, as the deconvnet's switches do
  (zfjax.deconv.switches). XLA's gradient (select-and-scatter) is several times slower
  on CPUs. The input gradient is built one stride residue at a time (the positions
  s*i + r along each axis), every piece a dense array at the output's resolution.
  Used on every platform.
- `conv_general_dilated` (lax's signature, the function flax's nn.Conv calls): on CPUs,
  NHWC/HWIO convolutions are `conv`, the im2col form: the input's patches (N, H', W',
  kh * kw * C) times the kernel as a (kh * kw * C, O) matrix. Its value and its
  gradients are then large matrix products, which XLA's CPU kernels run far faster than
  its convolutions and their gradients (strided ones most). Other platforms, and calls
  with dilation, groups, string padding or other layouts, get lax's convolution.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import custom_derivatives
from jax import lax

Array = jax.Array

_NHWC = ('NHWC', 'HWIO', 'NHWC')

# ----------------------------------------------------------------------------- max pool


def max_pool(x: Array, window: int, stride: int, padding) -> Array:
  """Max pooling of an NHWC map, windows `window` x `window`, `stride` apart.

  padding: ((low, high), (low, high)) for height and width, filled with -inf. Same values
  as `lax.reduce_window(x, -inf, lax.max, ...)`; the gradient goes to the first maximum of
  each window in row-major order."""
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _max_pool(x, int(window), int(stride), padding)


SEPARABLE_POOL_BYTES = 1 << 24  # pools whose rows pass writes at most this: two 1-D passes


def _reduce_max(x, window, stride, padding):
  """The pool's maxima, in two 1-D passes while the intermediate map stays small.

  Rows, then columns, while the rows pass's output fits SEPARABLE_POOL_BYTES (it stays
  near the caches), else one 2-D reduce_window. The same values (max is exact).
  XLA:CPU's reduce_window costs about its window's area per output: two passes ran 2-3x
  faster on the search's steps of two images (pool1: 2.2 against 0.64 ms) and on 32
  images' pool2, but 6-20% slower once the intermediate map spills (pool1 at 8 to 64
  images)."""
  init = jnp.array(-jnp.inf, x.dtype)
  (lo_h, hi_h), (lo_w, hi_w) = padding
  rows_bytes = (x.shape[0] * ((x.shape[1] + lo_h + hi_h - window) // stride + 1)
                * x.shape[2] * x.shape[3] * x.dtype.itemsize)
  if rows_bytes > SEPARABLE_POOL_BYTES:
    return lax.reduce_window(x, init, lax.max, (1, window, window, 1),
                             (1, stride, stride, 1), ((0, 0), *padding, (0, 0)))
  rows = lax.reduce_window(x, init, lax.max, (1, window, 1, 1), (1, stride, 1, 1),
                           ((0, 0), (lo_h, hi_h), (0, 0), (0, 0)))
  return lax.reduce_window(rows, init, lax.max, (1, 1, window, 1), (1, 1, stride, 1),
                           ((0, 0), (0, 0), (lo_w, hi_w), (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, stride, padding):
  return _reduce_max(x, window, stride, padding)


def _max_pool_forward(x, window, stride, padding):
  y = _reduce_max(x, window, stride, padding)
  return y, (x, y)


def _max_pool_backward(window, stride, padding, residuals, g):
  x, y = residuals
  k, s = window, stride
  out_h, out_w = y.shape[1:3]
  # the padded input, long enough for whole s x s blocks
  blocks_h, blocks_w = -(-(s * (out_h - 1) + k) // s), -(-(s * (out_w - 1) + k) // s)
  (lo_h, _), (lo_w, _) = padding
  hi_h, hi_w = s * blocks_h - lo_h - x.shape[1], s * blocks_w - lo_w - x.shape[2]
  padded = lax.pad(x, jnp.array(-jnp.inf, x.dtype),
                   ((0, 0, 0), (lo_h, hi_h, 0), (lo_w, hi_w, 0), (0, 0, 0)))
  # gradient of each tap (dy, dx): g where that tap is the window's first maximum
  taken = jnp.zeros(y.shape, bool)
  routed = {}
  for dy in range(k):
    for dx in range(k):
      tap = lax.slice(padded, (0, dy, dx, 0),
                      (y.shape[0], dy + s * (out_h - 1) + 1, dx + s * (out_w - 1) + 1,
                       y.shape[3]), (1, s, s, 1))
      first = (tap == y) & ~taken
      taken = taken | first
      routed[dy, dx] = jnp.where(first, g, jnp.zeros((), g.dtype))
  # padded position (s*i + ry, s*j + rx) sums the taps (s*my + ry, s*mx + rx) of windows
  # (i - my, j - mx)
  rows = []
  for ry in range(s):
    columns = []
    for rx in range(s):
      plane = jnp.zeros((y.shape[0], blocks_h, blocks_w, y.shape[3]), g.dtype)
      for my in range(-(-(k - ry) // s)):
        for mx in range(-(-(k - rx) // s)):
          plane = plane + lax.pad(routed[s * my + ry, s * mx + rx], jnp.zeros((), g.dtype),
                                  ((0, 0, 0), (my, blocks_h - out_h - my, 0),
                                   (mx, blocks_w - out_w - mx, 0), (0, 0, 0)))
      columns.append(plane)
    rows.append(jnp.stack(columns, axis=3).reshape(y.shape[0], blocks_h, s * blocks_w, -1))
  full = jnp.stack(rows, axis=2).reshape(y.shape[0], s * blocks_h, s * blocks_w, -1)
  return (full[:, lo_h:lo_h + x.shape[1], lo_w:lo_w + x.shape[2]],)


_max_pool.defvjp(_max_pool_forward, _max_pool_backward)

# ------------------------------------------------------------------------ convolution


def conv_general_dilated(lhs: Array, rhs: Array, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None,
                         preferred_element_type=None) -> Array:
  """`lax.conv_general_dilated`; on CPUs, NHWC/HWIO convolutions as `conv`.

  The signature is lax's (flax's nn.Conv takes it as `conv_general_dilated`). On a CPU, a
  call with equal strides, explicit padding, no dilation, one group, no
  preferred_element_type and NHWC/HWIO/NHWC dimensions is `conv`; any other call, and
  every call on other platforms, goes to lax as it is."""
  plain = functools.partial(
      lax.conv_general_dilated, window_strides=window_strides, padding=padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)
  strides = tuple(window_strides)
  if (len(strides) != 2 or strides[0] != strides[1] or isinstance(padding, str)
      or not _is_nhwc(dimension_numbers, lhs.ndim)
      or any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
      or feature_group_count != 1 or batch_group_count != 1
      or preferred_element_type is not None or lhs.dtype != rhs.dtype):
    return plain(lhs, rhs)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  return lax.platform_dependent(
      lhs, rhs, cpu=lambda x, kernel: conv(x, kernel, strides[0], padding, precision),
      default=plain)


def _is_nhwc(dimension_numbers, ndim) -> bool:
  if ndim != 4 or dimension_numbers is None:
    return False
  shape = (1, 1, 1, 1)
  return (lax.conv_dimension_numbers(shape, shape, dimension_numbers)
          == lax.conv_dimension_numbers(shape, shape, _NHWC))


PATCH_BYTES = 1 << 24  # an evaluated convolution's patches per step (one image at least)
LARGE_PATCH_BYTES = 1 << 20  # from these patches an image, evaluated as matrix products


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def conv(x: Array, kernel: Array, stride: int, padding, precision=None) -> Array:
  """An NHWC x HWIO convolution computed as matrix products.

  padding: ((low, high), (low, high)), zeros. The value is the input's patches (N, H',
  W', kh * kw * C, `patches`) times the kernel reshaped to a (kh * kw * C, O) matrix.
  Evaluated alone on large maps (LARGE_PATCH_BYTES of patches an image and more), it is
  built a few images at a time (at most PATCH_BYTES of patches a step, with `lax.map`),
  so the patches stay near the caches: XLA's CPU convolutions ran the same layers
  1.3-1.9x slower (ZFNet at 64 images: conv1 298 -> 156 ms, conv2 504 -> 360 ms,
  conv3..conv5 637 -> 424 ms). Small maps gain nothing and would pay the compile: there
  it is lax's convolution. The values are lax's convolution's up to float32 rounding.
  Differentiated, the patches of the whole batch are kept, and the gradients, by
  transposition, are matrix products too: the patches by the output's gradient (the
  kernel's), and the output's gradient by the kernel, scattered back onto the input (the
  input's)."""
  kh, kw, channels, _ = kernel.shape
  (lo_h, hi_h), (lo_w, hi_w) = padding
  out_h = (x.shape[1] + lo_h + hi_h - kh) // stride + 1
  out_w = (x.shape[2] + lo_w + hi_w - kw) // stride + 1
  per_image = out_h * out_w * kh * kw * channels * x.dtype.itemsize
  if per_image < LARGE_PATCH_BYTES:
    return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                    dimension_numbers=_NHWC, precision=precision)
  most = max(1, PATCH_BYTES // per_image)
  product = lambda images: _times_kernel(patches(images, (kh, kw), stride, padding), kernel,
                                         precision)
  n = x.shape[0]
  if n <= most:
    return product(x)
  step = _images_per_step(n, most)
  steps = -(-n // step)
  padded = jnp.pad(x, ((0, steps * step - n), (0, 0), (0, 0), (0, 0)))
  out = lax.map(product, padded.reshape(steps, step, *x.shape[1:]))
  return out.reshape(steps * step, *out.shape[2:])[:n]


def _images_per_step(n: int, most: int) -> int:
  """Images a step for n images, at most `most`: one loop body, no remainder to compile.

  A divisor of n when one is at least half of `most` (no padding), else n split evenly
  (the last step padded)."""
  divisor = next((d for d in range(most, (most - 1) // 2, -1) if n % d == 0), None)
  return divisor or -(-n // -(-n // most))


def _times_kernel(cols: Array, kernel: Array, precision) -> Array:
  """(N, H', W', K) patches times a kernel whose rows are K: one matrix product."""
  matrix = kernel.reshape(-1, kernel.shape[-1])
  out = jnp.dot(cols.reshape(-1, cols.shape[-1]), matrix, precision=precision)
  return out.reshape(*cols.shape[:-1], matrix.shape[-1])


@functools.partial(conv.defjvp, symbolic_zeros=True)
def _conv_jvp(stride, padding, precision, primals, tangents):
  """The im2col form: value and tangent are products of patches and kernels."""
  x, kernel = primals
  dx, d_kernel = tangents
  product = lambda a, b: _times_kernel(a, b, precision)  # the evaluated value's products
  cols = patches(x, kernel.shape[:2], stride, padding)
  y = product(cols, kernel)
  terms = []
  if not isinstance(dx, custom_derivatives.SymbolicZero):
    terms.append(product(patches(dx, kernel.shape[:2], stride, padding), kernel))
  if not isinstance(d_kernel, custom_derivatives.SymbolicZero):
    terms.append(product(cols, d_kernel))
  dy = sum(terms[1:], terms[0]) if terms else jnp.zeros_like(y)
  return y, dy


def patches(x: Array, kernel_size, stride: int, padding) -> Array:
  """Each output's window of the NHWC map x, zero-padded: (N, H', W', kh * kw * C).

  In the kernel's (row, column, channel) order, so an HWIO kernel reshaped to
  (kh * kw * C, O) multiplies them. Built in two passes, columns then rows (kw + kh
  strided slices rather than kh * kw: as fast, and far quicker to compile)."""
  kh, kw = kernel_size
  (lo_h, hi_h), (lo_w, hi_w) = padding
  x = lax.pad(x, jnp.zeros((), x.dtype),
              ((0, 0, 0), (lo_h, hi_h, 0), (lo_w, hi_w, 0), (0, 0, 0)))
  n, height, width, channels = x.shape
  out_h, out_w = (height - kh) // stride + 1, (width - kw) // stride + 1
  columns = [lax.slice(x, (0, 0, dx, 0), (n, height, dx + stride * (out_w - 1) + 1, channels),
                       (1, 1, stride, 1)) for dx in range(kw)]
  rows = jnp.concatenate(columns, axis=-1) if kw > 1 else columns[0]   # (N, Hp, W', kw * C)
  taps = [lax.slice(rows, (0, dy, 0, 0), (n, dy + stride * (out_h - 1) + 1, out_w,
                                          rows.shape[-1]), (1, stride, 1, 1))
          for dy in range(kh)]
  return jnp.concatenate(taps, axis=-1) if kh > 1 else taps[0]
