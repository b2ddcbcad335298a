"""zfjax.preprocess: every kind of picture, the crops, the mean and bad input.

zfjax.preprocess: every kind of picture gives the same model input for the same
picture, grayscale is tiled, the crops are the paper's, `mean` is subtracted as
documented, and each input it cannot handle is a ValueError naming the argument."""

import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from zfjax import preprocess as pp

SIZE, RESIZE = 24, 32  # small crops keep these tests fast; the defaults are 224 and 256


def picture(height=40, width=52, seed=0):
  """A random (height, width, 3) uint8 picture (not square, so it is resized)."""
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def run(image, mean=0.0, **kwargs):
  return pp.preprocess(image, mean, **{'size': SIZE, 'resize': RESIZE, **kwargs})


# ------------------------------------------------------------------------ input kinds


def test_every_kind_of_the_same_picture_gives_the_same_input(tmp_path):
  rgb = picture()
  expected = run(rgb)
  assert expected.shape == (SIZE, SIZE, 3) and expected.dtype == np.float32
  alpha = np.random.default_rng(1).integers(0, 256, rgb.shape[:2] + (1,), dtype=np.uint8)
  rgba = np.concatenate([rgb, alpha], axis=-1)
  Image.fromarray(rgb).save(tmp_path / 'rgb.png')
  Image.fromarray(rgba, 'RGBA').save(tmp_path / 'rgba.png')
  kinds = {
      'float32 0-1': rgb.astype(np.float32) / 255,
      'float64 0-1': rgb / 255.0,
      'float 0-255': rgb.astype(np.float32),
      'int64 0-255': rgb.astype(np.int64),
      'jax array': jnp.asarray(rgb),
      'nested lists': rgb.tolist(),
      'RGBA array (alpha dropped)': rgba,
      'PIL RGB': Image.fromarray(rgb),
      'PIL RGBA': Image.fromarray(rgba, 'RGBA'),
      'path str': str(tmp_path / 'rgb.png'),
      'pathlib.Path': tmp_path / 'rgb.png',
      'RGBA file': tmp_path / 'rgba.png',
  }
  for kind, image in kinds.items():
    np.testing.assert_allclose(run(image), expected, rtol=0, atol=1e-4, err_msg=kind)
  np.testing.assert_array_equal(run(rgb / 255.0), expected)  # x / 255 * 255 is exact


def test_grayscale_is_tiled_to_rgb(tmp_path):
  gray = picture()[..., 0]
  expected = run(np.repeat(gray[..., None], 3, axis=-1))
  np.testing.assert_array_equal(expected[..., 0], expected[..., 1])
  Image.fromarray(gray, 'L').save(tmp_path / 'gray.png')
  two_channels = np.stack([gray, np.full_like(gray, 255)], axis=-1)
  Image.fromarray(two_channels, 'LA').save(tmp_path / 'gray_alpha.png')
  for kind, image in {'HxW': gray, 'HxWx1': gray[..., None], 'float HxW 0-1': gray / 255.0,
                      'PIL L': Image.fromarray(gray, 'L'), 'L file': tmp_path / 'gray.png',
                      'LA file': tmp_path / 'gray_alpha.png'}.items():
    np.testing.assert_allclose(run(image), expected, atol=1e-4, err_msg=kind)
  assert pp.read_image(tmp_path / 'gray.png')[1].endswith('grayscale (L), tiled to RGB')
  sixteen = (gray.astype(np.uint16) * 257)  # a 16-bit gray PNG reads as 0-255
  Image.fromarray(sixteen).save(tmp_path / 'gray16.png')
  np.testing.assert_allclose(run(tmp_path / 'gray16.png'), expected, atol=1e-3)


def test_bool_and_palette_pictures(tmp_path):
  mask = picture()[..., 0] > 127
  np.testing.assert_array_equal(run(mask), run(mask.astype(np.uint8) * 255))
  rgb = picture()
  Image.fromarray(rgb).convert('P', palette=Image.Palette.ADAPTIVE).save(tmp_path / 'p.png')
  assert run(tmp_path / 'p.png').shape == (SIZE, SIZE, 3)


# --------------------------------------------------------------------- crops and mean


def test_crops_are_the_center_of_the_shorter_side_resize():
  """No resampling when the shorter side already is `resize`.

  The output is the center square's center crop, pixel for pixel; a taller picture is
  cropped the other way."""
  wide = picture(RESIZE, RESIZE + 15)
  top, left = (RESIZE - SIZE) // 2, (RESIZE + 15 - RESIZE) // 2 + (RESIZE - SIZE) // 2
  np.testing.assert_array_equal(run(wide), wide[top:top + SIZE, left:left + SIZE])
  tall = np.swapaxes(wide, 0, 1)
  np.testing.assert_array_equal(run(tall), np.swapaxes(run(wide), 0, 1))
  # shrinking or enlarging: the shorter side becomes `resize` (a uniform picture stays so)
  for shape in ((100, 70, 3), (9, 13, 3), (1, 1, 3)):
    np.testing.assert_allclose(run(np.full(shape, 77, np.uint8)), 77.0, atol=1e-3)
  # the defaults: the paper's 256 -> 224
  assert pp.preprocess(picture(300, 400)).shape == (224, 224, 3)


def test_mean_kinds():
  rgb = picture()
  plain = run(rgb)  # mean 0: the 0-255 crop
  assert 0 <= plain.min() and plain.max() <= 255
  mean_image = np.random.default_rng(2).uniform(0, 255, (RESIZE, RESIZE, 3)).astype(np.float32)
  np.testing.assert_allclose(run(rgb, mean_image), plain - pp.center_crop(mean_image, SIZE),
                             atol=1e-4)
  small_mean = mean_image[:SIZE, :SIZE]
  np.testing.assert_allclose(run(rgb, small_mean), plain - small_mean, atol=1e-4)
  np.testing.assert_allclose(run(rgb, 100.0), plain - 100, atol=1e-4)
  channels = (120.0, 110.0, 100.0)
  np.testing.assert_allclose(run(rgb, channels), plain - np.asarray(channels), atol=1e-4)
  centered = run(rgb, None)  # default: the crop's own mean pixel
  np.testing.assert_allclose(centered.mean(axis=(0, 1)), 0.0, atol=1e-3)
  np.testing.assert_allclose(centered, plain - plain.mean(axis=(0, 1)), atol=1e-3)


def test_batch():
  pictures = [picture(seed=s) for s in range(3)]
  batch = pp.preprocess_batch(pictures, 0.0, size=SIZE, resize=RESIZE)
  assert batch.shape == (3, SIZE, SIZE, 3)
  for image, out in zip(pictures, batch):
    np.testing.assert_array_equal(out, run(image))
  stacked = pp.preprocess_batch(np.stack(pictures), 0.0, size=SIZE, resize=RESIZE)
  np.testing.assert_array_equal(stacked, batch)


# ------------------------------------------------------------------------- bad inputs


def bad_files(tmp_path: pathlib.Path) -> dict:
  (tmp_path / 'notes.png').write_text('not an image')
  Image.fromarray(picture()).save(tmp_path / 'whole.png')
  data = (tmp_path / 'whole.png').read_bytes()
  (tmp_path / 'cut.png').write_bytes(data[:len(data) // 2])
  (tmp_path / 'empty.jpg').write_bytes(b'')
  (tmp_path / 'folder.png').mkdir()
  return {'missing': tmp_path / 'missing.png', 'not an image': tmp_path / 'notes.png',
          'truncated': tmp_path / 'cut.png', 'empty file': tmp_path / 'empty.jpg',
          'directory': tmp_path / 'folder.png'}


BAD_IMAGES = {  # name -> (image, what the message says after 'image: ')
    'rank 4': (np.zeros((2, 8, 8, 3), np.uint8), 'rank 4'),
    'rank 1': (np.zeros(8, np.uint8), 'expected HxW or HxWxC'),
    'rank 0': (np.uint8(3), 'expected HxW or HxWxC'),
    'rank 5': (np.zeros((1, 1, 8, 8, 3)), 'expected HxW or HxWxC'),
    '2 channels': (np.zeros((8, 8, 2), np.uint8), '2 channels'),
    '5 channels': (np.zeros((8, 8, 5), np.uint8), '5 channels'),
    'channels first': (np.zeros((3, 16, 16), np.uint8), '16 channels'),
    'empty': (np.zeros((0, 8, 3), np.uint8), 'empty image'),
    'empty list': ([], 'expected HxW or HxWxC'),
    'NaN': (np.full((8, 8, 3), np.nan, np.float32), 'NaN or infinite'),
    'inf': (np.full((8, 8, 3), np.inf), 'NaN or infinite'),
    'negative (preprocessed)': (np.full((8, 8, 3), -20.0), 'outside 0-255'),
    'above 255': (np.full((8, 8, 3), 300.0), 'outside 0-255'),
    '16-bit integers': (np.full((8, 8, 3), 1000, np.uint16), 'outside 0-255'),
    'negative integers': (np.full((8, 8, 3), -1, np.int32), 'outside 0-255'),
    'complex': (np.zeros((8, 8, 3), np.complex64), 'complex'),
    'strings': (np.array([['a', 'b']]), 'numeric array'),
    'ragged lists': ([[1, 2], [3]], 'not an image array'),
    'None': (None, 'numeric array'),
    'dict': ({'image': 1}, 'numeric array'),
    'bytes': (b'\x89PNG', 'got bytes'),
}


@pytest.mark.parametrize('case', list(BAD_IMAGES))
def test_bad_image_is_a_value_error_naming_it(case):
  image, expected = BAD_IMAGES[case]
  with pytest.raises(ValueError, match='^image: ') as error:
    run(image)
  assert expected in str(error.value), str(error.value)


def test_bad_files_are_value_errors_naming_them(tmp_path):
  expected = {'missing': 'does not exist', 'not an image': 'not an image file',
              'truncated': 'not an image file', 'empty file': 'not an image file',
              'directory': 'is not a file'}
  for case, path in bad_files(tmp_path).items():
    for read in (run, pp.read_image):
      with pytest.raises(ValueError, match=f'^image: {path}') as error:
        read(path)
      assert expected[case] in str(error.value), (case, str(error.value))
  with pytest.raises(ValueError, match='^--images: '):
    pp.read_image(tmp_path / 'missing.png', '--images')


BAD_ARGUMENTS = [  # (keyword arguments of preprocess, the argument the message names)
    ({'mean': np.zeros(2)}, 'mean'), ({'mean': np.zeros((10, 10, 3))}, 'mean'),
    ({'mean': np.zeros((RESIZE, RESIZE))}, 'mean'), ({'mean': float('nan')}, 'mean'),
    ({'mean': 'gray'}, 'mean'), ({'mean': [[1, 2], [3]]}, 'mean'),
    ({'size': 0}, 'size'), ({'size': -3}, 'size'), ({'size': 2.5}, 'size'),
    ({'size': True}, 'size'), ({'size': '24'}, 'size'), ({'size': RESIZE + 1}, 'size'),
    ({'resize': 0}, 'resize'), ({'resize': None}, 'resize'), ({'resize': 32.0}, 'resize'),
]


@pytest.mark.parametrize('kwargs, name', BAD_ARGUMENTS)
def test_bad_arguments_name_themselves(kwargs, name):
  with pytest.raises(ValueError, match=f'^{name}: '):
    run(picture(), **kwargs)


def test_bad_batches(tmp_path):
  good = picture()
  cases = {'a path': (str(tmp_path), '^images: expected a sequence'),
           'a PIL image': (Image.fromarray(good), '^images: expected a sequence'),
           'one array': (good, r'^images: expected \(N, H, W, C\)'),
           'no pictures': ([], '^images: no pictures'),
           'not iterable': (5, '^images: expected a sequence'),
           'a bad picture': ([good, np.zeros((8, 8, 2))], r'^images\[1\]: 2 channels'),
           'a missing file': ([tmp_path / 'gone.png'], r'^images\[0\]: \S+ does not exist')}
  for case, (images, pattern) in cases.items():
    with pytest.raises(ValueError, match=pattern):
      pp.preprocess_batch(images, 0.0, size=SIZE, resize=RESIZE)
  with pytest.raises(ValueError, match='^size: '):
    pp.preprocess_batch([good], size=0)
  with pytest.raises(ValueError, match='^mean: '):
    pp.preprocess_batch([good], np.zeros(4))
