"""Max pooling and convolution, faster on CPUs, the same functions.

    y = fast_ops.max_pool(x, window=3, stride=2, padding=((0, 1), (0, 1)))
    y = fast_ops.conv_general_dilated(x, kernel, (2, 2), [(1, 1), (1, 1)],
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

Evaluated, max pooling is the plain op (`lax.reduce_window` max; rows, then columns, on
maps that fit the caches) and a convolution on a CPU is matrix products (im2col a few
images at a time, or Winograd's transformed tiles); both equal the plain ops (the
convolution up to float32 rounding).
What changes most is how their derivatives are computed; `models.ConvNet` trains with
them:

- `max_pool`: a custom VJP that routes each output's gradient to its window's maximum,
  the first one in row-major order on ties, as the deconvnet's switches do
  (zfjax.deconv.switches). XLA's gradient (select-and-scatter) is several times slower
  on CPUs. The input gradient is built one stride residue at a time (the positions
  s*i + r along each axis), every piece a dense array at the output's resolution.
  Used on every platform.
- `conv_general_dilated` (lax's signature, the function flax's nn.Conv calls): on CPUs,
  NHWC/HWIO convolutions are `cpu_conv`: `conv`, the im2col form (the input's patches
  (N, H', W', kh * kw * C) times the kernel as a (kh * kw * C, O) matrix), or on large
  float32 maps with ceil(kh / stride) = 3 (3x3/1, 5x5/2, 11x11/4) `winograd`, Winograd's
  F(2 x 2, 3 x 3) on the space-to-depth form, which does 1.6-2.25x fewer multiply-adds
  at the same rounding. Their values and gradients are then large matrix products,
  which XLA's CPU kernels run far faster than its convolutions and their gradients
  (strided ones most). Other platforms, and calls with dilation, groups, string padding
  or other layouts, get lax's convolution. zfjax.occlusion computes its windows with
  the same Winograd functions (`winograd_kernel`, `winograd_conv`).
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
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
      lhs, rhs, cpu=lambda x, kernel: cpu_conv(x, kernel, strides[0], padding, precision),
      default=plain)


def cpu_conv(x: Array, kernel: Array, stride: int, padding, precision=None) -> Array:
  """The convolution as CPUs run it fastest: `winograd` where it applies, else `conv`.

  Winograd (F(2 x 2, 3 x 3)) where ceil(k / stride) = 3, on large float32 maps (`conv`'s
  LARGE_PATCH_BYTES of patches an image): ZFNet's conv2..conv5, AlexNet's conv1 and
  conv3..conv5. It does 1.6-2.25x fewer multiply-adds than the patches' matrix
  products, at the same rounding (on 2 CPU cores, ZFNet's training step at batch 32
  went 1.10-1.15x faster, on two hosts; benchmarks/RESULTS.md)."""
  kh, kw = kernel.shape[:2]
  if (kh == kw and -(-kh // stride) == 3 and x.dtype == jnp.float32
      and _patch_bytes_per_image(x, kernel, stride, padding) >= LARGE_PATCH_BYTES):
    return winograd(x, kernel, stride, padding, precision)
  return conv(x, kernel, stride, padding, precision)


def _output_size(x: Array, kernel: Array, stride: int, padding) -> tuple[int, int]:
  """(height, width) of the NHWC x HWIO convolution's output; padding as ((lo, hi),) * 2."""
  return tuple((x.shape[1 + axis] + sum(padding[axis]) - kernel.shape[axis]) // stride + 1
               for axis in (0, 1))


def _patch_bytes_per_image(x: Array, kernel: Array, stride: int, padding) -> int:
  """Bytes of one image's im2col patches: output cells x kh * kw * C."""
  out_h, out_w = _output_size(x, kernel, stride, padding)
  return out_h * out_w * math.prod(kernel.shape[:3]) * x.dtype.itemsize


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
  per_image = _patch_bytes_per_image(x, kernel, stride, padding)
  if per_image < LARGE_PATCH_BYTES:
    return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                    dimension_numbers=_NHWC, precision=precision)
  most = max(1, PATCH_BYTES // per_image)
  product = lambda images: _times_kernel(patches(images, kernel.shape[:2], stride, padding),
                                         kernel, precision)
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


# ---------------------------------------------------------------------------- Winograd
# Winograd's minimal filtering F(m x m, 3 x 3) (Lavin & Gray, 2016) computes an m x m tile
# of a 3 x 3 convolution's outputs from (m + 2)^2 products instead of 9 m^2. A stride-s
# convolution with ceil(k / s) = 3 (3x3/1, ZFNet's 5x5/2, AlexNet's 11x11/4) is a 3 x 3
# convolution of its space-to-depth form (s x s cells as s*s*C channels, the kernel
# zero-padded to 3s taps), so it goes the same way.


def winograd(x: Array, kernel: Array, stride: int, padding, precision=None,
             m: int | tuple[int, int] = 2) -> Array:
  """An NHWC x HWIO convolution with ceil(k / stride) = 3, by Winograd's F(m x m, 3 x 3).

  padding: ((low, high), (low, high)), zeros. m: the output tile, m x m or (m_h, m_w).
  The outputs are computed in whole tiles (the input zero-padded to them) and cut to the
  convolution's size. With m = 2 (the default) the rounding is that of the matrix
  products: 1.2-1.5e-6 of the largest output against lax's convolution at float32's
  highest precision, for 1.3-1.6e-6 (m = 3: 5-6e-6, m = 4: 1.2-1.6e-5). Differentiable
  as it stands: its gradients are the same transforms transposed, and matrix products of
  the transformed tiles."""
  k = kernel.shape[0]
  if kernel.shape[1] != k or -(-k // stride) != 3:
    raise ValueError(f'Winograd F(m x m, 3 x 3) needs a square kernel with ceil(kernel / '
                     f'stride) = 3, got a {kernel.shape[0]}x{kernel.shape[1]} kernel with '
                     f'stride {stride}')
  (lo_h, hi_h), (lo_w, hi_w) = padding
  out_h, out_w = _output_size(x, kernel, stride, padding)
  height, width = ((-(-size // t) * t + 2) * stride
                   for size, t in zip((out_h, out_w), _tile(m)))
  x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (lo_h, height - x.shape[1] - lo_h, 0),
                                          (lo_w, width - x.shape[2] - lo_w, 0), (0, 0, 0)))
  y = winograd_conv(x, winograd_kernel(kernel, m, stride), m, stride, precision)
  return y[:, :out_h, :out_w]


def winograd_matrices(m: int, r: int = 3):
  """Toom-Cook matrices of Winograd's F(m, r) for correlation.

  Toom-Cook matrices A^T (m, n), G (n, r), B^T (n, n), n = m + r - 1, of Winograd's
  F(m, r) for correlation, y = A^T [(G g) * (B^T d)], from the points 0, 1, -1, 2, -2
  (as many as needed) and infinity; exact rationals, as float64."""
  points = [Fraction(p) for p in (0, 1, -1, 2, -2)[:m + r - 2]]
  n = m + r - 1

  def poly(roots):  # coefficients of prod (x - root), lowest power first, n of them
    coefficients = [Fraction(1)]
    for root in roots:
      coefficients = [Fraction(0)] + coefficients
      for i in range(len(coefficients) - 1):
        coefficients[i] -= root * coefficients[i + 1]
    return coefficients + [Fraction(0)] * (n - len(coefficients))

  others = [[q for q in points if q != p] for p in points]
  a_t = [[p ** i for p in points] + [Fraction(i == m - 1)] for i in range(m)]
  g = [[p ** k / math.prod(p - q for q in rest) for k in range(r)]
       for p, rest in zip(points, others)] + [[Fraction(k == r - 1) for k in range(r)]]
  b_t = [poly(rest) for rest in others] + [poly(points)]
  return tuple(np.array(x, np.float64) for x in (a_t, g, b_t))


def _tile(m) -> tuple[int, int]:
  """An output tile's (height, width): m, or a pair (m_h, m_w) for F(m_h x m_w, 3 x 3)."""
  return (m, m) if isinstance(m, int) else tuple(m)


def winograd_kernel(kernel, m, stride):
  """A strided kernel as Winograd's G g G^T of its space-to-depth form.

  A (k, k, C, D) kernel of a stride-s convolution with ceil(k / s) = 3, as Winograd's
  G g G^T of its space-to-depth form (a 3x3 kernel over s*s*C channels; taps beyond k
  are zero), for tiles of m x m outputs, or m_h x m_w with m = (m_h, m_w):
  ((m_h + 2) * (m_w + 2), s*s*C, D)."""
  k, _, c, d = kernel.shape
  kernel = jnp.pad(kernel, ((0, 3 * stride - k), (0, 3 * stride - k), (0, 0), (0, 0)))
  kernel = kernel.reshape(3, stride, 3, stride, c, d).transpose(0, 2, 1, 3, 4, 5)
  g_h, g_w = (winograd_matrices(size)[1] for size in _tile(m))
  # One (n_h * n_w, 9) @ (9, s*s*C*D) matmul: G g G^T for every channel pair, in the
  # layout the products read (an einsum over both kernel axes measured about 5x slower).
  transformed = jnp.asarray(np.kron(g_h, g_w), kernel.dtype) @ kernel.reshape(9, -1)
  return transformed.reshape(len(g_h) * len(g_w), -1, d)


def winograd_conv(x: Array, transformed_kernel: Array, m: int | tuple[int, int], stride: int,
                  precision=None) -> Array:
  """A VALID strided convolution of regions whose outputs are whole m_h x m_w tiles.

  m: the tile, m x m, or (m_h, m_w). x: (..., (t_h * m_h + 2) * s, (t_w * m_w + 2) * s,
  C), any leading axes (images, occluder positions); transformed_kernel:
  `winograd_kernel(kernel, m, s)`. The VALID stride-s convolution by the kernel
  zero-padded to 3s taps, (..., t_h * m_h, t_w * m_w, D), by F(m_h x m_w, 3 x 3) on the
  space-to-depth form: the tiles' Kronecker-transformed inputs times the transformed
  kernel, one matrix product per tile element (batched over every tile of every region),
  then the inverse transform."""
  m_h, m_w = _tile(m)
  (a_t_h, _, b_t_h), (a_t_w, _, b_t_w) = winograd_matrices(m_h), winograd_matrices(m_w)
  *lead, height, width, channels = x.shape
  rows, cols = height // stride, width // stride
  tiles_h, tiles_w = (rows - 2) // m_h, (cols - 2) // m_w
  if stride > 1:  # (..., rows, cols, s*s*C), the kernel's (row, column, channel) order
    x = x.reshape(*lead, rows, stride, cols, stride, channels)
    x = jnp.swapaxes(x, -4, -3).reshape(*lead, rows, cols, stride * stride * channels)
  # B^T d B for every tile, separably (rows, then columns): B^T's entries are small
  # integers, so each transformed row is a few adds of strided slices of the region. Two
  # passes without a matmul; stacking the n^2 tile slices and multiplying by B^T (x) B^T
  # measured about 2x slower, and whole occlusion calls 10% slower (benchmarks/RESULTS.md).
  rows_axis = len(lead)
  rows_done = jnp.stack([_combine_slices(x, row, rows_axis, m_h, tiles_h) for row in b_t_h])
  inputs = jnp.stack([_combine_slices(rows_done, column, rows_axis + 2, m_w, tiles_w)
                      for column in b_t_w], 1)                  # (n_h, n_w, ..., t_h, t_w, C)
  inputs = inputs.reshape(len(b_t_h) * len(b_t_w), -1, inputs.shape[-1])
  products = jnp.einsum('pmc,pcd->pmd', inputs, transformed_kernel, precision=precision)
  outputs = jnp.einsum('sp,pmd->smd', jnp.asarray(np.kron(a_t_h, a_t_w), x.dtype), products,
                       precision=precision).reshape(m_h, m_w, *lead, tiles_h, tiles_w, -1)
  k = len(lead)  # (m_h, m_w, ..., t_h, t_w, D) -> (..., t_h, m_h, t_w, m_w, D)
  outputs = outputs.transpose(*range(2, 2 + k), 2 + k, 0, 3 + k, 1, 4 + k)
  return outputs.reshape(*lead, tiles_h * m_h, tiles_w * m_w, -1)


def _combine_slices(x, coefficients, axis, m, tiles):
  """sum_q coefficients[q] * x[q + m * t] along `axis`, for t < tiles (zeros skipped)."""
  total = None
  for q, c in enumerate(coefficients):
    if c:
      term = lax.slice_in_dim(x, q, q + (tiles - 1) * m + 1, m, axis)
      term = term if c == 1 else float(c) * term
      total = term if total is None else total + term
  return total
