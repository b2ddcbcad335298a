r"""Figures of the paper's analyses from a trained checkpoint, and an HTML page of them.

    python visualize.py all --workdir /tmp/zf --out /tmp/zf/figures
    python visualize.py top9 --workdir /tmp/zf --layers conv1,conv5 --num-channels 9 --k 9
    python visualize.py evolution --workdir /tmp/zf --steps 100,400 --layers conv5
    python visualize.py invariance --workdir /tmp/zf --num-images 5
    python visualize.py filters --workdir /tmp/zfnet --compare /tmp/alexnet --names ZFNet,AlexNet
    python visualize.py occlusion --checkpoint /tmp/zfnet/checkpoints/9000 --images dog.jpg \
        --label 207 --patch 32 --stride 8
    python visualize.py correspondence --workdir /tmp/zfnet --images d1.jpg d2.jpg ... \
        --boxes parts.json       # {"right eye": [[row, col, h, w], ...one per image], ...}

Subcommands: top9 (Fig. 2), evolution (Fig. 4), invariance (Fig. 5), filters (Fig. 6),
occlusion (Fig. 7), correspondence (Table 1), all (every one with its defaults). Each
takes --workdir (a train.py workdir: its latest checkpoint, or --step) or --checkpoint (a
checkpoint directory), and writes into --out (default WORKDIR/figures) a PNG per figure,
its numbers as JSON of the same basename, and index.html showing every figure there with
a caption saying how it was made.

Images. Dataset-wide analyses (top9, evolution, filters' layer-2 features) read the
config's evaluation split (the digits test split for configs/digits.py) through the input
pipeline; --max-examples caps it, --images replaces it with image files. Per-image
analyses (occlusion, invariance, correspondence) use --images, or else scikit-image's
sample photos when the model takes photo-sized inputs (224x224), or else the first
examples of the evaluation split (distinct classes where possible). Image files are
preprocessed as the pipeline's evaluation: shorter side resized to resize_size, center
crops to resize_size then image_size, the training mean image subtracted. Without a true
label (photos, files without --label), the model's top class on the unaltered image is
used, and the caption says so.

Defaults scale with the input size: occlusion patch and stride 32 and 8 at 224 pixels
(8 and 2 at 32), vertical translations of +-60 pixels in steps of 5 at 224 (+-9 in steps
of 1 at 32). Mistakes (missing workdir, unknown layer or channel, unreadable image) exit
with status 2 and a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import logging
import math
import os
import pathlib
import sys
import time
import urllib.parse
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from zfjax import preprocess  # NumPy and Pillow only: cheap to import

COMMANDS = ('top9', 'evolution', 'invariance', 'filters', 'occlusion', 'correspondence')
ORDER = {'top9': 0, 'evolution': 1, 'invariance': 2, 'filters': 3, 'occlusion': 4,
         'correspondence': 5}
PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket', 'cat')
PHOTO_SIZE = 128  # models taking inputs at least this large get photos by default
IMAGENET_MEAN = (123.68, 116.78, 103.94)
PROJECTION_NOTE = ('Projections are shown per projection as p / (2 max|p|) + 0.5, so zero '
                   'is mid-gray and the sign is kept; light blue-gray cells lie outside the '
                   'unit\'s receptive field (or the image).')


class UserError(ValueError):
  """A mistake in the command line or its inputs: reported in one line, exit status 2."""


class Skip(Exception):
  """An analysis that cannot run with what `all` was given (it says why)."""


# ---------------------------------------------------------------------------- progress


class Progress:
  """Prints one line per stage with the time since the start."""

  def __init__(self, stream=None):
    self.start = time.perf_counter()
    self.stream = stream  # None: sys.stdout at the time of printing

  def __call__(self, message: str) -> None:
    print(f'[{time.perf_counter() - self.start:7.1f}s] {message}', file=self.stream or sys.stdout,
          flush=True)

  def note(self, message: str) -> None:
    print(f'note: {message}', file=self.stream or sys.stdout, flush=True)


# ----------------------------------------------------------------------------- session


@dataclasses.dataclass
class Session:
  """A restored checkpoint and what the analyses need to know about it."""
  config: Any
  model: Any
  variables: dict
  step: int
  checkpoint: pathlib.Path
  image_size: int
  mean_full: np.ndarray  # (resize_size, resize_size, 3) mean image, 0-255
  notes: list
  dataset_error: Optional[str] = None  # why the dataset cannot be read here, once known

  @property
  def gray(self) -> bool:
    """Whether the model was trained on gray images tiled to RGB (projections and filters
    are then shown as their channel sums)."""
    from zfjax import input_pipeline  # pylint: disable=g-import-not-at-top
    return self.config.dataset == input_pipeline.DIGITS

  @property
  def mean(self) -> np.ndarray:
    """The mean image cropped to the model's input (add it to an input to display it)."""
    return center_crop(self.mean_full, self.image_size)

  @property
  def photo_sized(self) -> bool:
    return self.image_size >= PHOTO_SIZE

  @property
  def num_classes(self) -> int:
    return int(self.model.spec[-1].features)

  def describe(self) -> str:
    return (f'model {self.config.model} ({self.image_size}x{self.image_size} inputs, '
            f'{self.num_classes} classes), checkpoint {self.checkpoint} (step {self.step})')


def parse_step(text: str):
  if text in ('latest', 'best'):
    return text
  try:
    return int(text)
  except ValueError:
    raise UserError(f"--step must be 'latest', 'best' or a step number, got {text!r}") from None


def load_session(path: Optional[str], kind: str, step, progress: Progress) -> Session:
  """Restores the checkpoint at a workdir (kind 'workdir') or checkpoint directory."""
  from zfjax import checkpoints, models  # pylint: disable=g-import-not-at-top
  location = pathlib.Path(path)
  if not location.exists():
    raise FileNotFoundError(f'{kind} {path} does not exist')
  if not location.is_dir():
    raise UserError(f'{kind} {path} is not a directory')
  if kind == 'workdir' and not (location / checkpoints.CHECKPOINTS).is_dir():
    raise FileNotFoundError(f'workdir {path} has no checkpoints/ directory (train it with '
                            'train.py first, or pass --checkpoint DIR)')
  directory = checkpoints.find_checkpoint(location, step)
  progress(f'restoring {directory}')
  config, params = checkpoints.restore_params(directory)
  if config is None:
    raise UserError(f'checkpoint {directory} carries no config and has no workdir '
                    'config.json beside it: cannot rebuild the model')
  spec = models.spec_from_config(config, 1)
  last = spec[-1].name
  if last not in params:
    raise UserError(f'checkpoint {directory} has no {last!r} params for its config\'s model')
  num_classes = int(np.shape(params[last]['bias'])[0])
  model = models.ConvNet(models.spec_from_config(config, num_classes))  # analyses in float32
  notes, unavailable = [], []
  mean = load_mean(config, notes, unavailable)
  return Session(config, model, {'params': params}, int(directory.name), directory,
                 int(config.image_size), mean, notes, unavailable[0] if unavailable else None)


def session_from_args(args, progress: Progress) -> Session:
  if bool(args.workdir) == bool(args.checkpoint):
    raise UserError('give exactly one of --workdir DIR or --checkpoint DIR')
  if args.workdir:
    return load_session(args.workdir, 'workdir', parse_step(args.step), progress)
  return load_session(args.checkpoint, 'checkpoint', parse_step(args.step), progress)


def load_mean(config, notes: list, unavailable: list) -> np.ndarray:
  """The training mean image the pipeline subtracts; ImageNet's channel means (with a note)
  when a TFDS dataset's mean is neither cached nor computable here (a missing dataset's
  message is appended to `unavailable`)."""
  from zfjax import input_pipeline  # pylint: disable=g-import-not-at-top
  if config.dataset == input_pipeline.DIGITS:
    return np.asarray(input_pipeline.mean_image(config), np.float32)
  path = input_pipeline.mean_image_path(config)
  if os.path.exists(path):
    return np.load(path).astype(np.float32)
  try:
    return np.asarray(input_pipeline.mean_image(config), np.float32)
  except Exception as error:  # pylint: disable=broad-except  (no data, no TensorFlow)
    if isinstance(error, input_pipeline.DatasetUnavailableError):
      unavailable.append(str(error).strip().splitlines()[0])
    notes.append(f'the mean image of {config.dataset} is not available here '
                 f'({type(error).__name__}); used ImageNet\'s channel means {IMAGENET_MEAN}')
    size = int(config.resize_size)
    return np.broadcast_to(np.asarray(IMAGENET_MEAN, np.float32), (size, size, 3)).copy()


center_crop = preprocess.center_crop


# ------------------------------------------------------------------------------ images


def read_image_file(path: str) -> tuple[np.ndarray, Optional[str]]:
  """An image file as (h, w, 3) uint8 RGB, and a note when it had to be converted:
  grayscale is tiled to RGB, an alpha channel is dropped, other modes are converted
  (zfjax.preprocess.read_image)."""
  return preprocess.read_image(path, '--images')


def to_model_input(rgb: np.ndarray, session: Session) -> np.ndarray:
  """(h, w, 3) 0-255 RGB -> (image_size, image_size, 3) in the model's input space, as the
  evaluation pipeline: shorter side to resize_size (bilinear, antialiased), center square,
  minus the mean image, center crop (zfjax.preprocess.preprocess)."""
  return preprocess.preprocess(rgb, session.mean_full, size=session.image_size,
                               resize=int(session.config.resize_size))


@dataclasses.dataclass
class Examples:
  """Images for the per-image analyses, in the model's input space."""
  images: np.ndarray             # (N, H, W, 3)
  labels: Optional[np.ndarray]   # (N,) true labels, or None
  names: list
  description: str


def file_examples(paths: Sequence[str], session: Session, progress: Progress) -> Examples:
  images, names = [], []
  for path in paths:
    rgb, note = read_image_file(path)
    if note:
      progress.note(note)
    images.append(to_model_input(rgb, session))
    names.append(pathlib.Path(path).name)
  return Examples(np.stack(images), None, names, f'image files {", ".join(names)}')


def photo_examples(session: Session, count: int) -> Examples:
  from skimage import data  # pylint: disable=g-import-not-at-top
  names = [PHOTOS[i % len(PHOTOS)] for i in range(count)]
  images = np.stack([to_model_input(getattr(data, name)(), session) for name in names])
  return Examples(images, None, names, f"scikit-image's sample photos ({', '.join(names)})")


def dataset_examples(session: Session, count: int, split: Optional[str],
                     digit_class: Optional[int] = None) -> Examples:
  """The first `count` examples of the evaluation split, of distinct classes while there
  are unseen ones (or all of class `digit_class`)."""
  images, labels, rows = [], [], []
  seen = set()
  spare = []
  number = 0
  for batch in evaluation_batches(session.config, split):
    for image, label, valid in zip(batch['image'], batch['label'], batch['mask']):
      if not valid:
        continue
      label = int(label)
      if digit_class is not None:
        if label == digit_class:
          images.append(image), labels.append(label), rows.append(number)
      elif label not in seen:
        seen.add(label)
        images.append(image), labels.append(label), rows.append(number)
      else:
        spare.append((image, label, number))
      number += 1
      if len(images) >= count:
        break
    if len(images) >= count:
      break
  for image, label, number in spare[:max(0, count - len(images))]:
    images.append(image), labels.append(label), rows.append(number)
  if not images:
    what = f'of class {digit_class} ' if digit_class is not None else ''
    raise UserError(f'no examples {what}in the {session.config.dataset} evaluation split')
  names = [f'#{r} ({l})' for r, l in zip(rows, labels)]
  split_name = split or session.config.get('eval_split', 'test')
  return Examples(np.stack(images).astype(np.float32), np.asarray(labels, np.int32), names,
                  f'{session.config.dataset} {split_name} split, examples {rows}')


def examples_for(args, session: Session, progress: Progress, count: int,
                 digit_class: Optional[int] = None) -> Examples:
  """--images, else photos for photo-sized models, else the dataset's first examples."""
  if args.images:
    return file_examples(args.images, session, progress)
  if session.photo_sized:
    return photo_examples(session, count)
  return dataset_examples(session, count, args.split, digit_class)


def labels_for(args, session: Session, examples: Examples) -> tuple[np.ndarray, str, str]:
  """(N,) labels: --label, else the true labels, else the model's top class; how they were
  chosen, and a short word for figure titles ('given', 'true', 'top class')."""
  count = len(examples.images)
  if getattr(args, 'label', None) is not None:
    labels = parse_ints(args.label, '--label')
    if len(labels) == 1:
      labels = labels * count
    if len(labels) != count:
      raise UserError(f'--label: give one label, or one per image ({count}), got {len(labels)}')
    bad = [l for l in labels if not 0 <= l < session.num_classes]
    if bad:
      raise UserError(f'--label {bad[0]} does not exist: the model has {session.num_classes} '
                      f'classes (0..{session.num_classes - 1})')
    return np.asarray(labels, np.int32), 'labels given with --label', 'given'
  if examples.labels is not None:
    return examples.labels, 'the true labels', 'true'
  logits = session.model.apply(session.variables, examples.images)
  return (np.asarray(np.argmax(logits, -1), np.int32),
          "the model's most probable class on each unaltered image (no true label)",
          'top class')


def evaluation_batches(config, split: Optional[str]) -> Iterator[dict]:
  from zfjax import input_pipeline  # pylint: disable=g-import-not-at-top
  return input_pipeline.eval_batches(config, split=split, process_index=0, process_count=1)


@dataclasses.dataclass
class Source:
  """A dataset for the dataset-wide analyses: `batches()` returns a fresh iterator of
  {'image', 'label', 'mask'} dicts; `labels` fills in as the first pass streams."""
  batches: Callable[[], Iterator[dict]]
  description: str
  labels: list


def dataset_source(args, session: Session, progress: Progress) -> Source:
  """The evaluation split (capped by --max-examples), or --images as a dataset; for a
  photo-sized model whose dataset is not on this machine, the sample photos (with a note)."""
  from zfjax import input_pipeline  # pylint: disable=g-import-not-at-top
  cap = int(args.max_examples or 0)
  if args.images:
    examples = file_examples(args.images, session, progress)
    return _array_source(examples, cap)
  config = session.config
  try:
    if session.dataset_error:
      raise input_pipeline.DatasetUnavailableError(session.dataset_error)
    first = evaluation_batches(config, args.split)
  except input_pipeline.DatasetUnavailableError as error:
    session.dataset_error = str(error).strip().splitlines()[0]
    if not session.photo_sized:
      raise UserError(session.dataset_error) from None
    progress.note(f'{config.dataset} is not available here; using the sample photos instead '
                  '(pass --images FILES for your own)')
    return _array_source(photo_examples(session, len(PHOTOS)), cap)
  labels = []
  pending = [first]

  def batches():
    stream = pending.pop() if pending else evaluation_batches(config, args.split)
    return _capped(stream, cap, labels if not labels else None)

  split = args.split or config.get('eval_split', None) or 'evaluation'
  what = f'the first {cap} examples' if cap else 'all examples'
  return Source(batches, f'{config.dataset} {split} split ({what})', labels)


def _capped(stream, cap: int, labels: Optional[list]) -> Iterator[dict]:
  """Batches with rows past the first `cap` valid examples masked off (cap 0: all); the
  valid labels appended to `labels` if given."""
  seen = 0
  for batch in stream:
    mask = np.asarray(batch['mask'], bool).copy()
    if cap:
      number = seen + np.cumsum(mask)
      mask &= number <= cap
    seen += int(mask.sum())
    if labels is not None:
      labels.extend(int(l) for l in np.asarray(batch['label'])[mask])
    if mask.any():
      yield {'image': batch['image'], 'label': batch['label'], 'mask': mask}
    if cap and seen >= cap:
      return


def _array_source(examples: Examples, cap: int) -> Source:
  images = examples.images[:cap] if cap else examples.images
  labels = examples.labels[:len(images)] if examples.labels is not None else np.full(
      len(images), -1, np.int32)

  def batches():
    for start in range(0, len(images), 64):
      chunk = images[start:start + 64]
      yield {'image': chunk, 'label': labels[start:start + 64],
             'mask': np.ones(len(chunk), bool)}

  return Source(batches, examples.description, [int(l) for l in labels])


# ----------------------------------------------------------------------- argument checks


def parse_ints(text, flag: str) -> list:
  if isinstance(text, (list, tuple)):
    return [int(t) for t in text]
  try:
    return [int(t) for t in str(text).replace(' ', '').split(',') if t]
  except ValueError:
    raise UserError(f'{flag}: expected comma-separated integers, got {text!r}') from None


def parse_amounts(text: Optional[str], flag: str, default: np.ndarray) -> np.ndarray:
  """'start:stop:step' (stop included) or comma-separated numbers; default if None."""
  if text is None:
    return np.asarray(default, np.float32)
  try:
    if ':' in text:
      start, stop, step = (float(t) for t in text.split(':'))
      if step <= 0:
        raise ValueError
      count = int(math.floor((stop - start) / step + 1e-6)) + 1
      values = start + step * np.arange(max(count, 0))
    else:
      values = np.asarray([float(t) for t in text.split(',') if t.strip()])
  except ValueError:
    raise UserError(f"{flag}: expected 'start:stop:step' (step > 0) or comma-separated "
                    f'numbers, got {text!r}') from None
  if not values.size:
    raise UserError(f'{flag}: no amounts in {text!r}')
  return values.astype(np.float32)


def conv_layers(session: Session, text: Optional[str], flag: str = '--layers',
                default: Optional[Sequence[str]] = None) -> list:
  """Layer names from a comma list, each a conv layer of the model."""
  from zfjax import architecture  # pylint: disable=g-import-not-at-top
  convs = list(architecture.conv_names(session.model.spec))
  layers = [t for t in (text or '').replace(' ', '').split(',') if t] or list(default or convs)
  for layer in layers:
    if layer not in convs:
      raise UserError(f'{flag}: layer {layer!r} does not exist or has no projection; conv '
                      f'layers of this model: {", ".join(convs)}')
  return layers


def named_layers(session: Session, text: Optional[str], default: Sequence[str],
                 flag: str = '--layers') -> list:
  from zfjax import architecture  # pylint: disable=g-import-not-at-top
  names = list(architecture.layer_names(session.model.spec))
  layers = [t for t in (text or '').replace(' ', '').split(',') if t]
  if not layers:
    layers = [name for name in default if name in names] or [names[0], names[-2]]
  for layer in layers:
    if layer not in names:
      raise UserError(f'{flag}: layer {layer!r} does not exist; layers of this model: '
                      f'{", ".join(names)}')
  return layers


def choose_channels(session: Session, layer: str, text: Optional[str], count: int,
                    seed: int) -> np.ndarray:
  """--channels (checked against the layer's maps), else `count` random maps (sorted)."""
  from zfjax import architecture  # pylint: disable=g-import-not-at-top
  maps = architecture.layer(session.model.spec, layer).features
  if text:
    channels = parse_ints(text, '--channels')
    bad = [c for c in channels if not 0 <= c < maps]
    if bad:
      raise UserError(f'--channels: channel {bad[0]} does not exist in {layer}, which has '
                      f'{maps} maps (0..{maps - 1})')
    return np.asarray(channels, np.int32)
  if count < 1:
    raise UserError(f'--num-channels must be positive, got {count}')
  rng = np.random.default_rng([seed, sum(map(ord, layer))])
  return np.sort(rng.choice(maps, size=min(count, maps), replace=False)).astype(np.int32)


def default_patch(size: int) -> tuple[int, int]:
  """Occluder size and stride for an input size: 32 and 8 at 224; size/4, size/16 below
  128 pixels (small images of centred objects, like the digits)."""
  if size >= PHOTO_SIZE:
    return max(1, round(size / 7)), max(1, round(size / 28))
  return max(1, size // 4), max(1, size // 16)


def default_translations(size: int) -> np.ndarray:
  """The paper's -60..60 pixels at 224, scaled to the input, integer steps."""
  reach = max(1, round(60 * size / 224))
  step = max(1, round(5 * size / 224))
  return np.arange(-reach, reach + 1, step).astype(np.float32)


# ------------------------------------------------------------------------------ output


def plain(value):
  """JSON-ready: arrays to lists, numpy scalars to Python, non-finite floats to None."""
  if isinstance(value, dict):
    return {str(k): plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [plain(v) for v in value]
  if hasattr(value, 'tolist') and not isinstance(value, (str, bytes)):
    return plain(value.tolist())
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (np.floating,)):
    return plain(float(value))
  if isinstance(value, pathlib.Path):
    return str(value)
  return value


class Output:
  """The figures folder: PNG + JSON per figure, a manifest, and index.html."""

  def __init__(self, directory, session: Session, command_line: Sequence[str]):
    self.directory = pathlib.Path(directory)
    self.directory.mkdir(parents=True, exist_ok=True)
    self.session = session
    self.command_line = ' '.join(['visualize.py', *command_line])
    self.written = []

  def write(self, key: str, title: str, fig, numbers: dict, caption: str) -> pathlib.Path:
    from zfjax import plots  # pylint: disable=g-import-not-at-top
    png = self.directory / f'{key}.png'
    plots.save(fig, png)
    provenance = {
        'model': self.session.config.model, 'checkpoint': str(self.session.checkpoint),
        'step': self.session.step, 'dataset': self.session.config.dataset,
        'image_size': self.session.image_size, 'command': self.command_line,
        'notes': list(self.session.notes)}
    record = {'figure': png.name, 'title': title, 'caption': caption,
              'provenance': provenance, **numbers}
    (self.directory / f'{key}.json').write_text(json.dumps(plain(record), indent=1) + '\n')
    entries = [e for e in self._manifest() if e.get('key') != key]
    entries.append({'key': key, 'title': title, 'png': png.name, 'json': f'{key}.json',
                    'caption': caption, 'model': self.session.describe(),
                    'command': self.command_line})
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
  """index.html: every figure of the manifest whose PNG exists, with its caption, how it
  was made, and a link to its numbers (when that file exists). Every text is
  HTML-escaped and every link percent-encoded (then escaped), so captions and file names
  from a manifest cannot add markup; only plain file names inside `directory` are
  linked."""
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


# ---------------------------------------------------------------------------- analyses


def run_top9(args, session: Session, out: Output, progress: Progress) -> None:
  """Fig. 2: per layer, chosen maps' top-k projections beside their image patches."""
  from zfjax import plots, topk  # pylint: disable=g-import-not-at-top
  layers = conv_layers(session, args.layers)
  channels = {layer: choose_channels(session, layer, args.channels, args.num_channels,
                                     args.seed) for layer in layers}
  if args.k < 1:
    raise UserError(f'--k must be positive, got {args.k}')
  source = dataset_source(args, session, progress)
  progress(f'top9: searching the top {args.k} of {", ".join(layers)} over {source.description}')
  results = topk.search(session.model, session.variables, source.batches(), layers=layers,
                        k=args.k)
  images = topk.gather_images(source.batches(), [results[layer] for layer in layers])
  shown = topk.Images(images.example, images.image + session.mean)
  panels, numbers = [], {'layers': {}}
  for layer in layers:
    progress(f'top9: projecting {layer} ({len(channels[layer])} maps x {args.k})')
    result = results[layer]
    patches = topk.crops(session.model, result, shown, layer, channels=channels[layer])
    projections = topk.project(session.model, session.variables, result, images, layer,
                               channels=channels[layer], rule=args.rule)
    valid = np.asarray(patches.valid)
    panels.append(plots.TopKPanel(
        layer, channels[layer],
        plots.blank_outside(plots.signed_to_display(np.asarray(projections.pixels), gray=session.gray), valid),
        plots.blank_outside(np.clip(np.asarray(patches.pixels) / 255.0, 0, 1), valid)))
    pick = lambda a, layer=layer: np.asarray(a)[channels[layer]]
    example = pick(result.example)
    numbers['layers'][layer] = {
        'channels': channels[layer], 'values': pick(result.values), 'example': example,
        'y': pick(result.y), 'x': pick(result.x), 'window_size': int(valid.shape[-1]),
        'window_top': np.asarray(patches.top), 'window_left': np.asarray(patches.left),
        'label': [[source.labels[e] if 0 <= e < len(source.labels) else None for e in row]
                  for row in example.tolist()]}
  progress('top9: drawing')
  chosen = (f'maps {args.channels}' if args.channels
            else f'{args.num_channels} random maps per layer (seed {args.seed})')
  caption = (f'Fig. 2. For {", ".join(layers)}: {chosen}; for each map its top {args.k} '
             f'activations (at most one per image, strongest first, row by row within a '
             f'block) over {source.description}, each projected separately to pixel space '
             f'with the {args.rule} rule and cut to the unit\'s receptive-field window '
             f'(left), beside the image patches under the same windows (right; the mean '
             f'image added back). {PROJECTION_NOTE}')
  fig = plots.top_k_figure(panels, f'Top-{args.k} activations, {session.config.model} step '
                           f'{session.step}')
  numbers.update(k=args.k, rule=args.rule, dataset=source.description)
  out.write('top9', f'Fig. 2: top-{args.k} activations and their projections', fig, numbers,
            caption)


def run_evolution(args, session: Session, out: Output, progress: Progress) -> None:
  """Fig. 4: rows = checkpoints; columns = maps; the strongest activation, projected."""
  from zfjax import evolution, plots  # pylint: disable=g-import-not-at-top
  run_dir = session.checkpoint.parent
  steps = evolution.select_steps(evolution.checkpoint_steps(run_dir),
                                 parse_ints(args.steps, '--steps') if args.steps else None)
  layers = conv_layers(session, args.layers)
  channels = {layer: choose_channels(session, layer, args.channels, args.num_channels,
                                     args.seed) for layer in layers}
  source = dataset_source(args, session, progress)
  progress(f'evolution: {len(steps)} checkpoints {list(steps)}, maps of {", ".join(layers)}')
  result = evolution.evolution(
      session.model, evolution.load(run_dir, steps), source.batches, channels, args.rule,
      on_checkpoint=lambda step: progress(f'evolution: checkpoint {step}'))
  progress('evolution: drawing')
  columns, numbers = [], {'steps': result.steps, 'layers': {}}
  for layer in layers:
    strongest = result.layers[layer]
    shown = plots.blank_outside(plots.signed_to_display(strongest.projection, gray=session.gray), strongest.valid)
    for c, channel in enumerate(channels[layer]):
      columns.append((f'{layer} #{channel}', shown[:, c]))
    numbers['layers'][layer] = {'channels': channels[layer], 'value': strongest.value,
                                'example': strongest.example, 'y': strongest.y,
                                'x': strongest.x}
  rows = [row_label(session, step) for step in result.steps]
  fig = plots.evolution_figure(rows, columns, f'Feature evolution, {session.config.model}')
  chosen = (f'maps {args.channels}' if args.channels
            else f'{args.num_channels} random per layer, seed {args.seed}')
  caption = (f'Fig. 4. Rows: the checkpoints of the run in {run_dir} (steps '
             f'{", ".join(map(str, result.steps))}); columns: feature maps of '
             f'{", ".join(layers)} ({chosen}). '
             f'Each cell: the map\'s strongest activation over {source.description} at that '
             f'checkpoint (top-1 search), projected with the {args.rule} rule, in its '
             f'receptive-field window. {PROJECTION_NOTE}')
  numbers.update(rule=args.rule, dataset=source.description)
  out.write('evolution', 'Fig. 4: evolution of features during training', fig, numbers,
            caption)


def row_label(session: Session, step: int) -> str:
  """'step S' and, for the in-memory digits, the epoch."""
  from zfjax import input_pipeline  # pylint: disable=g-import-not-at-top
  config = session.config
  if config.dataset == input_pipeline.DIGITS:
    train = input_pipeline.dataset_info(config).num_train
    return f'step {step}\n(epoch {step * config.batch_size / train:.1f})'
  return f'step {step}'


def run_invariance(args, session: Session, out: Output, progress: Progress) -> None:
  """Fig. 5: distances at two layers and P(true label) under three transforms."""
  from zfjax import invariance, plots  # pylint: disable=g-import-not-at-top
  layers = named_layers(session, args.layers, invariance.DEFAULT_LAYERS)
  examples = examples_for(args, session, progress, args.num_images)
  labels, how, _ = labels_for(args, session, examples)
  grids = {
      'vertical translation': (invariance.translate_vertical, 'pixels', parse_amounts(
          args.translations, '--translations', default_translations(session.image_size))),
      'scale': (invariance.scale, 'factor', parse_amounts(
          args.scales, '--scales', invariance.SCALE_FACTORS)),
      'rotation': (invariance.rotate, 'degrees', parse_amounts(
          args.rotations, '--rotations', invariance.ROTATION_DEGREES)),
  }
  panels, numbers = [], {'images': examples.names, 'labels': labels, 'layers': layers,
                         'transforms': {}}
  for name, (transform, unit, amounts) in grids.items():
    progress(f'invariance: {name}, {len(amounts)} amounts x {len(labels)} images')
    sweep = invariance.sweep(session.model, session.variables, examples.images, labels,
                             transform, amounts, layers=layers, fill=args.fill)
    picks = np.unique(np.linspace(0, len(amounts) - 1, min(5, len(amounts))).round().astype(int))
    strip = np.stack([np.asarray(transform(examples.images[0], amounts[i], args.fill))
                      for i in picks])
    panels.append(plots.SweepPanel(
        name, unit, np.asarray(sweep.amounts),
        {layer: np.asarray(sweep.distance[layer]) for layer in layers},
        np.asarray(sweep.probability), plots.image_to_display(strip, session.mean),
        [float(amounts[i]) for i in picks]))
    numbers['transforms'][name] = {
        'unit': unit, 'amounts': sweep.amounts,
        'distance': {layer: sweep.distance[layer] for layer in layers},
        'probability': sweep.probability, 'top_class': sweep.top_class}
  progress('invariance: drawing')
  fig = plots.invariance_figure(panels, examples.names, layers,
                                f'Invariance, {session.config.model} step {session.step}')
  caption = (f'Fig. 5. {len(labels)} images ({examples.description}) under vertical '
             f'translation, scaling about the centre and rotation about the centre (bilinear '
             f'resampling, uncovered pixels set to {args.fill:g} in the mean-subtracted '
             f'input, i.e. the mean image). Left: the first image at a few amounts. Then the '
             f'Euclidean distance between the feature vectors (flattened post-ReLU outputs) '
             f'of the original and the transformed image at {" and ".join(layers)}, and the '
             f'probability of the true label, one curve per image. Labels: {how}.')
  numbers['label_source'] = how
  out.write('invariance', 'Fig. 5: invariance to translation, scale and rotation', fig,
            numbers, caption)


def run_occlusion(args, session: Session, out: Output, progress: Progress) -> None:
  """Fig. 7: occlusion maps (b)-(e) for a few images."""
  from zfjax import architecture, occlusion, plots  # pylint: disable=g-import-not-at-top
  layer = conv_layers(session, args.layer, '--layer',
                      architecture.conv_names(session.model.spec)[-1:])
  if len(layer) != 1:
    raise UserError(f'--layer: give one conv layer, got {args.layer!r}')
  layer = layer[0]
  patch, stride = default_patch(session.image_size)
  patch, stride = args.patch or patch, args.stride or stride
  if not 1 <= patch <= session.image_size or stride < 1:
    raise UserError(f'--patch must be in 1..{session.image_size} and --stride positive, got '
                    f'{patch} and {stride}')
  examples = examples_for(args, session, progress, args.num_images)
  labels, how, kind = labels_for(args, session, examples)
  rows, numbers = [], {'images': examples.names, 'labels': labels, 'patch': patch,
                       'stride': stride, 'fill': args.fill, 'layer': layer, 'maps': []}
  names = class_names(session)
  for image, label, name in zip(examples.images, labels, examples.names):
    progress(f'occlusion: {name} (label {label}), patch {patch}, stride {stride}')
    maps = occlusion.sensitivity(session.model, session.variables, image, int(label),
                                 patch=patch, stride=stride, fill=args.fill, layer=layer)
    rows.append(plots.OcclusionRow(
        name, plots.image_to_display(image, session.mean), np.asarray(maps.feature),
        plots.signed_to_display(np.asarray(maps.projection), gray=session.gray), np.asarray(maps.prob),
        np.asarray(maps.top_class), int(label), int(maps.channel), layer, patch, stride,
        names, kind))
    numbers['maps'].append({
        'image': name, 'label': int(label), 'channel': int(maps.channel),
        'prob': maps.prob, 'top_class': maps.top_class, 'feature': maps.feature,
        'unoccluded_prob': float(maps.unoccluded_prob),
        'unoccluded_feature': float(maps.unoccluded_feature)})
  progress('occlusion: drawing')
  fig = plots.occlusion_figure(rows, f'Occlusion, {session.config.model} step {session.step}')
  caption = (f'Fig. 7. {len(rows)} images ({examples.description}); a {patch}x{patch} square '
             f'of value {args.fill:g} in the mean-subtracted input (the mean image: the '
             f"paper's gray square) slid with stride {stride} (shown at top left of (a)). Each "
             f'map cell sits at the centre of its occluder position. (b) summed activity of '
             f'the {layer} map holding the unoccluded image\'s strongest {layer} activation; '
             f'(c) that activation projected with the deconvnet (p / (2 max|p|) + 0.5); (d) '
             f'probability of the correct class; (e) most probable class. Labels: {how}.')
  numbers['label_source'] = how
  out.write('occlusion', 'Fig. 7: occlusion sensitivity', fig, numbers, caption)


def class_names(session: Session) -> list:
  return [str(i) for i in range(session.num_classes)]


def load_boxes(text: str) -> dict:
  """--boxes: a JSON file or JSON text {part: [[row, col, height, width], ...]}."""
  source = text
  if os.path.exists(text):
    source = pathlib.Path(text).read_text()
  try:
    parts = json.loads(source)
  except ValueError:
    raise UserError('--boxes: expected a JSON file or JSON text like {"right eye": [[row, col, '
                    'height, width], ...one per image]}') from None
  if not isinstance(parts, dict) or not parts:
    raise UserError('--boxes: expected a JSON object {part name: [[row, col, height, width], '
                    '...one per image]}')
  return {str(name): np.asarray(boxes) for name, boxes in parts.items()}


def digit_parts(size: int, count: int) -> dict:
  """The same three boxes (top, centre, bottom band of the centred digit) in every image."""
  box = max(2, size // 4)
  col = (size - box) // 2
  rows = {'top': size // 8, 'centre': (size - box) // 2, 'bottom': size - size // 8 - box}
  return {name: np.tile([[row, col, box, box]], (count, 1)) for name, row in rows.items()}


def run_correspondence(args, session: Session, out: Output, progress: Progress) -> None:
  """Table 1: Delta per layer for occluded parts and for random occlusions."""
  import jax  # pylint: disable=g-import-not-at-top
  from zfjax import correspondence, plots  # pylint: disable=g-import-not-at-top
  layers = named_layers(session, args.layers, correspondence.DEFAULT_LAYERS)
  if args.boxes:
    parts = load_boxes(args.boxes)
    examples = examples_for(args, session, progress, len(next(iter(parts.values()))),
                            args.digit_class)
    how = f'boxes given with --boxes ({args.boxes})'
  elif args.images or session.photo_sized:
    raise Skip('correspondence on photos needs --boxes: the same part (e.g. an eye) boxed '
               'in each image, as JSON {"part": [[row, col, height, width], ...one per '
               'image]} in the pixels of the preprocessed (center-cropped) input')
  else:
    examples = examples_for(args, session, progress, args.num_images, args.digit_class)
    parts = digit_parts(session.image_size, len(examples.images))
    how = (f'the same box in every image: {len(examples.images)} test images of class '
           f'{args.digit_class} (the digits are centred and size-normalized, so a box covers '
           f'about the same part of each digit)')
  if len(examples.images) < 2:
    raise UserError('correspondence needs at least 2 images')
  progress(f'correspondence: {len(parts)} parts + {args.num_random} random draws, '
           f'{len(examples.images)} images, layers {", ".join(layers)}')
  table = correspondence.table(session.model, session.variables, examples.images, parts,
                               layers=layers, fill=args.fill, num_random=args.num_random,
                               key=jax.random.key(args.seed))
  progress('correspondence: drawing')
  shown = plots.image_to_display(examples.images, session.mean)
  fig = plots.table_figure(table['rows'], [f'Delta at {layer}' for layer in layers],
                           np.asarray(table['mean']), np.asarray(table['std']),
                           f'Correspondence (Table 1), {session.config.model} step '
                           f'{session.step}', images=shown, boxes=parts)
  caption = (f'Table 1. {len(examples.images)} images ({examples.description}); parts: '
             f'{how}. Each part is occluded (value {args.fill:g}: the mean image) in every '
             f'image; eps_i is the change of the flattened feature vector at each layer, and '
             f'Delta the mean over pairs i != j of the fraction of coordinates where sign(eps_i)'
             f' and sign(eps_j) differ (signs -1, 0, +1). Parts: Delta +- its spread over the '
             f'pairs; random: the mean +- std over {args.num_random} draws of boxes of the first'
             f' part\'s size at random positions (seed {args.seed}). Lower = more consistent. '
             f'The paper (dogs, ImageNet): layer 5 about 0.07 for parts vs 0.107 random; '
             f'layer 7 0.07 vs 0.073.')
  numbers = {'rows': table['rows'], 'columns': table['columns'], 'mean': table['mean'],
             'std': table['std'], 'boxes': parts, 'images': examples.names,
             'num_random': args.num_random, 'seed': args.seed, 'fill': args.fill}
  out.write('correspondence', 'Table 1: correspondence of parts across images', fig,
            numbers, caption)


def run_filters(args, session: Session, out: Output, progress: Progress) -> None:
  """Fig. 6: layer-1 filters, their RMS, and layer-2 features, one column per checkpoint."""
  from zfjax import architecture, filters, plots  # pylint: disable=g-import-not-at-top
  sessions = [session]
  if args.compare:
    kind = 'workdir' if (pathlib.Path(args.compare) / 'checkpoints').is_dir() else 'checkpoint'
    sessions.append(load_session(args.compare, kind, parse_step(args.compare_step), progress))
  names = [t.strip() for t in args.names.split(',')] if args.names else []
  if names and len(names) != len(sessions):
    raise UserError(f'--names: give {len(sessions)} names (one per checkpoint), got '
                    f'{len(names)}')
  panels, numbers = [], {'checkpoints': []}
  for i, current in enumerate(sessions):
    convs = architecture.conv_names(current.model.spec)
    layer = conv_layers(current, args.layer, '--layer', convs[:1])[0]
    features_layer = conv_layers(current, args.features_layer, '--features-layer',
                                 convs[1:2] or convs[:1])[0]
    channels = choose_channels(current, features_layer, args.channels, args.num_features,
                               args.seed)
    radius = float(current.config.get('filter_rms_radius', 0) or 0)
    name = names[i] if names else (f'{current.config.model} step {current.step}, ' + (
        f'renormalized to RMS {radius:g}' if radius > 0 else 'no renormalization'))
    batches = None
    source_text = 'no dataset (--no-features)'
    if not args.no_features:
      source = dataset_source(args, current, progress)
      batches, source_text = source.batches, source.description
    progress(f'filters: {name}: {layer} filters, {features_layer} features over {source_text}')
    summary = filters.summarize(current.model, current.variables, batches, layer,
                                features_layer, channels, rule=args.rule)
    bank = summary.filters
    if bank.shape[-1] != 3:
      bank = np.repeat(bank.mean(-1, keepdims=True), 3, axis=-1)
    features = None
    if summary.features is not None:
      features = plots.blank_outside(plots.signed_to_display(summary.features.projection,
                                                         gray=session.gray),
                                     summary.features.valid)
    panels.append(plots.FilterPanel(
        f'{name}\n{layer}: {bank.shape[0]} filters {bank.shape[1]}x{bank.shape[2]}',
        plots.signed_to_display(bank, gray=session.gray), summary.rms, radius or None, features,
        f'{features_layer} features (strongest activation per map, projected)'))
    numbers['checkpoints'].append({'name': name, 'checkpoint': current.checkpoint,
                                   'step': current.step, 'model': current.config.model,
                                   'filter_rms_radius': radius, 'dataset': source_text,
                                   **filters.statistics(summary)})
  progress('filters: drawing')
  fig = plots.filters_figure(panels, 'Layer-1 filters and layer-2 features')
  columns = '; '.join(entry['name'] for entry in numbers['checkpoints'])
  chosen = (f'maps {args.channels}' if args.channels
            else f'{args.num_features} random maps, seed {args.seed}')
  caption = (f'Fig. 6. One column per checkpoint ({columns}). '
             f'Top: the first layer\'s filters, each scaled on its own (w / (2 max|w|) + '
             f'0.5, zero = gray). Middle: each filter\'s RMS, with the renormalization radius '
             f'(dashed) the trainer clips it to. Bottom: maps of the second conv layer '
             f'({chosen}), '
             f'each at its strongest activation over the dataset, projected with the '
             f'{args.rule} rule. The JSON adds per-filter high-frequency energy (aliasing) '
             f'and the filters that never activate on the dataset (dead). {PROJECTION_NOTE}')
  out.write('filters', 'Fig. 6: layer-1 filters and layer-2 features', fig, numbers, caption)


RUNNERS = {'top9': run_top9, 'evolution': run_evolution, 'invariance': run_invariance,
           'filters': run_filters, 'occlusion': run_occlusion,
           'correspondence': run_correspondence}


# ---------------------------------------------------------------------------- the CLI


class Parser(argparse.ArgumentParser):
  """An ArgumentParser whose errors are one line on stderr and exit status 2."""

  def error(self, message):
    self.exit(2, f'{self.prog}: error: {message} (see {self.prog} --help)\n')


def common_options() -> argparse.ArgumentParser:
  parent = argparse.ArgumentParser(add_help=False)
  where = parent.add_argument_group('checkpoint')
  where.add_argument('--workdir', help='a train.py workdir (its latest checkpoint)')
  where.add_argument('--checkpoint', help='a checkpoint directory (<workdir>/checkpoints/<step>)')
  where.add_argument('--step', default='latest',
                     help="which checkpoint of a workdir: 'latest', 'best' or a step")
  parent.add_argument('--out', help='output folder (default: WORKDIR/figures, else ./figures)')
  data = parent.add_argument_group('images')
  data.add_argument('--images', nargs='+', metavar='FILE',
                    help='image files to use instead of the default images')
  data.add_argument('--split', help="dataset split (default: the config's eval_split)")
  data.add_argument('--max-examples', type=int, default=0,
                    help='use only the first N examples of the split (0: all)')
  parent.add_argument('--rule', default='deconvnet', choices=('deconvnet', 'guided', 'backprop'),
                      help='projection rule (the paper: deconvnet)')
  parent.add_argument('--seed', type=int, default=0, help='seed of random choices')
  return parent


def add_top9(parser):
  parser.add_argument('--layers', help='comma-separated conv layers (default: all)')
  parser.add_argument('--channels', help='comma-separated maps (default: a random subset)')
  parser.add_argument('--num-channels', type=int, default=9, help='random maps per layer')
  parser.add_argument('--k', type=int, default=9, help='activations per map')


def add_evolution(parser):
  parser.add_argument('--steps', help='comma-separated checkpoint steps (default: all kept)')
  parser.add_argument('--layers', help='comma-separated conv layers (default: all)')
  parser.add_argument('--channels', help='comma-separated maps (default: a random subset)')
  parser.add_argument('--num-channels', type=int, default=3, help='random maps per layer')


def add_invariance(parser):
  parser.add_argument('--num-images', type=int, default=5)
  parser.add_argument('--label', help='true label(s): one, or comma-separated per image')
  parser.add_argument('--layers', help='two layers to compare (default: conv1,fc7)')
  parser.add_argument('--translations', help="pixels, 'start:stop:step' or a comma list; "
                      "write --translations=-8:8:1 when it starts with '-' (default: the "
                      "paper's +-60 step 5, scaled to the input size)")
  parser.add_argument('--scales', help='factors (default 1.0:1.8:0.05)')
  parser.add_argument('--rotations', help='degrees (default 0:350:10)')
  parser.add_argument('--fill', type=float, default=0.0, help='value of uncovered pixels')


def add_occlusion(parser):
  parser.add_argument('--num-images', type=int, default=3)
  parser.add_argument('--label', help='correct class(es): one, or comma-separated per image')
  parser.add_argument('--patch', type=int, help='occluder size (default: 32 at 224 px, 8 at 32)')
  parser.add_argument('--stride', type=int, help='occluder stride (default: 8 at 224, 2 at 32)')
  parser.add_argument('--fill', type=float, default=0.0, help='occluder value (0: the mean)')
  parser.add_argument('--layer', help='feature layer of panels (b), (c) (default: last conv)')


def add_correspondence(parser):
  parser.add_argument('--boxes', help='JSON file or text {part: [[row, col, h, w], ...]}, one '
                      'box per image (needed for photos)')
  parser.add_argument('--num-images', type=int, default=5)
  parser.add_argument('--digit-class', type=int, default=0,
                      help='digits: the class whose images share the boxes')
  parser.add_argument('--layers', help='layers (default: conv5,fc7)')
  parser.add_argument('--num-random', type=int, default=10, help='random draws')
  parser.add_argument('--fill', type=float, default=0.0, help='occluder value (0: the mean)')


def add_filters(parser):
  parser.add_argument('--compare', help='a second workdir or checkpoint to show beside')
  parser.add_argument('--compare-step', default='latest', help='step of --compare')
  parser.add_argument('--names', help='comma-separated column titles')
  parser.add_argument('--layer', help='layer of the filters (default: the first conv)')
  parser.add_argument('--features-layer', help='layer of the features (default: the 2nd conv)')
  parser.add_argument('--channels', help='comma-separated feature maps (default: random)')
  parser.add_argument('--num-features', type=int, default=16, help='random feature maps')
  parser.add_argument('--no-features', action='store_true', help='filters only (no dataset)')


ADDERS = {'top9': add_top9, 'evolution': add_evolution, 'invariance': add_invariance,
          'filters': add_filters, 'occlusion': add_occlusion,
          'correspondence': add_correspondence}
HELP = {'top9': 'Fig. 2: top-9 activations per map, projected, beside image patches',
        'evolution': 'Fig. 4: strongest activation per map at each checkpoint',
        'invariance': 'Fig. 5: distances and probability under translation, scale, rotation',
        'filters': 'Fig. 6: layer-1 filters, RMS and layer-2 features of one or two nets',
        'occlusion': 'Fig. 7: occlusion sensitivity maps',
        'correspondence': 'Table 1: correspondence of occluded parts across images',
        'all': 'every figure with its defaults'}


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
  parser = Parser(prog='visualize.py', description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest='command', metavar='COMMAND', parser_class=Parser)
  common = common_options()
  subparsers = {}
  for name in COMMANDS:
    sub = commands.add_parser(name, parents=[common], help=HELP[name], description=HELP[name])
    ADDERS[name](sub)
    subparsers[name] = sub
  every = commands.add_parser('all', parents=[common], help=HELP['all'],
                              description=HELP['all'])
  every.add_argument('--boxes', help='correspondence boxes (needed for photo-sized models)')
  every.add_argument('--compare', help='filters: a second workdir or checkpoint')
  every.add_argument('--skip', default='', help='comma-separated analyses to leave out')
  return parser, subparsers


def defaults_for(name: str, subparsers: dict, args) -> argparse.Namespace:
  """A subcommand's default options with the shared ones (and matching ones) of `args`."""
  ns = subparsers[name].parse_args([])
  for key, value in vars(args).items():
    if key in vars(ns) and key != 'command':
      setattr(ns, key, value)
  return ns


def run(args, subparsers: dict, argv: Sequence[str], progress: Progress) -> None:
  session = session_from_args(args, progress)
  for note in session.notes:
    progress.note(note)
  progress(f'loaded {session.describe()}')
  out_dir = args.out or (pathlib.Path(args.workdir) / 'figures' if args.workdir else 'figures')
  out = Output(out_dir, session, argv)
  if args.command != 'all':
    RUNNERS[args.command](args, session, out, progress)
  else:
    skip = {t.strip() for t in args.skip.split(',') if t.strip()}
    unknown = skip - set(COMMANDS)
    if unknown:
      raise UserError(f'--skip: unknown analyses {sorted(unknown)}; choose from {COMMANDS}')
    for name in COMMANDS:
      if name in skip:
        continue
      progress(f'== {name}')
      try:
        RUNNERS[name](defaults_for(name, subparsers, args), session, out, progress)
      except Skip as reason:
        progress.note(f'{name} skipped: {reason}')
  if args.command != 'all' and not out.written:
    return
  progress(f'done: {len(out.written)} figure(s) and index.html in {out.directory}')


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  parser, subparsers = build_parser()
  try:
    args = parser.parse_args(argv)
  except SystemExit as done:
    return int(done.code or 0)
  if not args.command:
    print('visualize.py: error: choose a command: ' + ', '.join((*COMMANDS, 'all')),
          file=sys.stderr)
    return 2
  progress = Progress()
  logging.getLogger('absl').setLevel(logging.ERROR)  # Orbax's read-only notices
  try:
    from zfjax import input_pipeline  # pylint: disable=g-import-not-at-top
    run(args, subparsers, argv, progress)
  except Skip as reason:
    print(f'visualize.py {args.command}: error: {reason}', file=sys.stderr)
    return 2
  except (ValueError, FileNotFoundError, NotADirectoryError,
          input_pipeline.DatasetUnavailableError) as error:
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    print(f'visualize.py {args.command}: error: {message}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
