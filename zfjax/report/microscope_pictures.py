"""The microscope's pictures: tiles at page size, strips, sprite sheets, filters, feeds.

Pictures are uint8 RGB arrays (`tiles` makes them from [0, 1] floats). A window smaller
than the tile is enlarged by whole pixels, a larger one shrunk (Lanczos, antialiased).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image

from zfjax import architecture
from zfjax import loading
from zfjax import survey as unit_survey
from zfjax.architecture import Dense
from zfjax.report import options
from zfjax.report import plots

GAP = 2                 # white pixels between the tiles of a strip
BLANK = (225, 228, 232)  # an entry without an example (fewer images than k)




def display_size(window: int, tile: int) -> int:
  """A window's side on the page: whole multiples up to `tile`, or `tile` when larger."""
  return window * max(1, tile // window) if window < tile else tile


def resize(pictures: np.ndarray, size: int) -> np.ndarray:
  """uint8 pictures (..., S, S, 3) to (..., size, size, 3): whole pixels up, Lanczos down."""
  side = pictures.shape[-2]
  if side == size:
    return pictures
  if size % side == 0:
    factor = size // side
    return np.repeat(np.repeat(pictures, factor, axis=-3), factor, axis=-2)
  flat = pictures.reshape(-1, side, side, 3)
  out = np.stack([np.asarray(Image.fromarray(p).resize((size, size), Image.LANCZOS))
                  for p in flat]) if flat.shape[0] else np.zeros((0, size, size, 3), np.uint8)
  return out.reshape(*pictures.shape[:-3], size, size, 3)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
  """[0, 1] floats to uint8."""
  return np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)


def tiles(pixels: np.ndarray, size: int) -> np.ndarray:
  """[0, 1] pictures (..., S, S, 3) as uint8 tiles (..., size, size, 3)."""
  return resize(to_uint8(pixels), size)


def filter_tiles(net: loading.Loaded, layer: str, size: int) -> np.ndarray:
  """The first conv's filters as uint8 pictures (C, size', size', 3), each scaled alone."""
  kernel = np.asarray(net.params[layer]['kernel'], np.float32)      # (kh, kw, 3, C)
  filters = np.moveaxis(kernel, -1, 0)
  shown = plots.signed_to_display(filters, gray=options.is_gray(net))
  return tiles(shown, display_size(filters.shape[1], size))


def feeding_units(net: loading.Loaded, layer: str, count: int = 6
                  ) -> tuple[Optional[str], np.ndarray, np.ndarray]:
  """(the layer below, (C, count) its units that feed each unit most, their weight norms).

  The norm of the weights from each input unit (a conv's input map, summed over the
  kernel's taps; fc6 over the positions of the last map) to each unit. (None, ...) for
  the first layer."""
  names = unit_survey.unit_layers(net.spec)
  index = names.index(layer)
  if index == 0:
    return None, np.zeros((0, 0), np.int32), np.zeros((0, 0), np.float32)
  below = names[index - 1]
  kernel = np.asarray(net.params[layer]['kernel'], np.float32)
  record = architecture.layer(net.spec, layer)
  if isinstance(record, Dense) and kernel.ndim == 2:
    inputs = architecture.layer(net.spec, below).features
    kernel = kernel.reshape(-1, inputs, kernel.shape[-1])          # (positions, Cin, C)
  norms = np.sqrt(np.square(kernel).reshape(-1, *kernel.shape[-2:]).sum(0))  # (Cin, C)
  order = np.argsort(-norms, axis=0, kind='stable')[:count].T        # (C, count)
  return below, order.astype(np.int32), np.take_along_axis(norms.T, order, axis=1)


def strip(tiles: np.ndarray, filled: np.ndarray) -> np.ndarray:
  """(n, T, T, 3) tiles in a row with white gaps; tiles where `filled` is False blank."""
  n, size = tiles.shape[0], tiles.shape[1]
  row = np.full((size, n * size + (n - 1) * GAP, 3), 255, np.uint8)
  for i in range(n):
    row[:, i * (size + GAP):i * (size + GAP) + size] = tiles[i] if filled[i] else BLANK
  return row


def stack(rows: Sequence[np.ndarray]) -> np.ndarray:
  """Rows of equal width one above the other, with white gaps."""
  width = rows[0].shape[1]
  out = [rows[0]]
  for row in rows[1:]:
    out += [np.full((GAP, width, 3), 255, np.uint8), row]
  return np.concatenate(out)


def sprite(tiles: np.ndarray, filled: np.ndarray, columns: int) -> np.ndarray:
  """(C, G, G, 3) tiles in a sheet of `columns` columns, no gaps (CSS cuts the cells)."""
  count, size = tiles.shape[0], tiles.shape[1]
  rows = -(-count // columns)
  sheet = np.full((rows * size, columns * size, 3), 255, np.uint8)
  for c in range(count):
    r, q = divmod(c, columns)
    sheet[r * size:(r + 1) * size, q * size:(q + 1) * size] = tiles[c] if filled[c] else BLANK
  return sheet


def grid_columns(count: int) -> int:
  return max(1, min(32, int(np.ceil(np.sqrt(count)))))


def to_grid(pictures: np.ndarray, size: int) -> np.ndarray:
  """uint8 tiles (C, T, T, 3) as (C, size, size, 3) grid cells."""
  return resize(pictures, size)
