"""Where the figures' images come from: image files, sample photos, or the net's dataset.

    chosen = examples.for_net(net, count=3)                  # per-image figures
    chosen = examples.for_net(net, images=['cat.jpg'])       # files, made as the net's input
    data = examples.image_set(net, max_examples=500)         # dataset-wide figures
    for batch in data.batches(): ...                         # {'image', 'label', 'mask'}

Per-image figures (occlusion, invariance, correspondence) take `Examples`: the given
images, else scikit-image's sample photos when the net takes photo-sized inputs, else the
first examples of the net's evaluation split (distinct classes where possible).
Dataset-wide figures (top9, evolution, filters) take an `ImageSet`: the evaluation split
through zfjax.input_pipeline (capped by `max_examples`), or the given images; a
photo-sized net whose dataset is not on this machine gets the sample photos, with a note.
Image files are made into the net's input as its evaluation makes them (`Loaded.input`).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np

from zfjax import extras
from zfjax import input_pipeline
from zfjax import loading
from zfjax import preprocess
from zfjax.report import options

PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket', 'cat')
BATCH = 64  # rows per batch of an ImageSet made of arrays
Log = Callable[[str], None]
Images = Union[None, Sequence[Union[str, os.PathLike]], np.ndarray, 'Examples']


def silent(message: str) -> None:
  """A log that drops its messages (the figures' default)."""
  del message


@dataclasses.dataclass
class Examples:
  """Images for the per-image figures, in the net's input space."""
  images: np.ndarray             # (N, H, W, 3)
  labels: Optional[np.ndarray]   # (N,) true labels, or None
  names: list
  description: str


@dataclasses.dataclass
class ImageSet:
  """A dataset for the dataset-wide figures.

  `batches()` returns a fresh iterator of {'image', 'label', 'mask'} dicts; `labels`
  fills in (the valid rows' labels, in order) as the first pass streams.
  """
  batches: Callable[[], Iterator[dict]]
  description: str
  labels: list


# ------------------------------------------------------------------------ per image


def from_files(net: loading.Loaded, paths: Sequence[Union[str, os.PathLike]],
               log: Log = silent) -> Examples:
  """Image files as the net's inputs; a note is logged for each converted file.

  Grayscale is tiled to RGB and an alpha channel dropped (zfjax.preprocess.read_image).
  """
  images, names = [], []
  for path in paths:
    try:
      rgb, note = preprocess.read_image(path, 'images')
    except ValueError as error:
      raise options.FigureError(str(error)) from None
    if note:
      log(f'note: {note}')
    images.append(net.input(rgb))
    names.append(pathlib.Path(path).name)
  if not images:
    raise options.FigureError('images: no image files given')
  return Examples(np.stack(images), None, names, f'image files {", ".join(names)}')


def from_arrays(images: np.ndarray, labels: Optional[Sequence[int]] = None) -> Examples:
  """(N, H, W, 3) arrays already in the net's input space."""
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[-1] != 3 or not len(images):
    raise options.FigureError(f'images: expected (N, H, W, 3) model inputs, got shape '
                              f'{images.shape}')
  names = [f'#{i}' for i in range(len(images))]
  return Examples(images, None if labels is None else np.asarray(labels, np.int32), names,
                  f'{len(images)} given images')


def sample_photos(net: loading.Loaded, count: int) -> Examples:
  """`count` of scikit-image's sample photos (cycled), as the net's inputs."""
  data = extras.require('skimage.data', 'train', "scikit-image's sample photos")
  names = [PHOTOS[i % len(PHOTOS)] for i in range(count)]
  images = np.stack([net.input(getattr(data, name)()) for name in names])
  return Examples(images, None, names, f"scikit-image's sample photos ({', '.join(names)})")


def first_examples(net: loading.Loaded, count: int, split: Optional[str] = None,
                   digit_class: Optional[int] = None) -> Examples:
  """The first `count` examples of the evaluation split, with their labels.

  Distinct classes while there are unseen ones; with `digit_class`, all of that class.
  """
  images, labels, rows, spare, seen = [], [], [], [], set()
  number = 0
  for batch in evaluation_batches(net.config, split):
    for image, label, valid in zip(batch['image'], batch['label'], batch['mask']):
      if not valid:
        continue
      label = int(label)
      if digit_class is None and label in seen:
        spare.append((image, label, number))
      elif digit_class is None or label == digit_class:
        seen.add(label)
        images.append(image), labels.append(label), rows.append(number)
      number += 1
      if len(images) >= count:
        break
    if len(images) >= count:
      break
  for image, label, number in spare[:max(0, count - len(images))]:
    images.append(image), labels.append(label), rows.append(number)
  if not images:
    what = f'of class {digit_class} ' if digit_class is not None else ''
    raise options.FigureError(f'no examples {what}in the {net.config.dataset} evaluation '
                              'split')
  names = [f'#{r} ({label})' for r, label in zip(rows, labels)]
  split_name = split or net.config.get('eval_split', 'test')
  return Examples(np.stack(images).astype(np.float32), np.asarray(labels, np.int32), names,
                  f'{net.config.dataset} {split_name} split, examples {rows}')


def for_net(net: loading.Loaded, images: Images = None, count: int = 5,
            split: Optional[str] = None, digit_class: Optional[int] = None,
            log: Log = silent) -> Examples:
  """The images of a per-image figure: `images`, else photos or the dataset's first.

  `images`: None, image file paths, (N, H, W, 3) model inputs or `Examples`. None gives
  the sample photos for a photo-sized net, else the evaluation split's first examples.
  """
  if isinstance(images, Examples):
    return images
  if isinstance(images, np.ndarray):
    return from_arrays(images)
  if images is not None:
    return from_files(net, images, log)
  options.positive(count, 'num_images')
  if options.photo_sized(net):
    return sample_photos(net, count)
  return first_examples(net, count, split, digit_class)


# --------------------------------------------------------------------- dataset-wide


def evaluation_batches(config, split: Optional[str]) -> Iterator[dict]:
  """The evaluation split's batches in this process, center crops."""
  return input_pipeline.eval_batches(config, split=split, process_index=0, process_count=1)


def image_set(net: loading.Loaded, images: Union[Images, ImageSet] = None,
              split: Optional[str] = None, max_examples: Optional[int] = None,
              log: Log = silent, photos_instead: bool = True) -> ImageSet:
  """The data of a dataset-wide figure: `images`, else the evaluation split.

  `max_examples` (None: all) caps either. A photo-sized net whose dataset is not on this
  machine gets the sample photos instead, with a note in the log (unless
  `photos_instead` is False); other nets raise DatasetUnavailableError.
  """
  cap = options.positive(max_examples, 'max_examples') or 0
  if isinstance(images, ImageSet):
    return images
  if images is not None:
    return _array_set(for_net(net, images, log=log), cap)
  config = net.config
  try:
    if net.dataset_error:
      raise input_pipeline.DatasetUnavailableError(net.dataset_error)
    first = evaluation_batches(config, split)
  except input_pipeline.DatasetUnavailableError:
    if not (photos_instead and options.photo_sized(net)):
      raise
    log(f'note: {config.dataset} is not available here; using the sample photos instead '
        '(pass image files for your own)')
    return _array_set(sample_photos(net, len(PHOTOS)), cap)
  labels, pending = [], [first]

  def batches() -> Iterator[dict]:
    stream = pending.pop() if pending else evaluation_batches(config, split)
    return _capped(stream, cap, labels if not labels else None)

  split_name = split or config.get('eval_split', None) or 'evaluation'
  what = f'the first {cap} examples' if cap else 'all examples'
  return ImageSet(batches, f'{config.dataset} {split_name} split ({what})', labels)


def _capped(stream: Any, cap: int, labels: Optional[list]) -> Iterator[dict]:
  """Batches with rows past the first `cap` valid examples masked off (cap 0: all).

  The valid rows' labels are appended to `labels` when it is given.
  """
  seen = 0
  for batch in stream:
    mask = np.asarray(batch['mask'], bool).copy()
    if cap:
      number = seen + np.cumsum(mask)
      mask &= number <= cap
    seen += int(mask.sum())
    if labels is not None:
      labels.extend(int(label) for label in np.asarray(batch['label'])[mask])
    if mask.any():
      yield {'image': batch['image'], 'label': batch['label'], 'mask': mask}
    if cap and seen >= cap:
      return


def _array_set(chosen: Examples, cap: int) -> ImageSet:
  """Examples as an ImageSet (the first `cap` of them; cap 0: all)."""
  images = chosen.images[:cap] if cap else chosen.images
  labels = (chosen.labels[:len(images)] if chosen.labels is not None
            else np.full(len(images), -1, np.int32))

  def batches() -> Iterator[dict]:
    for start in range(0, len(images), BATCH):
      chunk = images[start:start + BATCH]
      yield {'image': chunk, 'label': labels[start:start + BATCH],
             'mask': np.ones(len(chunk), bool)}

  return ImageSet(batches, chosen.description, [int(label) for label in labels])
