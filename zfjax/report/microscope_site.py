"""The microscope: every unit of a trained convnet as a static, linkable site.

    site = report.microscope('/tmp/zf', '/tmp/zf/microscope')   # workdir, checkpoint, weights
    print(site.directory / 'index.html', site.units, site.bytes, site.seconds)

One page per layer (conv1.html ... fc7.html): a grid of its units, each shown by its
strongest projection (conv) or image (fc), then a section per unit with the permalink
`<layer>.html#<layer>-<channel>`: its top-k dataset examples (receptive-field crops beside
their deconvnet projections, Fig. 2), how often it fires with its mean and largest
activation, its filter (the first conv) or the input units that feed it most (by weight
norm, linked), its top-k at each checkpoint the workdir kept (Fig. 4), and the examples
where its pre-activation is most negative. index.html lists the layers (Fig. 3's shapes,
parameter counts) and how the site was made; `<layer>.json` and microscope.json hold the
numbers. Pages work from disk (file://) or any static host: no server, nothing fetched
from elsewhere. docs/microscope.md shows the pages and their keys.

How it is made, with memory independent of the number of images searched: one pass over
the data (`zfjax.survey`: top-k, most negative pre-activations, firing statistics, split
over all devices), a second pass that cuts each entry's crop and projects it from the
batch that holds its image (`zfjax.topk`), then the pages. The site is built in a hidden
folder beside `out` and moved into place at the end, so a failed run leaves no site that
looks complete.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import shutil
import tempfile
import time
from typing import NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

import zfjax
from zfjax import architecture
from zfjax import loading
from zfjax import survey as unit_survey
from zfjax import topk
from zfjax.architecture import Conv
from zfjax.report import examples
from zfjax.report import figures
from zfjax.report import microscope_pages as pages
from zfjax.report import microscope_pictures as pictures
from zfjax.report import options
from zfjax.report import plots
from zfjax.report import strongest

MARKER = 'microscope.json'  # a folder holding this file is a site this module may replace
CHUNK = 256  # entries cut at once (bounds memory)


class Site(NamedTuple):
  """What `microscope` built: where, how much, and how long each stage took (seconds)."""
  directory: pathlib.Path
  layers: tuple
  units: int
  images: int
  bytes: int
  seconds: dict


class LayerTiles(NamedTuple):
  """One conv layer's pictures, uint8 RGB (C, k, T, T, 3), unit c's j-th entry at [c, j].

  A checkpoint's row (Fig. 4) keeps only each unit's strongest projection, (C, 1, T, T,
  3), and no bottom crops. The fc layers' pictures are thumbnails per example instead.
  """
  top_projection: np.ndarray
  top_crop: np.ndarray
  bottom_crop: Optional[np.ndarray]


def microscope(source: figures.Net, out: Union[str, os.PathLike], *,
               step: Union[int, str] = 'latest', images: examples.Images = None,
               split: Optional[str] = None, max_examples: Optional[int] = None,
               layers: Optional[Sequence[str]] = None, k: int = 9, rule: str = 'deconvnet',
               tile: int = 64, evolution: bool = True, log: figures.Log = examples.silent,
               command: Optional[str] = None) -> Site:
  """Builds the microscope site of a net in the folder `out` (see the module doc).

  `source`: a Loaded net or a path (`loading.load(source, step)`). `images`: image files
  or (N, H, W, 3) model inputs to search instead of the net's evaluation split (capped by
  `max_examples`). `layers`: units' layers (default: every conv and fc6, fc7). `k`:
  examples per unit. `tile`: pixels of a crop or projection on the page. `evolution`:
  also each unit's top-k at every other checkpoint kept beside `source`. Raises
  FigureError for a mistake (an unknown layer, an output path that is a file, a folder
  that holds something else, no images), DatasetUnavailableError when the dataset is
  not here and no images were given.
  """
  started = time.perf_counter()
  net = figures.as_net(source) if isinstance(source, loading.Loaded) else loading.load(
      source, step)
  layers = _check_layers(net, layers)
  options.positive(k, 'k')
  options.positive(tile, 'tile')
  target = _check_out(pathlib.Path(out))
  data = examples.image_set(net, images, split, max_examples, log, photos_instead=False)
  seconds = {}

  clock = time.perf_counter()
  log(f'microscope: surveying {", ".join(layers)} over {data.description}')
  found = unit_survey.survey(net.model, net.variables, data.batches(), layers, k)
  searched = found[layers[0]].images
  if not searched:
    raise options.FigureError(f'no images in {data.description}: nothing to search')
  seconds['search'] = time.perf_counter() - clock

  clock = time.perf_counter()
  log(f'microscope: cutting and projecting the top {k} of each unit ({searched} images)')
  tiles, thumbnails = second_pass(net, net.variables, data, found, layers, rule, tile)
  seconds['projection'] = time.perf_counter() - clock

  clock = time.perf_counter()
  steps = _other_steps(net) if evolution else ()
  history = {}
  for other in steps:
    log(f'microscope: the top {k} at checkpoint step {other}')
    variables = {'params': next(iter(strongest.restore_steps(net.checkpoint.parent,
                                                             [other])))[1]['params']}
    other_found = unit_survey.survey(net.model, variables, data.batches(), layers, k)
    history[other] = (other_found, *second_pass(net, variables, data, other_found, layers,
                                                rule, tile, first_only=True))
  seconds['evolution'] = time.perf_counter() - clock

  clock = time.perf_counter()
  log(f'microscope: writing the pages into {target}')
  made = dict(checkpoint=str(net.checkpoint), step=net.step, model=net.config.model,
              dataset=data.description, images=searched, k=k, rule=rule,
              date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
              version=zfjax.__version__, command=command or
              f'zfjax.report.microscope({str(net.checkpoint)!r}, ...)', notes=list(net.notes))
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f'.{target.name}.', dir=target.parent))
  try:
    pages.write_site(staging, pages.SiteData(
        net=net, layers=layers, found=found, tiles=tiles, thumbnails=thumbnails,
        history=history, made=made, labels=data.labels, shapes=_shapes(net)))
    seconds['writing'] = time.perf_counter() - clock
    seconds['total'] = time.perf_counter() - started
    size = sum(f.stat().st_size for f in staging.rglob('*') if f.is_file())
    pages.write_marker(staging, made, seconds, size)
    _replace(staging, target)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  units = sum(int(found[layer].max.shape[0]) for layer in layers)
  log(f'microscope: {units} units of {len(layers)} layers, {size / 2**20:.1f} MiB, in '
      f'{seconds["total"]:.1f} s (search {seconds["search"]:.1f}, projection '
      f'{seconds["projection"]:.1f}, writing {seconds["writing"]:.1f})')
  return Site(target, layers, units, searched, size, seconds)


# -------------------------------------------------------------------- checks, output


def _check_layers(net: loading.Loaded, layers: Optional[Sequence[str]]) -> tuple:
  if layers is None or (not isinstance(layers, str) and not list(layers)):
    return unit_survey.unit_layers(net.spec)
  try:
    return unit_survey.check_layers(net.spec, layers)
  except ValueError as error:
    raise options.FigureError(f'layers: {error}') from None


def _check_out(out: pathlib.Path) -> pathlib.Path:
  """`out` as an absolute path that may become the site (FigureError before any work)."""
  out = out.absolute()
  if out.exists() and not out.is_dir():
    raise options.FigureError(f'{out} is a file; the microscope needs a folder (give '
                              'another output path)')
  if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
    raise options.FigureError(f'{out} holds other files; give an empty or new folder (or '
                              'an earlier microscope site, which is replaced)')
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise options.FigureError(f'cannot make {out.parent}: {error.strerror or error}') from None
  if not os.access(out.parent, os.W_OK):
    raise options.FigureError(f'cannot write into {out.parent}')
  return out


def _replace(staging: pathlib.Path, target: pathlib.Path) -> None:
  """Moves the finished site into place; an earlier site there is removed after."""
  old = None
  if target.exists():
    old = target.with_name(f'.{target.name}.old.{os.getpid()}')
    target.rename(old)
  staging.rename(target)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def _other_steps(net: loading.Loaded) -> tuple:
  """The steps of the other complete checkpoints beside the net's (none for one)."""
  try:
    steps = strongest.checkpoint_steps(net.checkpoint.parent)
  except (FileNotFoundError, OSError, ValueError):
    return ()
  return tuple(s for s in steps if s != net.step) if len(steps) > 1 else ()


def _shapes(net: loading.Loaded) -> dict:
  """Each layer's output shape and parameter count at the net's input size."""
  shapes = architecture.shapes(net.spec, (net.image_size, net.image_size, 3))
  params = {name: int(sum(np.size(a) for a in jax.tree.leaves(value)))
            for name, value in net.params.items()}
  return {name: (shapes[name], params.get(name, 0)) for name in shapes}


# --------------------------------------------------------------------- second pass


def second_pass(net: loading.Loaded, variables, data: examples.ImageSet,
                found: dict, layers: Sequence[str], rule: str, tile: int,
                first_only: bool = False) -> tuple[dict, dict]:
  """Each entry's pictures, from the batch that holds its image.

  Returns ({layer: LayerTiles} for the conv layers, {example: thumbnail} for the images
  the fc layers' entries name). `first_only`: crops of the top entries and the projection
  of each unit's strongest only, no negatives (a checkpoint's row of Fig. 4)."""
  convs = [name for name in layers if isinstance(architecture.layer(net.spec, name), Conv)]
  dense = [name for name in layers if name not in convs]
  gray = options.is_gray(net)
  out = {name: _empty_tiles(net, found[name], name, tile, first_only) for name in convs}
  wanted_thumbs = np.unique(np.concatenate(
      [np.asarray(found[name].top.example).ravel() for name in dense] +
      [np.asarray(found[name].bottom.example).ravel() for name in dense if not first_only] +
      [np.zeros(0, np.int64)]))
  wanted_thumbs = wanted_thumbs[wanted_thumbs >= 0]
  thumbnails, seen = {}, 0
  for batch in data.batches():
    images, mask = topk.unpack_batch(batch)
    images = np.asarray(images)[mask]
    numbers = seen + np.arange(len(images))
    seen += len(images)
    if not len(images):
      continue
    here = topk.Images(jnp.asarray(numbers, jnp.int32), jnp.asarray(images))
    shown = topk.Images(here.example, jnp.asarray(net.to_display(images), jnp.float32))
    for name in convs:
      _crops(net, found[name], name, shown, out[name], first_only)
    _projections(net, variables, found, convs, here, out, rule, gray, first_only)
    take = np.isin(numbers, wanted_thumbs)
    if take.any():
      small = pictures.tiles(np.asarray(shown.image)[take] / 255.0, tile)
      thumbnails.update(zip(numbers[take].tolist(), small))
  return out, thumbnails


def _empty_tiles(net, result: unit_survey.Survey, layer: str, tile: int,
                 first_only: bool) -> LayerTiles:
  channels, k = result.top.example.shape
  size = pictures.display_size(architecture.windows(net.spec, layer)[-1][1].size, tile)
  blank = lambda: np.zeros((channels, k, size, size, 3), np.uint8)
  if first_only:
    return LayerTiles(np.zeros((channels, 1, size, size, 3), np.uint8), blank(), None)
  return LayerTiles(blank(), blank(), blank())


def _in_batch(entries: topk.TopK, numbers: np.ndarray) -> tuple:
  """(channel, column) of the entries whose example is among `numbers`, sorted by image."""
  example = np.asarray(entries.example)
  channel, column = np.nonzero(np.isin(example, numbers))
  order = np.argsort(example[channel, column], kind='stable')
  return channel[order], column[order]


def _crops(net, result: unit_survey.Survey, layer: str, shown: topk.Images,
           tiles: LayerTiles, first_only: bool) -> None:
  """Cuts the crops of the entries whose images are in this batch into their tiles.

  In chunks of CHUNK entries (one compiled shape; memory bounded whatever the width)."""
  size = tiles.top_crop.shape[-2]
  kinds = [(result.top, tiles.top_crop)]
  if not first_only:
    kinds.append((result.bottom, tiles.bottom_crop))
  for entries, crop_tiles in kinds:
    channel, column = _in_batch(entries, np.asarray(shown.example))
    for start in range(0, channel.size, CHUNK):
      where = (channel[start:start + CHUNK], column[start:start + CHUNK])
      picked = _padded(topk.TopK(*(np.asarray(a)[where] for a in entries)), CHUNK)
      crops = topk.crop_entries(net.model, picked, shown, layer)
      count = where[0].size
      pixels = np.clip(np.asarray(crops.pixels)[:count] / 255.0, 0, 1)
      crop_tiles[where] = pictures.tiles(
          plots.blank_outside(pixels, np.asarray(crops.valid)[:count]), size)


def _projections(net, variables, found: dict, layers: Sequence[str], here: topk.Images,
                 tiles: dict, rule: str, gray: bool, first_only: bool) -> None:
  """Projects the top entries whose images are in this batch into their tiles.

  Every layer from one forward pass per group of images; `first_only`: each unit's
  strongest entry only."""
  wanted, places = {}, {}
  for layer in layers:
    where = _in_batch(found[layer].top, np.asarray(here.example))
    if first_only:
      where = tuple(a[where[1] == 0] for a in where)
    if where[0].size:
      wanted[layer] = (topk.TopK(*(np.asarray(a)[where] for a in found[layer].top)), where[0])
      places[layer] = where
  projected = topk.project_layers(net.model, variables, wanted, here, rule=rule)
  for layer, patches in projected.items():
    shown = plots.blank_outside(plots.signed_to_display(patches.pixels, gray=gray),
                                np.asarray(patches.valid))
    tiles[layer].top_projection[places[layer]] = pictures.tiles(
        shown, tiles[layer].top_crop.shape[-2])


def _padded(entries: topk.TopK, size: int) -> topk.TopK:
  """Flat entries padded with unfilled ones to `size` (one compiled shape)."""
  extra = size - entries.example.shape[0]
  pad = lambda a, fill: np.concatenate([a, np.full(extra, fill, a.dtype)])
  return topk.TopK(pad(entries.values, -np.inf), *(pad(a, -1) for a in entries[1:]))
