"""The deconvnet's operations on arrays: switches, unpooling, transposed convolutions.

The single-map forms (`switches`, `unpool`, `transpose_conv`) define them; the batched
forms are what `zfjax.deconv`'s chain runs on each unit's window: a transposed convolution
as one GEMM and an overlap-add, window slices of cached maps, and placing a window on an
image (docs/analyses.md).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from zfjax import architecture
from zfjax.architecture import Conv, Pool

Array = jax.Array


def switches(x: Array, record: Pool) -> Array:
  """Max pooling's switches: where each window's maximum lies.

  For each output of max pool `record` over the NHWC map x, the position of its
  window's maximum inside the window, dy * window + dx (ties: first in row-major
  order). Same shape as the pool's output, int32.

  Each window position's cells are one strided slice of x (padded with -inf over the
  overhang); the switch is the first position whose cell equals the window's maximum.
  (Elementwise work that XLA fuses: a reduce_window over (value, index) pairs, the same
  numbers, ran 3-8x slower on CPUs.)"""
  n, height, width, c = x.shape
  k, s = record.window, record.stride
  pad_h = architecture.pool_overhang(height, k, s, record.ceil)
  pad_w = architecture.pool_overhang(width, k, s, record.ceil)
  padded = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), constant_values=-jnp.inf)
  out_h, out_w = (height + pad_h - k) // s + 1, (width + pad_w - k) // s + 1

  def cells(position):
    dy, dx = divmod(position, k)
    return lax.slice(padded, (0, dy, dx, 0),
                     (n, dy + (out_h - 1) * s + 1, dx + (out_w - 1) * s + 1, c), (1, s, s, 1))

  best = functools.reduce(jnp.maximum, [cells(p) for p in range(k * k)])
  where = jnp.zeros(best.shape, jnp.int32)
  for position in reversed(range(k * k)):
    where = jnp.where(cells(position) == best, position, where)
  return where


TWO_PASS_BYTES = 1 << 24  # first_maximum's two reductions up to this, one pass beyond


def first_maximum(x: Array, axis: int) -> tuple[Array, Array]:
  """The maximum along `axis` and the first index that holds it (int32), as jnp.argmax.

  Up to TWO_PASS_BYTES, two plain reductions: the maximum, then the smallest index whose
  value equals it (or is NaN, as argmax picks the first NaN). XLA:CPU ran argmax's
  reduction over (value, index) pairs 14x slower on conv1's map of two images (5.2
  against 0.36 ms). But the two passes read x twice, so XLA keeps x (a ReLU's output,
  say) in memory: for larger arrays (a whole batch's conv1 map) argmax's one pass."""
  if x.size * x.dtype.itemsize > TWO_PASS_BYTES:
    index = jnp.argmax(x, axis=axis)
    value = jnp.take_along_axis(x, jnp.expand_dims(index, axis), axis=axis)
    return jnp.squeeze(value, axis), index.astype(jnp.int32)
  value = jnp.max(x, axis=axis, keepdims=True)
  index = lax.broadcasted_iota(jnp.int32, x.shape, axis % x.ndim)
  hit = (x == value) | jnp.isnan(x)
  first = jnp.min(jnp.where(hit, index, x.shape[axis]), axis=axis)
  return jnp.squeeze(value, axis), first


def unpool(signal: Array, where: Array, record: Pool) -> Array:
  """Adjoint of max pooling at recorded switches.

  Each value of `signal` (..., h, w, C) goes to its window's maximum; values that share a
  cell add. Returns the full extent of the windows, ((h - 1) * stride + window) per spatial
  axis."""
  k, s = record.window, record.stride
  spatial = signal.ndim - 3
  out = 0.0
  for dy in range(k):
    for dx in range(k):
      chosen = jnp.where(where == dy * k + dx, signal, 0.0)
      pads = [(0, 0, 0)] * spatial + [(dy, k - 1 - dy, s - 1), (dx, k - 1 - dx, s - 1),
                                      (0, 0, 0)]
      out = out + lax.pad(chosen, jnp.array(0, signal.dtype), pads)
  return out


def transpose_conv(signal: Array, kernel: Array, record: Conv) -> Array:
  """The conv's filters transposed (flipped, in/out swapped), no bias, over the full extent.

  (h, w) -> ((h - 1) * stride + kernel) per axis, before removing padding."""
  k = record.kernel
  return lax.conv_transpose(signal, kernel, (record.stride,) * 2, [(k - 1, k - 1)] * 2,
                            dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                            transpose_kernel=True)


def transpose_conv_batch(signal, kernel, stride):
  """`transpose_conv` of a (B, h, w, Cout) signal, as a GEMM and an overlap-add.

  The GEMM gives each cell's kernel patches, kernel[dy, dx] @ signal[b, i, j]; the
  overlap-add puts patch (dy, dx) at (i * stride + dy, j * stride + dx). The adds run along
  the patches' minor axis: channels when there are many, columns when there are few (the
  3 colours of conv1), so the GEMM writes the patches in that order."""
  k, _, cin, cout = kernel.shape
  b, h, w, _ = signal.shape
  kernels, rows = kernel.reshape(k * k * cin, cout), signal.reshape(b * h * w, cout)
  if cin >= CHANNELS_MINOR:
    patches = jnp.dot(rows, kernels.T, precision=lax.Precision.HIGHEST)
    patches = patches.reshape(b, h, w, k, k, cin)
    return overlap_add(lambda dy, dx: patches[:, :, :, dy, dx], k, stride, axis=1)
  patches = jnp.dot(kernels, rows.T, precision=lax.Precision.HIGHEST)
  patches = patches.reshape(k, k, cin, b, h, w)
  return overlap_add(lambda dy, dx: patches[dy, dx], k, stride, axis=2).transpose(1, 2, 3, 0)


CHANNELS_MINOR = 16  # Cin from which the overlap-add runs along channels


LOOPED_TAPS = 9  # a strided phase of more taps adds them in a loop: one body to compile
IN_PLACE_BYTES = 1 << 17  # taps from this size are added in place (smaller ones: summed)


def overlap_add(tap, k, stride, axis):
  """The taps of a k x k kernel added at their places.

  tap(dy, dx) is an array with spatial axes (axis, axis + 1), (h, w); its cell (i, j) goes
  to (i * stride + dy, j * stride + dx), and values that meet add: the result has
  ((h - 1) * stride + k, (w - 1) * stride + k) there. tap must accept traced dy, dx.
  Computed one output phase (rows ry mod stride, columns rx mod stride) at a time; the
  phases then interleave. With a stride, each tap of a phase is added in place to its
  block of a zero buffer (an update of a slice, which XLA does in place: a sum of padded
  taps ran 1.5-2x slower on CPUs, its loops element by element), in a `fori_loop` when
  the phase has more than LOOPED_TAPS taps (conv1's 7 x 7: a little slower to run than
  unrolled, much quicker to compile). At stride 1, and for taps under IN_PLACE_BYTES
  (which stay in cache), the padded taps are summed: one loop to compile instead of
  k * k."""
  first = tap(0, 0)
  shape = first.shape
  h, w = shape[axis:axis + 2]
  reach = -(-k // stride)  # taps per phase and axis, at most
  m, n = h + reach - 1, w + reach - 1
  zeros = jnp.zeros((*shape[:axis], m, n, *shape[axis + 2:]), first.dtype)

  def add(phase, ry, rx, qy, qx):  # tap (ry + qy * stride, rx + qx * stride), in place
    term, at = tap(ry + qy * stride, rx + qx * stride), [0] * len(shape)
    at[axis], at[axis + 1] = qy, qx
    return lax.dynamic_update_slice(phase, lax.dynamic_slice(phase, at, term.shape) + term,
                                    at)

  def pad(dy, dx):  # tap (dy, dx) padded to its place in its phase
    return [(0, 0)] * axis + [(dy // stride, reach - 1 - dy // stride),
                              (dx // stride, reach - 1 - dx // stride)] + [
                                  (0, 0)] * (len(shape) - axis - 2)

  rows = []
  for ry in range(stride):
    phases = []
    for rx in range(stride):
      ny, nx = len(range(ry, k, stride)), len(range(rx, k, stride))
      if stride == 1 or first.size * first.dtype.itemsize < IN_PLACE_BYTES:
        phase = functools.reduce(jnp.add, [jnp.pad(tap(dy, dx), pad(dy, dx))
                                           for dy in range(ry, k, stride)
                                           for dx in range(rx, k, stride)])
      elif ny * nx > LOOPED_TAPS:
        phase = lax.fori_loop(0, ny * nx, lambda i, p, ry=ry, rx=rx, nx=nx: add(
            p, ry, rx, i // nx, i % nx), zeros)
      else:
        phase = zeros
        for qy in range(ny):
          for qx in range(nx):
            phase = add(phase, ry, rx, qy, qx)
      phases.append(phase)
    rows.append(jnp.stack(phases, axis=axis + 2))
  out = jnp.stack(rows, axis=axis + 1)  # (..., M, stride, N, stride, ...)
  out = out.reshape(*shape[:axis], m * stride, n * stride, *shape[axis + 2:])
  return lax.slice_in_dim(lax.slice_in_dim(out, 0, (h - 1) * stride + k, axis=axis), 0,
                          (w - 1) * stride + k, axis=axis + 1)


def windows(padded, n, start, size):
  """(B, size, size, C): unit b's window of image n[b] of a padded cache.

  A loop of slices, not a vmapped slice: XLA would fuse that gather into its consumers
  and repeat it there (nine times in an unpooling)."""
  def one(unit):
    i, row, col = unit
    return lax.dynamic_slice(padded, (i, row, col, 0), (1, size, size, padded.shape[-1]))[0]
  return lax.map(one, (n, *start))


def inside(window, y, x, map_size):
  """(B, size, size, 1): 1 where unit b's window lies inside the map, else 0.

  0 on padding and on a ceil-mode pool's overhang."""
  rows = window.start(y)[:, None] + jnp.arange(window.size)
  cols = window.start(x)[:, None] + jnp.arange(window.size)
  inside = (((rows >= 0) & (rows < map_size[0]))[:, :, None]
            & ((cols >= 0) & (cols < map_size[1]))[:, None, :])
  return inside[..., None]


def in_chunks(fn, xs, size, count=None):
  """fn, which takes a batch, over the leading axis of the pytree xs, `size` at a time.

  The last batch may be smaller; fn's outputs (a pytree too) are joined along their
  leading axis. count (a traced int): only the batches holding the first `count` items
  are computed (a loop of as many steps), the rest of the output is zero."""
  total = jax.tree.leaves(xs)[0].shape[0]
  if count is not None:
    return _first_chunks(fn, xs, size, count)
  full = total - total % size
  outs = []
  if full:
    chunks = jax.tree.map(lambda a: a[:full].reshape(full // size, size, *a.shape[1:]), xs)
    outs.append(jax.tree.map(lambda a: a.reshape(full, *a.shape[2:]), lax.map(fn, chunks)))
  if full < total:
    outs.append(fn(jax.tree.map(lambda a: a[full:], xs)))
  return outs[0] if len(outs) == 1 else jax.tree.map(lambda *a: jnp.concatenate(a), *outs)


def _first_chunks(fn, xs, size, count):
  """in_chunks's batches that hold the first `count` items; zeros after them.

  The items are padded to whole batches with zeros; items from the count-th on that share
  its batch are computed, then zeroed like the rest."""
  total = jax.tree.leaves(xs)[0].shape[0]
  steps = -(-total // size)
  chunks = jax.tree.map(lambda a: jnp.pad(a, [(0, steps * size - total)] + [(0, 0)] * (
      a.ndim - 1)).reshape(steps, size, *a.shape[1:]), xs)
  shapes = jax.eval_shape(fn, jax.tree.map(lambda a: a[0], chunks))
  zeros = jax.tree.map(lambda s: jnp.zeros((steps, *s.shape), s.dtype), shapes)

  def step(i, out):
    part = fn(jax.tree.map(lambda a: a[i], chunks))
    return jax.tree.map(lambda o, p: o.at[i].set(p), out, part)

  out = lax.fori_loop(0, jnp.clip(-(-count // size), 0, steps), step, zeros)
  first = lambda a: jnp.where((jnp.arange(total) < count).reshape(-1, *[1] * (a.ndim - 2)),
                              a.reshape(steps * size, *a.shape[2:])[:total], 0)
  return jax.tree.map(first, out)


def place(window_values, row, col, image_size):
  """A (3, s, s) window whose top-left pixel is (row, col), on a zero (H, W, 3) image.

  A slice of the window padded by the image size (a vmapped slice; an update-slice would
  scatter)."""
  height, width = image_size
  padded = jnp.pad(window_values, ((0, 0), (height, height), (width, width)))
  return lax.dynamic_slice(padded, (0, height - row, width - col),
                           (window_values.shape[0], height, width)).transpose(1, 2, 0)
