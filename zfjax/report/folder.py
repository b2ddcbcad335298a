"""A folder of figures: a PNG and its numbers as JSON per figure, and index.html; the gallery.

    folder.gallery('/tmp/zf', '/tmp/zf/figures')               # every figure, defaults
    figures_out = folder.FigureFolder('/tmp/figs', net)         # one figure at a time
    figures_out.write('occlusion', *figures.occlusion(net, images=['cat.jpg']))

Each figure `KEY` is written as KEY.png and KEY.json (its numbers, title, caption and
provenance: model, checkpoint, step, dataset, input size, how it was made, notes);
manifest.json lists the figures in the paper's order, and index.html shows every figure
of the manifest whose PNG exists, with its caption. Every text on the page is
HTML-escaped and every link percent-encoded, so captions and file names cannot add
markup, and only plain file names inside the folder are linked.
"""

from __future__ import annotations

import html
import json
import math
import os
import pathlib
import urllib.parse
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
from matplotlib.figure import Figure

from zfjax import loading
from zfjax.report import examples
from zfjax.report import figures
from zfjax.report import options
from zfjax.report import plots

ORDER = {name: i for i, name in enumerate(figures.FIGURES)}


def plain(value: Any) -> Any:
  """JSON-ready: arrays to lists, numpy scalars to Python, non-finite floats to None."""
  if isinstance(value, dict):
    return {str(k): plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [plain(v) for v in value]
  if hasattr(value, 'tolist') and not isinstance(value, (str, bytes)):
    return plain(value.tolist())
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, np.floating):
    return plain(float(value))
  if isinstance(value, pathlib.Path):
    return str(value)
  return value


class FigureFolder:
  """The figures folder of one net: PNG + JSON per figure, a manifest, and index.html."""

  def __init__(self, directory: Union[str, os.PathLike], net: loading.Loaded,
               command: Optional[str] = None):
    self.directory = pathlib.Path(directory)
    if self.directory.exists() and not self.directory.is_dir():
      raise NotADirectoryError(f'{self.directory} is a file; the figures need a folder '
                               '(give another output path)')
    try:
      self.directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
      raise options.FigureError(f'cannot make the figures folder {self.directory}: '
                                f'{error.strerror or error}') from None
    self.net = net
    self.command = command or f'zfjax.report.gallery({str(net.checkpoint)!r}, ...)'
    self.written = []

  def write(self, key: str, fig: Figure, numbers: Mapping) -> pathlib.Path:
    """Writes KEY.png and KEY.json, and updates the manifest and index.html."""
    numbers = dict(numbers)
    title, caption = numbers.pop('title', key), numbers.pop('caption', '')
    png = self.directory / f'{key}.png'
    plots.save(fig, png)
    net = self.net
    provenance = {
        'model': net.config.model, 'checkpoint': str(net.checkpoint), 'step': net.step,
        'dataset': net.config.dataset, 'image_size': net.image_size,
        'command': self.command, 'notes': list(net.notes)}
    record = {'figure': png.name, 'title': title, 'caption': caption,
              'provenance': provenance, **numbers}
    (self.directory / f'{key}.json').write_text(json.dumps(plain(record), indent=1) + '\n')
    entries = [e for e in self._manifest() if e.get('key') != key]
    entries.append({'key': key, 'title': title, 'png': png.name, 'json': f'{key}.json',
                    'caption': caption, 'model': net.describe(), 'command': self.command})
    entries.sort(key=lambda e: (ORDER.get(str(e.get('key', '')).split('_')[0], 99),
                                str(e.get('key', ''))))
    (self.directory / 'manifest.json').write_text(json.dumps(entries, indent=1) + '\n')
    write_index(self.directory, entries)
    self.written.append(png)
    return png

  def _manifest(self) -> list:
    try:
      entries = json.loads((self.directory / 'manifest.json').read_text())
      return [e for e in entries if isinstance(e, dict)]
    except (OSError, ValueError):
      return []


def write_index(directory: pathlib.Path, entries: Sequence[dict]) -> pathlib.Path:
  """index.html: every figure of `entries` whose PNG exists, with its caption and numbers.

  Each figure shows its title, caption, model, how it was made, and a link to its numbers
  when that file exists. Texts are HTML-escaped and links percent-encoded (then escaped);
  only plain file names inside `directory` are linked.
  """
  directory = pathlib.Path(directory)
  esc = lambda text: html.escape(str(text), quote=True)
  url = lambda name: esc(urllib.parse.quote(name))
  parts = ['<!DOCTYPE html>', '<html><head><meta charset="utf-8">',
           '<title>zfjax: Zeiler &amp; Fergus figures</title>',
           '<style>body{font-family:sans-serif;max-width:1100px;margin:auto}'
           'img{max-width:100%;border:1px solid #ccc}figure{margin:2em 0}'
           'figcaption{font-size:0.92em;line-height:1.4}code{font-size:0.9em}</style>',
           '</head><body>', '<h1>Visualizing and Understanding Convolutional Networks: '
           'figures</h1>']
  shown = 0
  for entry in entries:
    png = str(entry.get('png', ''))
    if not png or pathlib.Path(png).name != png or not (directory / png).is_file():
      continue
    shown += 1
    parts.append('<figure>')
    parts.append(f'<h2>{esc(entry.get("title", png))}</h2>')
    parts.append(f'<a href="{url(png)}"><img src="{url(png)}" '
                 f'alt="{esc(entry.get("title", png))}"></a>')
    parts.append(f'<figcaption><p>{esc(entry.get("caption", ""))}</p>')
    parts.append(f'<p>{esc(entry.get("model", ""))}. Made with <code>'
                 f'{esc(entry.get("command", ""))}</code>.')
    numbers = str(entry.get('json', ''))
    if numbers and pathlib.Path(numbers).name == numbers and (directory / numbers).is_file():
      parts.append(f' Numbers: <a href="{url(numbers)}">{esc(numbers)}</a>.')
    parts.append('</p></figcaption></figure>')
  if not shown:
    parts.append('<p>No figures yet.</p>')
  parts.append('</body></html>')
  path = directory / 'index.html'
  path.write_text('\n'.join(parts) + '\n')
  return path


def gallery(source: figures.Net, out: Union[str, os.PathLike], *,
            step: Union[int, str] = 'latest', images: examples.Images = None,
            split: Optional[str] = None, max_examples: Optional[int] = None,
            rule: str = 'deconvnet', seed: int = 0,
            boxes: Union[None, Mapping, str, os.PathLike] = None,
            compare: Optional[figures.Net] = None, skip: Sequence[str] = (),
            log: figures.Log = examples.silent, command: Optional[str] = None,
            ) -> list[pathlib.Path]:
  """Every figure of a trained net with its defaults, into the folder `out`.

  `source`: a Loaded net or a path (`loading.load(source, step)`). `images`, `split`,
  `max_examples`, `rule` and `seed` go to every figure that takes them, `boxes` to
  correspondence and `compare` to filters. `skip` names figures to leave out; a figure
  that needs an input it was not given (correspondence on photos without boxes) is left
  out with a note in the log. Returns the PNGs written; `out` also gets their JSON,
  manifest.json and index.html.
  """
  unknown = sorted(set(skip) - set(figures.FIGURES))
  if unknown:
    raise options.FigureError(f'skip: unknown figures {unknown}; choose from '
                              f'{", ".join(figures.FIGURES)}')
  net = source if isinstance(source, loading.Loaded) else loading.load(source, step)
  folder = FigureFolder(out, net, command)
  data = dict(images=images, split=split, log=log)
  dataset_wide = dict(data, max_examples=max_examples, rule=rule, seed=seed)
  arguments = {'top9': dataset_wide, 'evolution': dataset_wide, 'invariance': data,
               'filters': dict(dataset_wide, compare=compare), 'occlusion': data,
               'correspondence': dict(data, boxes=boxes, seed=seed)}
  for name, draw in figures.FIGURES.items():
    if name in skip:
      continue
    log(f'== {name}')
    try:
      fig, numbers = draw(net, **arguments[name])
    except options.MissingInput as reason:
      log(f'note: {name} skipped: {reason}')
      continue
    folder.write(name, fig, numbers)
  return folder.written
