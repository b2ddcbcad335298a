"""One picture -> a model's input, as the paper evaluates (and the figures read files).

    from zfjax import input_pipeline, preprocess
    mean = input_pipeline.mean_image(config)                   # (256, 256, 3), 0-255
    x = preprocess.preprocess('dog.jpg', mean)                 # (224, 224, 3) float32
    batch = preprocess.preprocess_batch([x0, x1], mean, size=32, resize=36)  # (2, 32, 32, 3)
    x = preprocess.model_input(photo, 'imagenet')              # an imported torch model's
    x = loading.load(workdir).input(photo)                     # whatever the net was fed

The kinds of picture and mean it takes, step by step: docs/preprocess.md.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Optional, Sequence

import numpy as np

SIZE = 224    # the model's input (the paper's 224 x 224 crop)
RESIZE = 256  # the shorter side before cropping (the paper's 256)

PAPER = 'paper'        # 0-255 RGB minus the training set's mean image (every zfjax run)
IMAGENET = 'imagenet'  # 0-1 RGB minus IMAGENET_MEAN, divided by IMAGENET_STD (torchvision)
NORMALIZATIONS = (PAPER, IMAGENET)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet channel means, 0-1 scale
IMAGENET_STD = (0.229, 0.224, 0.225)
# ImageNet's channel means on the 0-255 scale (Caffe's and VGG's): the stand-in for a
# training set's mean image that is not available here.
IMAGENET_MEAN_255 = (123.68, 116.78, 103.94)

# Pillow modes of integer data wider than 8 bits (16-bit PNGs, TIFFs): scaled to 0-255.
_WIDE_MODES = ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F')


# ------------------------------------------------------------------------------ reading


def read_image(path: Any, what: str = 'image') -> tuple[np.ndarray, Optional[str]]:
  """An image file as (h, w, 3) uint8 RGB, and a note when it had to be converted.

  An image file as (h, w, 3) uint8 RGB, and a note when it had to be converted
  (grayscale tiled, alpha dropped, another mode converted; it names the file), else
  None. ValueError starting with `what` (the argument's name) for a missing path, a
  directory, a file Pillow cannot read, or one too large to decode safely (Pillow's
  decompression-bomb limit)."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(path)
  if not path.exists():
    raise ValueError(f'{what}: {path} does not exist')
  if not path.is_file():
    raise ValueError(f'{what}: {path} is not a file')
  try:
    with Image.open(path) as image:
      image.load()
      return from_pil(image, str(path))
  except Image.DecompressionBombError as error:
    raise ValueError(f'{what}: {path} is too large to read safely ({error})') from None
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
    raise ValueError(f'{what}: {path} is not an image file that can be read '
                     f'({error})') from None


def from_pil(image, what: str = 'image') -> tuple[np.ndarray, Optional[str]]:
  """A PIL image as (h, w, 3) uint8 RGB, and a note saying how it was converted (or None).

  Palettes become their colours, 16-bit and float gray is scaled to 0-255, grayscale is
  tiled to RGB, alpha is dropped, other modes (CMYK, YCbCr, ...) go through Pillow's RGB
  conversion."""
  mode = image.mode
  if mode == 'P':  # a palette: its colours, with alpha if it has transparency
    image = image.convert('RGBA' if 'transparency' in image.info else 'RGB')
    mode = image.mode
  if mode in _WIDE_MODES:
    gray = np.asarray(image, np.float64)
    gray = gray / 257.0 if gray.max() > 255 else gray
    array = np.clip(gray, 0, 255).astype(np.uint8)
  else:
    array = np.asarray(image if mode in ('RGB', 'RGBA', 'L', 'LA') else image.convert('RGB'))
  note = None
  if array.ndim == 2:
    array = np.repeat(array[..., None], 3, axis=-1)
    note = f'{what}: grayscale ({mode}), tiled to RGB'
  elif mode == 'LA':
    array = np.repeat(array[..., :1], 3, axis=-1)
    note = f'{what}: grayscale with alpha (LA): alpha dropped, tiled to RGB'
  elif array.shape[-1] == 4:
    array = array[..., :3]
    note = f'{what}: RGBA: alpha channel dropped'
  elif mode != 'RGB':
    note = f'{what}: {mode} converted to RGB'
  if array.ndim != 3 or array.shape[-1] != 3 or 0 in array.shape:
    raise ValueError(f'{what}: cannot make an RGB image of shape {array.shape}')
  return np.ascontiguousarray(array, np.uint8), note


# ---------------------------------------------------------------------------- arrays


def to_rgb255(image: Any, what: str = 'image') -> np.ndarray:
  """Any picture docs/preprocess.md lists -> (h, w, 3) float32 RGB on the 0-255 scale.

  (h, w, 3) float32 RGB on the 0-255 scale from any `image` kind docs/preprocess.md lists
  (paths, PIL images, arrays); ValueError starting with `what` otherwise."""
  if isinstance(image, (str, os.PathLike)):
    return read_image(image, what)[0].astype(np.float32)
  if _is_pil(image):
    return from_pil(image, what)[0].astype(np.float32)
  if isinstance(image, (bytes, bytearray)):
    raise ValueError(f'{what}: got {type(image).__name__}; pass a path, a PIL image or an '
                     'array (decode bytes with PIL.Image.open(io.BytesIO(data)))')
  try:
    array = np.asarray(image)
  except (TypeError, ValueError) as error:
    raise ValueError(f'{what}: not an image array ({error})') from None
  if array.dtype == object or not (np.issubdtype(array.dtype, np.number)
                                   or array.dtype == bool):
    raise ValueError(f'{what}: expected a path, a PIL image or a numeric array, got '
                     f'{type(image).__name__} of dtype {array.dtype}')
  if np.issubdtype(array.dtype, np.complexfloating):
    raise ValueError(f'{what}: complex values ({array.dtype}) are not an image')
  return _array_to_rgb255(array, what)


def _is_pil(image: Any) -> bool:
  return type(image).__module__.startswith('PIL.') and hasattr(image, 'mode')


def _array_to_rgb255(array: np.ndarray, what: str) -> np.ndarray:
  """Shape and scale checks of an array picture (docs/preprocess.md), then RGB 0-255."""
  if array.ndim == 4:
    raise ValueError(f'{what}: rank 4 (shape {array.shape}) is a batch, not one image; use '
                     'preprocess_batch')
  if array.ndim not in (2, 3):
    raise ValueError(f'{what}: expected HxW or HxWxC (channels last), got shape '
                     f'{array.shape}')
  if array.ndim == 3 and array.shape[-1] not in (1, 3, 4):
    raise ValueError(f'{what}: {array.shape[-1]} channels (shape {array.shape}); expected 1 '
                     '(gray), 3 (RGB) or 4 (RGBA), channels last')
  if 0 in array.shape:
    raise ValueError(f'{what}: empty image (shape {array.shape})')
  if array.ndim == 2:
    array = array[..., None]
  if array.shape[-1] == 4:
    array = array[..., :3]  # alpha dropped
  if array.shape[-1] == 1:
    array = np.repeat(array, 3, axis=-1)
  values = array.astype(np.float64)
  if not np.isfinite(values).all():
    raise ValueError(f'{what}: has NaN or infinite values')
  low, high = float(values.min()), float(values.max())
  if array.dtype == bool or (np.issubdtype(array.dtype, np.floating) and high <= 1.0):
    values = values * 255.0  # 0-1
  if low < 0 or values.max() > 255:
    raise ValueError(f'{what}: values from {low:g} to {high:g} lie outside 0-255 (or 0-1 '
                     'for floats); pass pixels, not an already preprocessed image')
  return values.astype(np.float32)


def resize_shorter(rgb: np.ndarray, resize: int) -> np.ndarray:
  """Resizes a picture so that its shorter side is `resize`, aspect kept.

  (h, w, 3) float -> float32 with the shorter side `resize` and the other at least
  `resize` (aspect kept, rounded): Pillow's bilinear filter per channel in float32
  ('F' mode), which widens its support when shrinking (antialiased), as the pipeline's
  tf.image.resize(antialias=True). Already the right size: returned as float32."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  height, width = rgb.shape[:2]
  scale = resize / min(height, width)
  new = (max(resize, round(width * scale)), max(resize, round(height * scale)))  # (w, h)
  rgb = np.asarray(rgb, np.float32)
  if new == (width, height):
    return rgb
  channels = [np.asarray(Image.fromarray(np.ascontiguousarray(rgb[..., c]), mode='F')
                         .resize(new, Image.Resampling.BILINEAR), np.float32)
              for c in range(rgb.shape[-1])]
  return np.stack(channels, axis=-1)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """The central size x size window of an (H, W, ...) array.

  The central size x size window of an (H, W, ...) array (top-left of center when the
  margin is odd, as input_pipeline.crop_offsets)."""
  top = (image.shape[0] - size) // 2
  left = (image.shape[1] - size) // 2
  return image[top:top + size, left:left + size]


# ------------------------------------------------------------------------- preprocess


def check_sizes(size: Any, resize: Any) -> tuple[int, int]:
  """(size, resize) as ints; ValueError naming the argument unless 1 <= size <= resize."""
  for name, value in (('size', size), ('resize', resize)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f'{name}: expected a positive int, got {value!r}')
  if size > resize:
    raise ValueError(f'size: the crop ({size}) must not exceed resize ({resize})')
  return int(size), int(resize)


def check_mean(mean: Any, size: int, resize: int) -> Optional[np.ndarray]:
  """`mean` checked and converted to a float32 array.

  `mean` as a float32 array of shape (), (3,), (resize, resize, 3) or (size, size, 3)
  (None stays None); ValueError naming `mean` otherwise."""
  if mean is None:
    return None
  try:
    array = np.asarray(mean, np.float32)
  except (TypeError, ValueError) as error:
    raise ValueError(f'mean: not a number or an array of numbers ({error})') from None
  shapes = ((), (3,), (resize, resize, 3), (size, size, 3))
  if array.shape not in shapes:
    raise ValueError(f'mean: expected a scalar, 3 channel means, or a mean image of shape '
                     f'{(resize, resize, 3)} or {(size, size, 3)}; got shape {array.shape}')
  if not np.isfinite(array).all():
    raise ValueError('mean: has NaN or infinite values')
  return array


def preprocess(image: Any, mean: Any = None, *, size: int = SIZE,
               resize: int = RESIZE) -> np.ndarray:
  """(size, size, 3) float32 in the model's input space from one picture.

  RGB 0-255, shorter side to `resize`, central `resize` square, minus `mean`, central `size`
  crop. See docs/preprocess.md for the kinds of `image` and `mean` and the errors."""
  size, resize = check_sizes(size, resize)
  mean = check_mean(mean, size, resize)
  square = center_crop(resize_shorter(to_rgb255(image), resize), resize)
  if mean is not None and mean.shape == (resize, resize, 3):
    square = square - mean
  crop = center_crop(square, size)
  if mean is None:
    crop = crop - crop.mean(axis=(0, 1), dtype=np.float64).astype(np.float32)
  elif mean.shape != (resize, resize, 3):
    crop = crop - mean
  return np.ascontiguousarray(crop, np.float32)


def preprocess_batch(images: Sequence[Any], mean: Any = None, *, size: int = SIZE,
                     resize: int = RESIZE) -> np.ndarray:
  """(N, size, size, 3) float32.

  `preprocess` of each picture (any mix of the kinds it takes; an (N, H, W, C) array is N
  pictures). ValueError 'images[i]: ...' naming the picture that fails, or 'images: ...' for
  an empty or non-sequence argument."""
  size, resize = check_sizes(size, resize)
  mean = check_mean(mean, size, resize)
  if isinstance(images, (str, os.PathLike, bytes)) or _is_pil(images):
    raise ValueError('images: expected a sequence of pictures (for one, use preprocess)')
  if isinstance(images, np.ndarray) and images.ndim != 4:
    raise ValueError(f'images: expected (N, H, W, C) or a sequence of pictures, got an '
                     f'array of shape {images.shape} (for one picture, use preprocess)')
  try:
    pictures = list(images)
  except TypeError:
    raise ValueError(f'images: expected a sequence of pictures, got '
                     f'{type(images).__name__}') from None
  if not pictures:
    raise ValueError('images: no pictures')
  out = []
  for i, picture in enumerate(pictures):
    try:
      out.append(preprocess(picture, mean, size=size, resize=resize))
    except ValueError as error:
      message = str(error)
      message = message[len('image: '):] if message.startswith('image: ') else message
      raise ValueError(f'images[{i}]: {message}') from None
  return np.stack(out)


def model_input(image: Any, normalization: str = PAPER, mean: Any = None, *,
                size: int = SIZE, resize: int = RESIZE) -> np.ndarray:
  """One picture -> (size, size, 3) float32 in the input space a model was trained in.

  The same resizing and crops as `preprocess`. 'paper' subtracts `mean` (0-255; see
  `preprocess`); 'imagenet' scales to 0-1 and normalizes with IMAGENET_MEAN and
  IMAGENET_STD, as torchvision and pytorchcv feed their weights (`mean` must be None).
  `zfjax.loading.Loaded.input` calls this with a trained net's own normalization.
  """
  if normalization == PAPER:
    return preprocess(image, mean, size=size, resize=resize)
  if normalization != IMAGENET:
    raise ValueError(f'normalization: expected one of {NORMALIZATIONS}, got {normalization!r}')
  if mean is not None:
    raise ValueError("mean: 'imagenet' inputs are normalized with ImageNet's own mean and "
                     'std; pass mean=None')
  crop = preprocess(image, 0.0, size=size, resize=resize) / np.float32(255.0)
  return np.ascontiguousarray((crop - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD))


def to_display(x: np.ndarray, normalization: str = PAPER, mean: Any = 0.0) -> np.ndarray:
  """The inverse of `model_input`'s normalization: model inputs -> 0-255 RGB (float32).

  `mean` (paper inputs): the mean that was subtracted, broadcastable to `x` (a mean image
  cropped as the input, or channel means).
  """
  x = np.asarray(x, np.float32)
  if normalization == IMAGENET:
    return (x * np.float32(IMAGENET_STD) + np.float32(IMAGENET_MEAN)) * np.float32(255.0)
  if normalization != PAPER:
    raise ValueError(f'normalization: expected one of {NORMALIZATIONS}, got {normalization!r}')
  return x + np.asarray(mean, np.float32)
