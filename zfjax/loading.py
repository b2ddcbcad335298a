"""One loader of a trained net, for every analysis, figure and command line.

    net = loading.load('/tmp/zf')                   # a train.py workdir, latest checkpoint
    net = loading.load('/tmp/zf', step='best')      # or a step number
    net = loading.load('/tmp/zf/checkpoints/400')   # a checkpoint directory
    net = loading.load('/tmp/zf_imagenet')          # weights imported by zfjax.interop
    x = net.input('cat.jpg')                        # a photo -> this net's input
    logits = net.model.apply(net.variables, x[None])

`load` returns a `Loaded`: the config, the model (float32, as the analyses run it), its
params and class count, how its inputs were made (`normalization` and the training set's
`mean` image), the checkpoint directory and its step, and notes on anything assumed.

The mean image (`mean=None`): the training set's, from the input pipeline (the digits
compute it at once; a TFDS dataset reads the cached file, or computes it when the data
is here); when it cannot be had here, ImageNet's channel means stand in, and `notes` and
`dataset_error` say so. `mean='dataset'` raises instead; `mean='imagenet_channels'`, a
.npy path or an array set it. Imported torchvision and pytorchcv weights take
ImageNet-normalized inputs (`normalization='imagenet'`) and need no mean image.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Optional, Union

import ml_collections
import numpy as np

from zfjax import checkpoints
from zfjax import input_pipeline
from zfjax import models
from zfjax import preprocess

PathLike = Union[str, os.PathLike]


@dataclasses.dataclass(frozen=True)
class Loaded:
  """A trained net restored from a checkpoint, with what it takes to feed it."""
  config: ml_collections.ConfigDict
  model: models.ConvNet
  params: Any
  num_classes: int
  normalization: str                # preprocess.PAPER or preprocess.IMAGENET
  mean: Optional[np.ndarray]        # (resize_size, resize_size, 3), 0-255; None: imagenet
  checkpoint: pathlib.Path          # the step directory
  step: int
  notes: tuple = ()                 # what was assumed (a stand-in mean image, ...)
  dataset_error: Optional[str] = None  # why the training set is not available here

  @property
  def variables(self) -> dict:
    """{'params': params}, as `model.apply` takes them."""
    return {'params': self.params}

  @property
  def spec(self) -> tuple:
    return self.model.spec

  @property
  def image_size(self) -> int:
    return int(self.config.image_size)

  @property
  def resize_size(self) -> int:
    return int(self.config.get('resize_size', self.config.image_size))

  @property
  def input_mean(self) -> Any:
    """The mean subtracted from an input, cropped to it (0 for imagenet inputs)."""
    if self.mean is None:
      return 0.0
    return preprocess.center_crop(self.mean, self.image_size)

  def input(self, image: Any) -> np.ndarray:
    """One picture -> this net's input, as its evaluation makes it.

    One picture (a path, PIL image or array; see zfjax.preprocess) -> this net's input,
    (image_size, image_size, 3) float32, made as its evaluation makes them."""
    return preprocess.model_input(image, self.normalization, self.mean, size=self.image_size,
                                  resize=self.resize_size)

  def to_display(self, x: Any) -> np.ndarray:
    """This net's inputs (..., H, W, 3) -> 0-255 RGB, to look at."""
    return preprocess.to_display(x, self.normalization, self.input_mean)

  def describe(self) -> str:
    return (f'model {self.config.model} ({self.image_size}x{self.image_size} inputs, '
            f'{self.num_classes} classes), checkpoint {self.checkpoint} (step {self.step})')


def load(path: PathLike, step: Union[int, str] = 'latest', *, mean: Any = None) -> Loaded:
  """The trained net at `path`: a workdir, its checkpoints/ directory or one step's.

  `step`: 'latest', 'best' (lowest validation top-1 error) or a step number. `mean`:
  see the module doc. FileNotFoundError for a path or step that does not exist,
  NotADirectoryError for a file, CheckpointError (one line naming the directory) for a
  damaged checkpoint or one without a config to rebuild its model.
  """
  location = pathlib.Path(path)
  if not location.exists():
    raise FileNotFoundError(f'{path} does not exist')
  if not location.is_dir():
    raise NotADirectoryError(f'{path} is not a directory (a workdir or checkpoint directory)')
  if not (location / checkpoints.CHECKPOINTS).is_dir() and not _has_checkpoints(location):
    raise FileNotFoundError(f'{path} has no checkpoints (train it with train.py first, or '
                            'import weights with python -m zfjax.interop import)')
  directory = checkpoints.find_checkpoint(location, step)
  config, params = checkpoints.restore_params(directory)
  if config is None:
    raise checkpoints.CheckpointError(
        f'checkpoint {directory} carries no config and has no workdir config.json beside '
        'it: cannot rebuild its model')
  last = models.spec_from_config(config, 1)[-1].name
  if last not in params:
    raise checkpoints.CheckpointError(f"checkpoint {directory} has no {last!r} params for "
                                      "its config's model")
  num_classes = int(np.shape(params[last]['bias'])[0])
  model = models.ConvNet(models.spec_from_config(config, num_classes))  # float32
  normalization = config.get('input_normalization', preprocess.PAPER)
  notes, error = [], None
  image = None
  if normalization == preprocess.PAPER:
    image, notes, error = mean_image(config, mean)
  return Loaded(config, model, params, num_classes, normalization, image, directory,
                int(directory.name), tuple(notes), error)


def _has_checkpoints(location: pathlib.Path) -> bool:
  """Whether `location` is a checkpoints/ directory or one step directory."""
  try:
    checkpoints.find_checkpoint(location)
    return True
  except FileNotFoundError:
    return False


def mean_image(config, mean: Any = None) -> tuple[np.ndarray, list, Optional[str]]:
  """(mean image, notes, why the dataset is unavailable) for a paper-space net.

  The image is (resize_size, resize_size, 3) float32 on the 0-255 scale; see the module
  doc for `mean`.
  """
  size = int(config.get('resize_size', config.image_size))
  shape = (size, size, 3)
  if isinstance(mean, str) and mean == 'imagenet_channels':
    return _channels(shape), [], None
  if isinstance(mean, (str, os.PathLike)) and mean != 'dataset':
    image = np.load(mean).astype(np.float32)
    if image.shape != shape:
      raise ValueError(f'mean image {mean} has shape {image.shape}; the net needs {shape}')
    return image, [], None
  if mean is not None and not isinstance(mean, str):
    return np.broadcast_to(np.asarray(mean, np.float32), shape).copy(), [], None
  try:
    return np.asarray(input_pipeline.mean_image(config), np.float32), [], None
  except Exception as error:  # pylint: disable=broad-except  (no data here, no TensorFlow)
    if mean == 'dataset':
      raise
    reason = (str(error).strip().splitlines()[0]
              if isinstance(error, input_pipeline.DatasetUnavailableError) else None)
    note = (f'the mean image of {config.dataset} is not available here '
            f'({type(error).__name__}); used ImageNet\'s channel means '
            f'{preprocess.IMAGENET_MEAN_255}')
    return _channels(shape), [note], reason


def _channels(shape: tuple) -> np.ndarray:
  return np.broadcast_to(np.float32(preprocess.IMAGENET_MEAN_255), shape).copy()
