"""notebooks/quickstart.ipynb runs headless and its pytorchcv branch predicts pytorchcv's class.

Both branches run top to bottom with random weights (full tier: a kernel start and a
full-size ZFNet per run, about a minute each on two busy cores). The pytorchcv branch
(USE_PYTORCHCV, PRETRAINED = False: no download) must give the class that pytorchcv's own
model gives on its own input, made here without zfjax; so must preprocess.model_input on
each of scikit-image's photos (default tier, about 12 s).
"""

import pathlib
import re

import jax
import nbclient
import nbformat
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

# The model module itself: pytorchcv.model_provider imports every model, torchvision too.
from pytorchcv.models.zfnet import zfnet

from zfjax import interop, models, preprocess

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / 'notebooks' / 'quickstart.ipynb'
PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket', 'cat')  # scikit-image's photos
SEED = 0  # torch's seed for pytorchcv's random weights (pretrained=False, no download)


def run(notebook, tmp_path):
  """Executes `notebook` in place; its stream text (every code cell's outputs checked)."""
  nbclient.NotebookClient(notebook, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': str(tmp_path)}}).execute()
  outputs = [output for cell in notebook.cells if cell.cell_type == 'code'
             for output in cell.get('outputs', [])]
  assert not [o for o in outputs if o.output_type == 'error']
  images = [o for o in outputs if 'image/png' in o.get('data', {})]
  assert len(images) == 2                      # the three rules' grid, the occlusion panels
  text = ''.join(o.get('text', '') for o in outputs if o.output_type == 'stream')
  assert 'most probable class' in text and 'probability without occluder' in text
  return text


def set_flags(notebook, **lines):
  """Replaces each flag's line (`NAME = ...`) in the code cells; fails if one is missing."""
  for name, line in lines.items():
    pattern = re.compile(rf'^{name} = .*$', re.MULTILINE)
    cells = [cell for cell in notebook.cells
             if cell.cell_type == 'code' and pattern.search(cell.source)]
    assert len(cells) == 1, f'the notebook has no single line setting {name}'
    cells[0].source = pattern.sub(lambda _: line, cells[0].source, count=1)


def pytorchcv_zfnet():
  """pytorchcv's ZFNet with the random weights that torch's SEED gives (eval mode)."""
  torch.manual_seed(SEED)
  return zfnet(pretrained=False).eval()


def torch_input(photo):
  """(1, 3, 224, 224) torch input as torchvision's ImageNet transforms make it.

  Written here without zfjax: uint8 bilinear resize of the shorter side to 256 (the
  longer side truncated), central 224 crop (offsets rounded), 0-1, ImageNet mean and std.
  """
  image = Image.fromarray(photo)
  width, height = image.size
  scale = 256 / min(width, height)
  image = image.resize((max(256, int(width * scale)), max(256, int(height * scale))),
                       Image.Resampling.BILINEAR)
  x = np.asarray(image, np.float32) / 255
  top, left = round((x.shape[0] - 224) / 2), round((x.shape[1] - 224) / 2)
  x = x[top:top + 224, left:left + 224]
  x = (x - np.float32([0.485, 0.456, 0.406])) / np.float32([0.229, 0.224, 0.225])
  return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def torch_class(net, photo):
  """pytorchcv's predicted class for one photo, on its own input."""
  with torch.no_grad():
    return int(net(torch_input(photo)).argmax())


@pytest.mark.slow
def test_quickstart_runs(tmp_path):
  run(nbformat.read(NOTEBOOK, as_version=4), tmp_path)


@pytest.mark.slow
def test_quickstart_pytorchcv_branch_predicts_pytorchcv_class(tmp_path):
  """USE_PYTORCHCV with random weights: the notebook's class is pytorchcv's own."""
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  set_flags(notebook,
            USE_PYTORCHCV=f'USE_PYTORCHCV = True; import torch; torch.manual_seed({SEED})',
            PRETRAINED='PRETRAINED = False')
  text = run(notebook, tmp_path)
  found = re.findall(r'most probable class (\d+)', text)
  assert len(found) == 1, text
  assert int(found[0]) == torch_class(pytorchcv_zfnet(), skimage.data.chelsea())


def test_model_input_imagenet_agrees_with_pytorchcv_on_photos():
  """model_input(photo, 'imagenet') and the converted weights give pytorchcv's class.

  On each of scikit-image's photos (the paper's 0-255 mean-subtracted input does not).
  """
  net = pytorchcv_zfnet()
  spec, variables = interop.from_torch(net.state_dict(), 'zfnet')
  apply = jax.jit(models.ConvNet(spec).apply)
  photos = [getattr(skimage.data, name)() for name in PHOTOS]
  ours = [int(np.argmax(apply(variables, preprocess.model_input(photo, 'imagenet')[None])))
          for photo in photos]
  assert ours == [torch_class(net, photo) for photo in photos]
