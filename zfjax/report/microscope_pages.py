"""The microscope's files: PNG strips and sprite sheets, the HTML pages, their JSON.

`write_site(directory, SiteData(...))` writes into an empty folder:

    index.html              the layers (output shapes, parameters) and how the site was made
    <layer>.html            a grid of the layer's units, then one section per unit, id
                            "<layer>-<channel>" (the permalink <layer>.html#<layer>-<channel>)
    <layer>.json            the numbers of every unit of the layer
    site.css, site.js       the style and the keyboard: left/right units, up/down layers
    img/<layer>/grid.png    sprite sheet of the layer's units (shown as CSS backgrounds)
    img/<layer>/<c>.png     conv unit c: its top-k projections (upper row) over their crops
    img/<layer>/<c>-neg.png its most negative pre-activations' crops
    img/<layer>/<c>-steps.png  a row per other checkpoint: strongest projection, top-k crops
    img/<layer>/filters.png the first conv's filters (a sprite sheet)
    img/examples/<n>.png    example n's thumbnail (the fc layers' pictures, shared)

Every text is HTML-escaped and every link percent-encoded. Images carry their width and
height, so lazy loading never moves a unit the page has scrolled to.
"""

from __future__ import annotations

import concurrent.futures
import html
import json
import os
import pathlib
import urllib.parse
from typing import NamedTuple, Optional, Sequence

import jax
import numpy as np
from PIL import Image

from zfjax import loading
from zfjax.architecture import Conv
from zfjax.report import folder
from zfjax.report import microscope_pictures as pictures

GRID_CELL = 48          # pixels of a unit in a layer's grid
GAP = pictures.GAP
FEEDS = 6               # input units listed per unit

esc = lambda text: html.escape(str(text), quote=True)  # noqa: E731
url = lambda path: esc(urllib.parse.quote(str(path)))  # noqa: E731


class SiteData(NamedTuple):
  """Everything the pages show (built by zfjax.report.microscope_site)."""
  net: loading.Loaded
  layers: tuple
  found: dict           # layer -> survey.Survey
  tiles: dict           # conv layer -> microscope_site.LayerTiles
  thumbnails: dict      # example -> (T, T, 3) uint8
  history: dict         # other step -> (found, tiles, thumbnails)
  made: dict            # provenance
  labels: Sequence      # example -> label (-1 or missing: none)
  shapes: dict          # layer -> (output shape, parameter count)


def write_site(directory: pathlib.Path, data: SiteData) -> None:
  """Writes every page, picture and JSON file of the site into `directory`."""
  as_numpy = lambda tree: jax.tree.map(np.asarray, tree)
  data = data._replace(found=as_numpy(data.found), history={
      step: (as_numpy(found), tiles, thumbnails)
      for step, (found, tiles, thumbnails) in data.history.items()})
  writer = _PngWriter()
  for layer in data.layers:
    _layer_pictures(directory, data, layer, writer)
  thumbnails = dict(data.thumbnails)
  for _, _, other_thumbnails in data.history.values():
    thumbnails.update(other_thumbnails)
  for number, picture in thumbnails.items():
    writer.save(picture, directory / 'img' / 'examples' / f'{number}.png')
  writer.wait()
  for index, layer in enumerate(data.layers):
    feeds = pictures.feeding_units(data.net, layer, FEEDS)
    (directory / f'{layer}.html').write_text(_layer_page(data, index, feeds))
    (directory / f'{layer}.json').write_text(json.dumps(folder.plain(
        _layer_numbers(data, layer, feeds))))
  (directory / 'index.html').write_text(_index_page(data))
  (directory / 'site.css').write_text(CSS)
  (directory / 'site.js').write_text(JS)


def write_marker(directory: pathlib.Path, made: dict, seconds: dict, size: int) -> None:
  """microscope.json: how the site was made, how long each stage took, its size."""
  record = dict(made, seconds=seconds, bytes=size)
  (directory / 'microscope.json').write_text(json.dumps(folder.plain(record), indent=1))


# ------------------------------------------------------------------------- pictures


class _PngWriter:
  """PNG files written on a few threads (zlib runs outside the GIL)."""

  def __init__(self):
    self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2)
    self.pending = []

  def save(self, pixels: np.ndarray, path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    self.pending.append(self.pool.submit(
        lambda: Image.fromarray(pixels).save(path, compress_level=4)))

  def wait(self) -> None:
    for future in self.pending:
      future.result()
    self.pending = []
    self.pool.shutdown()


def _layer_pictures(directory, data: SiteData, layer: str, writer: _PngWriter) -> None:
  found = data.found[layer]
  top_filled = np.asarray(found.top.example) >= 0
  bottom_filled = np.asarray(found.bottom.example) >= 0
  folder_ = directory / 'img' / layer
  if layer in data.tiles:
    tiles = data.tiles[layer]
    grid = tiles.top_projection[:, 0]
    for c in range(grid.shape[0]):
      writer.save(pictures.stack([pictures.strip(tiles.top_projection[c], top_filled[c]),
                                  pictures.strip(tiles.top_crop[c], top_filled[c])]),
                  folder_ / f'{c}.png')
      writer.save(pictures.strip(tiles.bottom_crop[c], bottom_filled[c]),
                  folder_ / f'{c}-neg.png')
      if data.history:
        writer.save(pictures.stack(_history_rows(data, layer, c)), folder_ / f'{c}-steps.png')
    if _first_conv(data.net) == layer:
      filters = pictures.filter_tiles(data.net, layer, GRID_CELL)
      writer.save(pictures.sprite(filters, np.ones(len(filters), bool),
                                  pictures.grid_columns(len(filters))), folder_ / 'filters.png')
  else:
    size = next(iter(data.thumbnails.values())).shape[0] if data.thumbnails else GRID_CELL
    grid = np.stack([data.thumbnails.get(int(e), np.zeros((size, size, 3), np.uint8))
                     for e in np.asarray(found.top.example)[:, 0]])
  small = pictures.to_grid(grid, GRID_CELL)
  writer.save(pictures.sprite(small, top_filled[:, 0], pictures.grid_columns(len(small))),
              folder_ / 'grid.png')


def _history_rows(data: SiteData, layer: str, c: int) -> list:
  rows = []
  for other_found, other_tiles, _ in data.history.values():
    tiles = other_tiles[layer]
    filled = np.asarray(other_found[layer].top.example[c]) >= 0
    both = np.concatenate([tiles.top_projection[c], tiles.top_crop[c]])
    rows.append(pictures.strip(both, np.concatenate([filled[:1], filled])))
  return rows


def _first_conv(net: loading.Loaded) -> str:
  return next(r.name for r in net.spec if isinstance(r, Conv))


# -------------------------------------------------------------------------- numbers


def _entries(result, labels) -> dict:
  example = np.asarray(result.example)
  label = [[_label(labels, e) for e in row] for row in example.tolist()]
  return {'example': example, 'value': np.asarray(result.values), 'y': np.asarray(result.y),
          'x': np.asarray(result.x), 'label': label}


def _label(labels, example: int) -> Optional[int]:
  if 0 <= example < len(labels) and labels[example] is not None and labels[example] >= 0:
    return int(labels[example])
  return None


def _layer_numbers(data: SiteData, layer: str, feeds) -> dict:
  found = data.found[layer]
  below, units, norms = feeds
  record = {'layer': layer, 'units': int(found.max.shape[0]), 'images': found.images,
            'top': _entries(found.top, data.labels),
            'most_negative': _entries(found.bottom, data.labels),
            'firing': np.asarray(found.firing), 'positive': np.asarray(found.positive),
            'mean': np.asarray(found.mean), 'max': np.asarray(found.max)}
  if below:
    record['fed_by'] = {'layer': below, 'units': units, 'weight_norm': norms}
  if data.history:
    record['checkpoints'] = {str(step): _entries(other[layer].top, data.labels)
                             for step, (other, _, _) in data.history.items()}
  return record


# ---------------------------------------------------------------------------- pages


def _head(title: str, extra_css: str = '') -> list:
  return ['<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">',
          '<meta name="viewport" content="width=device-width, initial-scale=1">',
          f'<title>{esc(title)}</title>', '<link rel="stylesheet" href="site.css">',
          f'<style>{extra_css}</style>' if extra_css else '', '</head>']


def _layer_nav(data: SiteData, current: Optional[str]) -> str:
  links = ['<a href="index.html">index</a>']
  for layer in data.layers:
    attribute = ' aria-current="page"' if layer == current else ''
    links.append(f'<a href="{url(layer + ".html")}"{attribute}>{esc(layer)}</a>')
  return '<nav class="layers">' + ' '.join(links) + '</nav>'


def _unit_href(page_layer: str, layer: str, c: int) -> str:
  anchor = f'{layer}-{c}'
  page = '' if layer == page_layer else urllib.parse.quote(f'{layer}.html')
  return esc(f'{page}#{urllib.parse.quote(anchor)}')


def _cell(layer: str, c: int, columns: int) -> str:
  r, q = divmod(c, columns)
  return (f'<span class="cell cell-{esc(layer)}" style="background-position:'
          f'-{q * GRID_CELL}px -{r * GRID_CELL}px"></span>')


def _layer_page(data: SiteData, index: int, feeds) -> str:
  layer = data.layers[index]
  found = data.found[layer]
  units = int(found.max.shape[0])
  below = feeds[0] if feeds[0] in data.layers else None
  sheets = {layer: units}
  if below:
    sheets[below] = int(data.found[below].max.shape[0])
  css = ''.join(f'.cell-{esc(name)}{{background-image:url("{url(f"img/{name}/grid.png")}")}}'
                for name in sheets)
  first_conv = _first_conv(data.net) == layer and layer in data.tiles
  if first_conv:
    css += (f'.filter{{background-image:url("{url(f"img/{layer}/filters.png")}")}}')
  neighbours = ''
  if index:
    previous = data.layers[index - 1]
    neighbours += (f' data-prev="{esc(previous)}" data-prev-units='
                   f'"{int(data.found[previous].max.shape[0])}"')
  if index + 1 < len(data.layers):
    following = data.layers[index + 1]
    neighbours += (f' data-next="{esc(following)}" data-next-units='
                   f'"{int(data.found[following].max.shape[0])}"')
  shape, params = data.shapes[layer]
  parts = _head(f'{layer}: {units} units ({data.made["model"]})', css)
  parts.append(f'<body data-layer="{esc(layer)}" data-units="{units}"{neighbours}>')
  parts.append('<header>' + _layer_nav(data, layer) + _jump_box(units) + '</header>')
  parts.append(f'<h1>{esc(layer)}: {units} units</h1>')
  parts.append(f'<p class="about">Output {esc(" x ".join(map(str, shape)))}, {params:,} '
               f'parameters. Each unit is shown by {_grid_picture(layer in data.tiles)} '
               f'over {found.images} images ({esc(data.made["dataset"])}). Keys: left/right '
               'previous/next unit, up/down previous/next layer. Numbers: '
               f'<a href="{url(layer + ".json")}">{esc(layer)}.json</a>.</p>')
  columns = pictures.grid_columns(units)
  parts.append(f'<nav class="grid" style="grid-template-columns:repeat({columns}, '
               f'{GRID_CELL}px)">')
  parts += [f'<a href="{_unit_href(layer, layer, c)}" title="{esc(layer)} unit {c}">'
            f'{_cell(layer, c, columns)}</a>' for c in range(units)]
  parts.append('</nav>')
  for c in range(units):
    parts.append(_unit_section(data, index, c, feeds, below, first_conv))
  parts.append('<script src="site.js"></script></body></html>')
  return '\n'.join(parts) + '\n'


def _grid_picture(conv: bool) -> str:
  return ('the deconvnet projection of its strongest activation' if conv else
          'the image that activates it most')


def _jump_box(units: int) -> str:
  return ('<form class="jump" id="jump"><label>unit <input id="jump-unit" inputmode="numeric" '
          f'size="5" placeholder="0-{units - 1}"></label> <button type="submit">go</button>'
          '<span id="jump-message" role="status"></span></form>')


def _caption_entries(result, c: int, labels, kind: str) -> str:
  described = []
  for e, value in zip(np.asarray(result.example[c]).tolist(),
                      np.asarray(result.values[c]).tolist()):
    if e < 0:
      continue
    label = _label(labels, e)
    described.append(f'#{e}' + (f' (class {label})' if label is not None else '') +
                     f' {value:.3g}')
  return f'{kind}: ' + (', '.join(described) if described else 'none')


def _unit_section(data: SiteData, index: int, c: int, feeds, below, first_conv) -> str:
  layer = data.layers[index]
  found = data.found[layer]
  units = int(found.max.shape[0])
  name = f'{layer} unit {c}'
  previous = _neighbour(data, index, c, -1)
  following = _neighbour(data, index, c, +1)
  parts = [f'<section class="unit" id="{esc(f"{layer}-{c}")}">',
           f'<h2><a href="{_unit_href(layer, layer, c)}">{esc(name)}</a> '
           f'<span class="step">{previous} {following}</span></h2>',
           f'<p class="stats">Fires in {100 * float(found.firing[c]):.1f}% of the '
           f'{found.images} images ({100 * float(found.positive[c]):.2f}% of positions); '
           f'mean activation {float(found.mean[c]):.4g}, maximum {float(found.max[c]):.4g}.'
           '</p>']
  k = found.top.example.shape[1]
  if layer in data.tiles:
    size = data.tiles[layer].top_crop.shape[2]
    width, height = k * size + (k - 1) * GAP, 2 * size + GAP
    parts.append(_figure(f'img/{layer}/{c}.png', width, height,
                         f'{name}: top {k} projections above their image crops',
                         f'Top {k}: deconvnet projections (upper row) over the image '
                         'crops under the unit\'s receptive field. ' +
                         _caption_entries(found.top, c, data.labels, 'Examples')))
  else:
    parts.append(_thumbnails(data, found.top, c, f'Top {k} images. ' + _caption_entries(
        found.top, c, data.labels, 'Examples')))
  if first_conv:
    columns = pictures.grid_columns(units)
    r, q = divmod(c, columns)
    parts.append(f'<p class="feeds">Filter: <span class="filter" style="background-position:'
                 f'-{q * GRID_CELL}px -{r * GRID_CELL}px"></span></p>')
  elif feeds[0]:
    links = []
    below_columns = pictures.grid_columns(int(data.found[below].max.shape[0])) if below else 0
    for unit, norm in zip(feeds[1][c].tolist(), feeds[2][c].tolist()):
      if below:
        links.append(f'<a href="{_unit_href(layer, below, unit)}" title="weight norm '
                     f'{norm:.3g}">{_cell(below, unit, below_columns)}{unit}</a>')
      else:
        links.append(f'<span title="weight norm {norm:.3g}">{unit}</span>')
    parts.append(f'<p class="feeds">Fed most by {esc(feeds[0])} units (weight norm): '
                 + ' '.join(links) + '</p>')
  if data.history:
    steps = ', '.join(str(s) for s in data.history)
    if layer in data.tiles:
      size = data.tiles[layer].top_crop.shape[2]
      width = (k + 1) * size + k * GAP
      height = len(data.history) * (size + GAP) - GAP
      parts.append(_figure(f'img/{layer}/{c}-steps.png', width, height,
                           f'{name} at checkpoint steps {steps}',
                           f'At the other checkpoints kept (steps {steps}, a row each; '
                           f'this page: step {data.made["step"]}): the strongest '
                           f'activation projected, then the top {k} crops (Fig. 4).'))
    else:
      for step, (other, _, _) in data.history.items():
        parts.append(_thumbnails(data, other[layer].top, c, f'At step {step}. ' +
                                 _caption_entries(other[layer].top, c, data.labels,
                                                  'Examples')))
  if layer in data.tiles:
    size = data.tiles[layer].top_crop.shape[2]
    parts.append(_figure(f'img/{layer}/{c}-neg.png', k * size + (k - 1) * GAP, size,
                         f'{name}: most negative pre-activations',
                         'Most negative pre-activations (before the ReLU): the crops. ' +
                         _caption_entries(found.bottom, c, data.labels, 'Examples')))
  else:
    parts.append(_thumbnails(data, found.bottom, c, 'Most negative pre-activations. ' +
                             _caption_entries(found.bottom, c, data.labels, 'Examples')))
  parts.append('</section>')
  return '\n'.join(parts)


def _neighbour(data: SiteData, index: int, c: int, delta: int) -> str:
  """The link to the previous / next unit, across layer pages at the ends."""
  layer = data.layers[index]
  units = int(data.found[layer].max.shape[0])
  target, unit = layer, c + delta
  if unit < 0 or unit >= units:
    other = index + delta
    if not 0 <= other < len(data.layers):
      return ''
    target = data.layers[other]
    unit = 0 if delta > 0 else int(data.found[target].max.shape[0]) - 1
  label = '&lsaquo; previous' if delta < 0 else 'next &rsaquo;'
  rel = 'prev' if delta < 0 else 'next'
  return (f'<a rel="{rel}" href="{_unit_href(layer, target, unit)}">{label}</a>')


def _figure(path: str, width: int, height: int, alt: str, caption: str) -> str:
  return (f'<figure><img loading="lazy" src="{url(path)}" width="{width}" '
          f'height="{height}" alt="{esc(alt)}"><figcaption>{esc(caption)}</figcaption>'
          '</figure>')


def _thumbnails(data: SiteData, result, c: int, caption: str) -> str:
  size = next(iter(data.thumbnails.values())).shape[0] if data.thumbnails else GRID_CELL
  images = [f'<img loading="lazy" src="{url(f"img/examples/{e}.png")}" width="{size}" '
            f'height="{size}" alt="example {e}">'
            for e in np.asarray(result.example[c]).tolist() if e >= 0]
  return (f'<figure><div class="row">{"".join(images)}</div>'
          f'<figcaption>{esc(caption)}</figcaption></figure>')


def _index_page(data: SiteData) -> str:
  made = data.made
  parts = _head(f'zfjax microscope: {made["model"]}')
  parts.append('<body data-layer="">')
  parts.append('<header>' + _layer_nav(data, None) + '</header>')
  parts.append(f'<h1>Microscope: {esc(made["model"])}, step {esc(made["step"])}</h1>')
  parts.append('<table class="layers"><thead><tr><th>layer</th><th>output</th>'
               '<th>parameters</th><th>units shown</th></tr></thead><tbody>')
  for name, (shape, params) in data.shapes.items():
    shown = (f'<a href="{url(name + ".html")}">{int(data.found[name].max.shape[0])}</a>'
             if name in data.layers else '')
    parts.append(f'<tr><td>{esc(name)}</td><td>{esc(" x ".join(map(str, shape)))}</td>'
                 f'<td>{params:,}</td><td>{shown}</td></tr>')
  total = sum(params for _, params in data.shapes.values())
  parts.append(f'</tbody><tfoot><tr><td>total</td><td></td><td>{total:,}</td><td></td>'
               '</tr></tfoot></table>')
  facts = [('checkpoint', made['checkpoint']), ('step', made['step']),
           ('images searched', f'{made["images"]} ({made["dataset"]})'),
           ('examples per unit', made['k']), ('projection rule', made['rule']),
           ('made', made['date']), ('zfjax', made['version']), ('command', made['command'])]
  facts += [('note', note) for note in made['notes']]
  parts.append('<h2>How this site was made</h2><dl class="made">' + ''.join(
      f'<dt>{esc(key)}</dt><dd>{esc(value)}</dd>' for key, value in facts) + '</dl>')
  parts.append('<p>Numbers: <a href="microscope.json">microscope.json</a> and one JSON file '
               'per layer.</p><script src="site.js"></script></body></html>')
  return '\n'.join(parts) + '\n'


CSS = """body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:0 1em}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid #ccc;padding:.4em 0;
display:flex;gap:1em;align-items:center;flex-wrap:wrap;z-index:1}
nav.layers a{margin-right:.6em}nav.layers a[aria-current]{font-weight:bold}
.grid{display:grid;gap:1px;margin:1em 0}.grid a{display:block;line-height:0}
.cell{display:inline-block;width:48px;height:48px;vertical-align:middle}
.filter{display:inline-block;width:48px;height:48px;vertical-align:middle}
section.unit{border-top:1px solid #ddd;padding:.5em 0;scroll-margin-top:3.5em}
section.unit:target{background:#fff8dc}section.unit h2{font-size:1.1em}
.step a{font-size:.8em;font-weight:normal;margin-left:.6em}
figure{margin:.5em 0}figcaption{font-size:.85em;color:#333;max-width:80em}
img{max-width:100%;height:auto;image-rendering:pixelated}.row img{margin-right:2px}
.feeds a{margin-right:.8em;text-decoration:none}.stats{margin:.2em 0}
table.layers{border-collapse:collapse}table.layers td,table.layers th{padding:.2em .8em;
border-bottom:1px solid #ddd;text-align:right}dl.made dt{font-weight:bold}
#jump-message{margin-left:.5em;color:#a00}
"""

JS = r"""// Keys: left/right the previous/next unit, up/down the previous/next layer; the jump box.
(function () {
  'use strict';
  var body = document.body, layer = body.dataset.layer;
  if (!layer) { return; }
  var units = parseInt(body.dataset.units, 10);
  function current() {
    var match = /^#(.+)-(\d+)$/.exec(decodeURIComponent(location.hash));
    return match && match[1] === layer ? parseInt(match[2], 10) : -1;
  }
  function page(name, unit) {
    location.href = encodeURIComponent(name) + '.html#' + encodeURIComponent(name + '-' + unit);
  }
  function go(unit) {
    if (unit < 0) {
      if (body.dataset.prev) { page(body.dataset.prev, parseInt(body.dataset.prevUnits, 10) - 1); }
    } else if (unit >= units) {
      if (body.dataset.next) { page(body.dataset.next, 0); }
    } else {
      location.hash = encodeURIComponent(layer + '-' + unit);
    }
  }
  function layerStep(name, count) {
    if (name) { page(name, Math.max(0, Math.min(Math.max(current(), 0), count - 1))); }
  }
  document.addEventListener('keydown', function (event) {
    if (event.altKey || event.ctrlKey || event.metaKey ||
        /^(INPUT|TEXTAREA|SELECT|BUTTON)$/.test(event.target.tagName)) { return; }
    var unit = current();
    if (event.key === 'ArrowRight') { go(unit < 0 ? 0 : unit + 1); }
    else if (event.key === 'ArrowLeft') { go(unit < 0 ? 0 : unit - 1); }
    else if (event.key === 'ArrowUp') {
      layerStep(body.dataset.prev, parseInt(body.dataset.prevUnits, 10));
    } else if (event.key === 'ArrowDown') {
      layerStep(body.dataset.next, parseInt(body.dataset.nextUnits, 10));
    } else { return; }
    event.preventDefault();
  });
  var form = document.getElementById('jump');
  form.addEventListener('submit', function (event) {
    event.preventDefault();
    var text = document.getElementById('jump-unit').value.trim();
    var unit = Number(text), message = document.getElementById('jump-message');
    if (!/^\d+$/.test(text) || unit >= units) {
      message.textContent = 'units are 0 to ' + (units - 1);
      return;
    }
    message.textContent = '';
    go(unit);
  });
}());
"""
