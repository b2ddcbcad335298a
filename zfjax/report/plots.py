"""Matplotlib figures of the paper's analyses: arrays in, a Figure (or a PNG file) out.

    fig = plots.top_k_figure([plots.TopKPanel('conv5', channels, projections, patches)])
    plots.save(fig, 'top9.png')

Nothing here computes an analysis; the functions only arrange arrays and normalize them
for display. They build `matplotlib.figure.Figure` objects directly (no pyplot, no global
state), which render with the Agg canvas, so they work on a machine without a display.

Display conventions (used by every figure of zfjax.report and named in its captions):
- Images are in the model's input space: `zfjax.loading.Loaded.to_display` undoes the
  input's normalization (0-255 RGB), and `image_to_display` (mean 0) scales that to [0, 1].
- Projections and filters: `signed_to_display` scales each one by 1 / (2 max |p|) and adds
  0.5, so zero is mid-gray, the sign is kept, and the largest magnitude reaches 0 or 1.
  (The paper says only that its projections are "contrast normalized".)
- Cells outside a unit's receptive field (`valid` False) are drawn light blue-gray
  (`OUTSIDE`), the padding between tiles white.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional, Sequence

import numpy as np
from matplotlib import colors as mcolors
from matplotlib.figure import Figure

BACKGROUND = 1.0  # white: padding between tiles
OUTSIDE = (0.78, 0.84, 0.92)  # light blue-gray: cells outside a unit's receptive field


# ------------------------------------------------------------------ display normalization


def signed_to_display(x: np.ndarray, axes: Sequence[int] = (-3, -2, -1),
                      gray: bool = False) -> np.ndarray:
  """Each item scaled to [0, 1] around 0.5: x / (2 max |x|) + 0.5 over `axes`.

  `axes` default: one (H, W, C) image per item. An all-zero item is uniformly 0.5.
  gray=True first replaces the color channels by their sum: for a model fed gray images
  tiled to RGB (digits), the network only sees that sum, and the split between channels
  means nothing.
  """
  x = np.asarray(x, np.float32)
  if gray:
    x = np.repeat(x.sum(-1, keepdims=True), x.shape[-1], axis=-1)
  peak = np.abs(x).max(axis=tuple(axes), keepdims=True)
  return np.clip(x / np.where(peak > 0, 2 * peak, 1.0) + 0.5, 0.0, 1.0)


def image_to_display(image: np.ndarray, mean: np.ndarray | float = 0.0) -> np.ndarray:
  """A 0-255 image minus `mean` (a paper-space input and its mean) as [0, 1] RGB."""
  return np.clip((np.asarray(image, np.float32) + mean) / 255.0, 0.0, 1.0)


def blank_outside(pixels: np.ndarray, valid: Optional[np.ndarray]) -> np.ndarray:
  """[0, 1] pixels (..., S, S, 3), the cells where `valid` (..., S, S) is False in `OUTSIDE`."""
  if valid is None:
    return pixels
  return np.where(np.asarray(valid)[..., None], pixels, np.asarray(OUTSIDE, np.float32))


# ------------------------------------------------------------------------------ mosaics


def mosaic(tiles: np.ndarray, columns: Optional[int] = None, pad: int = 1,
           pad_value: float = BACKGROUND) -> np.ndarray:
  """(N, h, w, 3) tiles as one image, `columns` per row, `pad` pixels of `pad_value` between.

  `columns` default: a near-square grid.
  """
  tiles = np.asarray(tiles, np.float32)
  n, h, w, c = tiles.shape
  columns = columns or max(1, math.ceil(math.sqrt(n)))
  rows = max(1, math.ceil(n / columns))
  out = np.full((rows * (h + pad) - pad, columns * (w + pad) - pad, c), pad_value, np.float32)
  for i in range(n):
    r, col = divmod(i, columns)
    out[r * (h + pad):r * (h + pad) + h, col * (w + pad):col * (w + pad) + w] = tiles[i]
  return out


def block_mosaic(tiles: np.ndarray, block_columns: Optional[int] = None,
                 inner_pad: Optional[int] = None, outer_pad: Optional[int] = None) -> np.ndarray:
  """(C, k, h, w, 3) tiles as a mosaic of mosaics (the layout of the paper's Fig. 2).

  Each of the C items is a near-square mosaic of its k tiles, and those blocks a
  near-square mosaic with wider gaps.
  """
  tiles = np.asarray(tiles, np.float32)
  size = tiles.shape[2]
  inner = max(1, size // 16) if inner_pad is None else inner_pad
  outer = max(3, size // 4) if outer_pad is None else outer_pad
  blocks = np.stack([mosaic(item, pad=inner) for item in tiles])
  return mosaic(blocks, columns=block_columns, pad=outer)


def _image_axis(ax, image, title=None, fontsize=8):
  ax.imshow(np.clip(image, 0, 1), interpolation='nearest')
  ax.set_xticks([])
  ax.set_yticks([])
  if title:
    ax.set_title(title, fontsize=fontsize)


def save(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> str:
  """Writes the figure as a PNG (Agg) and returns the path."""
  fig.savefig(os.fspath(path), dpi=dpi, format='png')
  return os.fspath(path)


# ------------------------------------------------------------------------- Fig. 2: top-k


@dataclasses.dataclass
class TopKPanel:
  """One layer of Fig. 2: each channel's k strongest activations, projected, and patches.

  For channel channels[c], its projections and image patches, both (C, k, S, S, 3) in
  [0, 1].
  """
  layer: str
  channels: Sequence[int]
  projections: np.ndarray
  patches: np.ndarray


def top_k_figure(panels: Sequence[TopKPanel], title: str = '') -> Figure:
  """Fig. 2: one row per layer, the projections' block mosaic beside the patches'.

  Each block: one feature map's top-k, strongest first, row by row.
  """
  fig = Figure(figsize=(10, 3.4 * len(panels) + 0.6), layout='constrained')
  axes = fig.subplots(len(panels), 2, squeeze=False)
  for row, panel in zip(axes, panels):
    channels = ', '.join(str(int(c)) for c in panel.channels)
    _image_axis(row[0], block_mosaic(panel.projections),
                f'{panel.layer}: projections (maps {channels})', fontsize=9)
    _image_axis(row[1], block_mosaic(panel.patches),
                f'{panel.layer}: image patches (receptive fields)', fontsize=9)
  if title:
    fig.suptitle(title, fontsize=10)
  return fig


# --------------------------------------------------------------------- Fig. 4: evolution


def evolution_figure(row_labels: Sequence[str], columns: Sequence[tuple[str, np.ndarray]],
                     title: str = '') -> Figure:
  """Fig. 4: rows = checkpoints, columns = feature maps.

  `columns` holds (label, tiles) with tiles (R, S, S, 3) in [0, 1], one per row; sizes may
  differ between columns.
  """
  num_rows, num_cols = len(row_labels), len(columns)
  fig = Figure(figsize=(max(4.0, 1.05 * num_cols + 1.2), 1.1 * num_rows + 1.0),
               layout='constrained')
  axes = fig.subplots(num_rows, num_cols, squeeze=False)
  for c, (label, tiles) in enumerate(columns):
    for r in range(num_rows):
      _image_axis(axes[r, c], tiles[r], label if r == 0 else None, fontsize=7)
  for r, label in enumerate(row_labels):
    axes[r, 0].set_ylabel(label, fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  return fig


# -------------------------------------------------------------------- Fig. 5: invariance


@dataclasses.dataclass
class SweepPanel:
  """One transform of Fig. 5: distances and probabilities over its amounts.

  amounts (A,), distance {layer: (N, A)}, probability (N, A), and optionally example
  images (M, H, W, 3) in [0, 1] at `example_amounts`.
  """
  name: str
  unit: str
  amounts: np.ndarray
  distance: dict
  probability: np.ndarray
  examples: Optional[np.ndarray] = None
  example_amounts: Sequence[float] = ()


def invariance_figure(panels: Sequence[SweepPanel], image_names: Sequence[str],
                      layers: Sequence[str], title: str = '') -> Figure:
  """Fig. 5: one row per transform, one curve per image.

  Columns: example transformed images (if given), the Euclidean distance at each layer,
  the probability of the true label.
  """
  with_examples = any(p.examples is not None for p in panels)
  num_cols = len(layers) + 1 + int(with_examples)
  fig = Figure(figsize=(3.3 * num_cols, 2.8 * len(panels) + 0.8), layout='constrained')
  axes = fig.subplots(len(panels), num_cols, squeeze=False)
  for row, panel in zip(axes, panels):
    column = 0
    if with_examples:
      if panel.examples is not None:
        strip = mosaic(panel.examples, columns=len(panel.examples), pad=2)
        amounts = ', '.join(f'{a:g}' for a in panel.example_amounts)
        _image_axis(row[0], strip, f'{panel.name}: {amounts} {panel.unit}', fontsize=8)
      else:
        row[0].axis('off')
      column = 1
    curves = [(f'distance at {layer}', panel.distance[layer]) for layer in layers]
    curves.append(('P(true label)', panel.probability))
    for ax, (ylabel, values) in zip(row[column:], curves):
      for name, line in zip(image_names, np.asarray(values)):
        ax.plot(panel.amounts, line, marker='.', markersize=3, linewidth=1, label=name)
      ax.set_xlabel(f'{panel.name} ({panel.unit})', fontsize=8)
      ax.set_ylabel(ylabel, fontsize=8)
      ax.tick_params(labelsize=7)
      ax.grid(alpha=0.3)
    row[-1].set_ylim(-0.03, 1.03)
  axes[0, -1].legend(fontsize=7, loc='best')
  if title:
    fig.suptitle(title, fontsize=10)
  return fig


# ----------------------------------------------------------------------- Fig. 6: filters


@dataclasses.dataclass
class FilterPanel:
  """One checkpoint of Fig. 6: layer-1 filters, their RMS, and layer-2 features.

  filters (K, h, w, 3) in [0, 1], rms (K,), the renormalization radius (None: not used),
  and features (C, S, S, 3) in [0, 1].
  """
  title: str
  filters: np.ndarray
  rms: np.ndarray
  radius: Optional[float]
  features: Optional[np.ndarray] = None
  features_title: str = ''


def filters_figure(panels: Sequence[FilterPanel], title: str = '') -> Figure:
  """Fig. 6: one column per checkpoint.

  Each column: the layer-1 filter grid, each filter's RMS (bars, with the renormalization
  radius as a dashed line), and the layer-2 feature grid.
  """
  with_features = any(p.features is not None for p in panels)
  ratios = [3, 1.2] + ([3] if with_features else [])
  fig = Figure(figsize=(4.6 * len(panels), 2.4 * sum(ratios) / 2 + 0.8), layout='constrained')
  axes = fig.subplots(len(ratios), len(panels), squeeze=False,
                      gridspec_kw={'height_ratios': ratios})
  for c, panel in enumerate(panels):
    _image_axis(axes[0, c], mosaic(panel.filters), panel.title, fontsize=9)
    ax = axes[1, c]
    ax.bar(np.arange(len(panel.rms)), panel.rms, width=0.8, color='tab:blue')
    if panel.radius:
      ax.axhline(panel.radius, color='tab:red', linestyle='--', linewidth=1,
                 label=f'radius {panel.radius:g}')
      ax.legend(fontsize=7, loc='upper right')
    ax.set_xlabel('layer-1 filter', fontsize=8)
    ax.set_ylabel('RMS', fontsize=8)
    ax.tick_params(labelsize=7)
    if with_features:
      if panel.features is not None:
        _image_axis(axes[2, c], mosaic(panel.features, pad=2), panel.features_title,
                    fontsize=9)
      else:
        axes[2, c].axis('off')
  if title:
    fig.suptitle(title, fontsize=10)
  return fig


# --------------------------------------------------------------------- Fig. 7: occlusion


@dataclasses.dataclass
class OcclusionRow:
  """One image of Fig. 7: the image, its occlusion maps and the projection.

  image, projection: (H, W, 3) in [0, 1]; feature, prob, top_class: (I, J) over occluder
  positions (top-left pixel (i*stride, j*stride)).
  """
  name: str
  image: np.ndarray
  feature: np.ndarray
  projection: np.ndarray
  prob: np.ndarray
  top_class: np.ndarray
  label: int
  channel: int
  layer: str
  patch: int
  stride: int
  class_names: Sequence[str] = ()
  label_kind: str = 'true'  # how the label was chosen: 'true', 'given', 'top class'


def _position_extent(shape, patch, stride):
  """imshow extent putting cell (i, j) over its occluder's centre, in image pixels."""
  rows, cols = shape
  half = patch / 2 - 0.5
  return (half - stride / 2, half + (cols - 0.5) * stride,
          half + (rows - 0.5) * stride, half - stride / 2)


def occlusion_figure(rows: Sequence[OcclusionRow], title: str = '') -> Figure:
  """Fig. 7: one row of five panels per image.

  (a) the image, (b) the summed activity of the strongest feature map under each occluder
  position, (c) that map's strongest activation projected, (d) the probability of the
  correct class, (e) the most probable class. Maps (b), (d), (e) put each value at the
  centre of its occluder.
  """
  fig = Figure(figsize=(16, 3.1 * len(rows) + 0.6), layout='constrained')
  axes = fig.subplots(len(rows), 5, squeeze=False)
  for row, item in zip(axes, rows):
    names = list(item.class_names) or [str(i) for i in range(int(item.top_class.max()) + 1)]
    label_name = names[item.label] if item.label < len(names) else str(item.label)
    height, width = item.image.shape[:2]
    extent = _position_extent(item.feature.shape, item.patch, item.stride)
    _image_axis(row[0], item.image, f'(a) {item.name}, {item.label_kind}: {label_name}')
    row[0].add_patch(_square(item.patch))
    for ax, values, cmap, what in ((row[1], item.feature, 'viridis',
                                    f'(b) {item.layer} map {item.channel}: summed activity'),
                                   (row[3], item.prob, 'jet', f'(d) P({label_name})')):
      image = ax.imshow(values, cmap=cmap, extent=extent, interpolation='nearest',
                        vmin=0.0 if cmap == 'jet' else None, vmax=1.0 if cmap == 'jet' else None)
      fig.colorbar(image, ax=ax, shrink=0.8)
      _frame(ax, height, width, what)
    _image_axis(row[2], item.projection, f'(c) projection of {item.layer} map {item.channel}')
    present = np.unique(item.top_class)
    palette = _class_colors(len(names))
    rgb = palette[np.asarray(item.top_class)]
    row[4].imshow(rgb, extent=extent, interpolation='nearest')
    _frame(row[4], height, width, '(e) most probable class')
    handles = [_legend_patch(palette[c], names[c] if c < len(names) else str(c))
               for c in present[:12]]
    row[4].legend(handles=handles, fontsize=6, loc='center left', bbox_to_anchor=(1.0, 0.5),
                  frameon=False)
  if title:
    fig.suptitle(title, fontsize=10)
  return fig


def _frame(ax, height, width, title):
  ax.set_xlim(-0.5, width - 0.5)
  ax.set_ylim(height - 0.5, -0.5)
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(title, fontsize=8)


def _square(patch):
  from matplotlib.patches import Rectangle  # pylint: disable=g-import-not-at-top
  return Rectangle((-0.5, -0.5), patch, patch, fill=True, facecolor='0.5', edgecolor='white',
                   alpha=0.6, linewidth=0.8)


def _legend_patch(color, label):
  from matplotlib.patches import Patch  # pylint: disable=g-import-not-at-top
  return Patch(facecolor=color, label=label)


def _class_colors(num_classes: int) -> np.ndarray:
  """(num_classes, 3) distinct colours (tab10/tab20, else a hue wheel)."""
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  if num_classes <= 10:
    return np.asarray(colormaps['tab10'].colors)[:num_classes, :3]
  if num_classes <= 20:
    return np.asarray(colormaps['tab20'].colors)[:num_classes, :3]
  hues = (np.arange(num_classes) * 0.618034) % 1.0
  return mcolors.hsv_to_rgb(np.stack([hues, np.full_like(hues, 0.65),
                                      np.full_like(hues, 0.9)], -1))


# ---------------------------------------------------------------------- Table 1: a table


def table_figure(row_labels: Sequence[str], column_labels: Sequence[str], mean: np.ndarray,
                 std: np.ndarray, title: str = '', images: Optional[np.ndarray] = None,
                 boxes: Optional[dict] = None) -> Figure:
  """A small table of 'mean +- std' cells (Table 1: rows = parts, columns = layers).

  With `images` (N, H, W, 3) in [0, 1] and `boxes` {part: (N, 4) (row, col, height,
  width)}, a row of the images below with each part's box outlined.
  """
  mean, std = np.asarray(mean), np.asarray(std)
  cells = [[f'{m:.3f} \u00b1 {s:.3f}' for m, s in zip(mrow, srow)]
           for mrow, srow in zip(mean, std)]
  with_images = images is not None and len(images)
  height = 0.45 * len(row_labels) + 1.2
  fig = Figure(figsize=(max(1.8 + 1.9 * len(column_labels), 1.5 * (len(images) if with_images
                                                                     else 0)),
                        height + (2.0 if with_images else 0)))
  grid = fig.add_gridspec(2 if with_images else 1, max(1, len(images) if with_images else 1),
                          height_ratios=[height, 2.0] if with_images else None)
  ax = fig.add_subplot(grid[0, :])
  ax.axis('off')
  table = ax.table(cellText=cells, rowLabels=list(row_labels), colLabels=list(column_labels),
                   loc='center', cellLoc='center')
  table.auto_set_font_size(False)
  table.set_fontsize(9)
  table.scale(1.0, 1.4)
  if title:
    ax.set_title(title, fontsize=10)
  if with_images:
    from matplotlib.patches import Rectangle  # pylint: disable=g-import-not-at-top
    palette = _class_colors(max(1, len(boxes or {})))
    for n, image in enumerate(images):
      axis = fig.add_subplot(grid[1, n])
      _image_axis(axis, image)
      for color, (name, part) in zip(palette, (boxes or {}).items()):
        row, col, box_height, box_width = np.asarray(part)[n]
        axis.add_patch(Rectangle((col - 0.5, row - 0.5), box_width, box_height, fill=False,
                                 edgecolor=color, linewidth=1.5,
                                 label=name if n == 0 else None))
    if boxes:
      fig.legend(fontsize=7, loc='lower center', ncols=len(boxes), frameon=False)
  return fig
