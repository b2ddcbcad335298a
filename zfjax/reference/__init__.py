"""Golden reference outputs: one .npz that another framework can check itself against.

    arrays = reference.generate(reference.SMALL, seed=0)   # every array, 'metadata' too
    reference.save(arrays, 'small.npz')
    arrays, metadata = reference.load('small.npz')

    zfjax-reference --out ref.npz             # full: ZFNet at 224x224, 18 MB
    python -m zfjax.reference --small --out small.npz  # a few hundred KB (tests/data)
    python tools/check_reference_torch.py ref.npz      # an independent PyTorch check

The file holds, for a fixed seed: random (He-normal, numpy-drawn) parameters, the input
images, every named layer's output, deconvnet / guided / backprop projections and the
occlusion maps of the first image, and a 'metadata' JSON string describing them all.
docs/reference.md gives the layout, the generators and the conventions.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

import zfjax
from zfjax import architecture, deconv, models, occlusion
from zfjax.architecture import Conv, Dense

FORMAT = 'zfjax-reference'
FORMAT_VERSION = 1
BIAS_RANGE = (0.0, 0.1)
IMAGE_RANGE = (-100.0, 100.0)


@dataclasses.dataclass(frozen=True)
class Config:
  """What a reference file holds.

  FULL is ZFNet's conv part at 224x224 (the paper's widths and geometry) with a narrow
  classifier, one image (about 18 MB; each further image adds about 8 MB); SMALL keeps
  the layer sequence and every kernel, stride and padding but narrow maps on 64x64
  images, for the checked-in file.
  """
  name: str
  image_size: int
  num_images: int
  num_classes: int
  conv_features: tuple[int, ...]
  fc_features: tuple[int, ...]
  channels: tuple[int, ...]       # projected channels, the same at every layer
  projected: tuple[str, ...]      # conv layers whose projections are stored
  patch: int                      # occluder side (pixels)
  stride: int                     # occluder step (pixels)
  fill: float = 0.0               # occluder value in input space (0: the mean pixel)

  def spec(self) -> tuple:
    return architecture.zfnet(self.num_classes, conv_features=self.conv_features,
                              fc_features=self.fc_features)


CONV_LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
FULL = Config('full', image_size=224, num_images=1, num_classes=10,
              conv_features=(96, 256, 384, 384, 256), fc_features=(64, 64),
              channels=(0, 5, 17), projected=CONV_LAYERS, patch=32, stride=32)
SMALL = Config('small', image_size=64, num_images=1, num_classes=10,
               conv_features=(16, 24, 24, 24, 16), fc_features=(16, 16),
               channels=(0, 5), projected=('conv2', 'conv5'), patch=16, stride=16)

RULES = deconv.RULES


# ------------------------------------------------------------------------ generators


def random_params(spec: tuple, image_size: int, seed: int) -> dict:
  """zfjax-layout params as numpy float32, drawn by one numpy Generator.

  He-normal kernels (HWIO / (in, out)), biases uniform on BIAS_RANGE, both rounded to
  float16 precision; layers in spec order, kernel then bias.
  """
  rng = np.random.default_rng(seed)
  shapes = architecture.shapes(spec, (image_size, image_size, 3))
  params, previous = {}, (image_size, image_size, 3)
  for record in spec:
    if isinstance(record, Conv):
      shape = (record.kernel, record.kernel, previous[-1], record.features)
    elif isinstance(record, Dense):
      shape = (int(np.prod(previous)), record.features)
    else:
      previous = shapes[record.name]
      continue
    fan_in = int(np.prod(shape[:-1]))
    kernel = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    bias = rng.uniform(*BIAS_RANGE, record.features)
    params[record.name] = {'kernel': _half_precision(kernel), 'bias': _half_precision(bias)}
    previous = shapes[record.name]
  return params


def _half_precision(x: np.ndarray) -> np.ndarray:
  """float32 values exactly representable in float16.

  Such arrays compress to about 60% (their low mantissa bits are zero), and parameters
  are most of the file.
  """
  return x.astype(np.float16).astype(np.float32)


def random_images(num_images: int, image_size: int, seed: int) -> np.ndarray:
  """(N, H, W, 3) float32, uniform on IMAGE_RANGE, from numpy.random.default_rng(seed + 1)."""
  rng = np.random.default_rng(seed + 1)
  shape = (num_images, image_size, image_size, 3)
  return rng.uniform(*IMAGE_RANGE, shape).astype(np.float32)


# ------------------------------------------------------------------------- the arrays


def generate(config: Config = FULL, seed: int = 0) -> dict[str, np.ndarray]:
  """Every array of a reference file, 'metadata' included (see the module doc).

  The forward pass, the projections and the occlusion maps are one compiled program, on CPU
  at XLA's lowest optimization level (models.jit_once): it runs once."""
  spec = config.spec()
  params = random_params(spec, config.image_size, seed)
  images = random_images(config.num_images, config.image_size, seed)
  names = []  # the computed arrays' names, in the order computed (a dict output is sorted)

  def compute(params, x):
    arrays = _computed(models.ConvNet(spec), config, params, x)
    names[:] = arrays
    return list(arrays.values())

  values = models.jit_once(compute)(jax.tree.map(jnp.asarray, params), jnp.asarray(images))
  out = {f'params/{layer}/{kind}': value
         for layer, pair in params.items() for kind, value in pair.items()}
  out['images'] = images
  out.update(zip(names, map(np.asarray, values)))
  out['metadata'] = np.asarray(json.dumps(metadata(config, seed), indent=1))
  return out


def _computed(model: models.ConvNet, config: Config, params: dict, x) -> dict:
  """The arrays that zfjax computes (activations, projections, occlusion), by name."""
  variables = {'params': params}
  names = architecture.layer_names(model.spec)
  maps = models.activations(model, variables, x, names)
  out = {f'activations/{name}': maps[name] for name in names}
  channels = out['deconv/channels'] = jnp.asarray(config.channels, jnp.int32)
  for layer in config.projected:
    units = deconv.strongest(maps[layer], channels)
    shape = (config.num_images, len(config.channels))
    out[f'deconv/seeds/{layer}/position'] = jnp.stack([units.y, units.x], -1).reshape(
        *shape, 2).astype(jnp.int32)
    out[f'deconv/seeds/{layer}/value'] = units.value.reshape(shape)
    for rule in RULES:
      out[f'deconv/{rule}/{layer}'] = deconv.project(model, variables, x, layer, channels,
                                                     rule=rule)

  label = jnp.argmax(maps[names[-1]][0]).astype(jnp.int32)
  occluded = occlusion.sensitivity(model, variables, x[0], label, patch=config.patch,
                                   stride=config.stride, fill=config.fill,
                                   winograd=False)  # the exact maps, for other frameworks
  out['occlusion/label'] = label
  out['occlusion/channel'] = occluded.channel.astype(jnp.int32)
  out['occlusion/prob'] = occluded.prob.astype(jnp.float32)
  out['occlusion/top_class'] = occluded.top_class.astype(jnp.int32)
  out['occlusion/feature'] = occluded.feature.astype(jnp.float32)
  return out


def spec_records(spec: tuple) -> list[dict]:
  """The spec as JSON-ready dicts: {'type': 'Conv', 'name': 'conv1', 'features': ...}."""
  return [{'type': type(record).__name__, **dataclasses.asdict(record)} for record in spec]


def metadata(config: Config, seed: int) -> dict:
  """The file's self-description (stored as JSON under 'metadata')."""
  spec = config.spec()
  last_conv = architecture.conv_names(spec)[-1]
  shapes = architecture.shapes(spec, (config.image_size,) * 2 + (3,))
  positions = occlusion.positions(config.image_size, config.patch, config.stride)
  side = config.image_size
  return {
      'format': FORMAT,
      'format_version': FORMAT_VERSION,
      'zfjax_version': zfjax.__version__,
      'jax_version': jax.__version__,
      'variant': config.name,
      'seed': seed,
      'config': dataclasses.asdict(config),
      'spec': spec_records(spec),
      'notes': [
          'Not a trained network and not the paper\'s init: random He-normal weights with '
          'small positive biases so every layer is alive.',
          f'The classifier is narrow (fc6/fc7 {list(config.fc_features)}, '
          f'{config.num_classes} classes) to keep the file small; the conv part is '
          f'ZFNet\'s geometry at {side}x{side} with conv widths '
          f'{list(config.conv_features)}.',
          'All arrays float32 unless listed as int32 under "arrays".',
      ],
      'generators': {
          'bias_range': list(BIAS_RANGE), 'image_range': list(IMAGE_RANGE),
          'image_seed': seed + 1, 'param_seed': seed,
          'params': f'numpy.random.default_rng(seed); for each conv/dense layer in spec '
                    f'order: kernel = standard_normal(shape) * sqrt(2 / fan_in) with fan_in '
                    f'= prod(shape[:-1]), then bias = uniform({BIAS_RANGE[0]}, '
                    f'{BIAS_RANGE[1]}, features); both computed in float64, then '
                    f'rounded to float16 and stored as float32 '
                    f'(x.astype(float16).astype(float32))',
          'images': f'numpy.random.default_rng(seed + 1).uniform({IMAGE_RANGE[0]}, '
                    f'{IMAGE_RANGE[1]}, (N, H, W, 3)), cast to float32',
      },
      'rules': list(RULES),
      'channels': list(config.channels),
      'projected_layers': list(config.projected),
      'occlusion': {
          'image': 0, 'patch': config.patch, 'stride': config.stride, 'fill': config.fill,
          'positions': [positions, positions], 'feature_layer': last_conv,
          'label': 'argmax of the unoccluded image\'s logits (first on ties)',
      },
      'layout': LAYOUT,
      'arrays': array_docs(spec, config, shapes, positions),
  }


LAYOUT = {
    'images': 'NHWC float32 in the model\'s input space (mean-subtracted pixel scale)',
    'maps': 'NHWC (batch, row, column, channel)',
    'conv_kernel': 'HWIO (rows, columns, in, out); y = x (*) w cross-correlation, + bias',
    'dense_kernel': '(in, out); y = x @ kernel + bias',
    'flatten': 'the last map (N, H, W, C) is flattened in HWC order (row-major over '
               'H, W, C) into fc6; a CHW framework permutes fc6\'s rows',
    'conv': 'symmetric zero padding `padding`, then ReLU (conv and hidden dense layer '
            'names are post-ReLU outputs; the last dense layer is the logits)',
    'pool': 'max pooling window x window, stride; ceil mode: windows start at 0 and the '
            'last may overhang the end, the overhang padded with -inf; output size '
            'ceil((n - window) / stride) + 1',
    'norm': 'b_c = a_c / (k + alpha * sum_{c\'=c-size//2}^{c+(size-1)//2} a_c\'^2) ** '
            'beta, zero outside the channel range (AlexNet\'s alpha: torch\'s '
            'LocalResponseNorm alpha is alpha * size)',
    'switch_ties': 'a pool\'s switch is its window\'s first maximum in row-major order',
    'seed': 'for channel c of a conv layer: the largest value of its post-ReLU map in '
            'the image (first in row-major order on ties); the seed map holds that value '
            'there and zeros elsewhere',
    'deconvnet': 'down from the seed: conv -> ReLU of the signal, then the transposed '
                 'convolution (same kernel, flipped, in/out swapped; no bias; output size '
                 'the conv\'s input size); pool -> unpool: each value to its switch, '
                 'values sharing a cell add; norm -> passed through',
    'guided': 'the gradient of the seeded map w.r.t. the image with each ReLU\'s '
              'backward relu(g) * (pre-activation > 0); pools route to switches; norm '
              'true gradient',
    'backprop': 'the plain gradient (g * (pre-activation > 0)), norm true gradient',
    'occlusion': 'position (i, j) sets rows i*stride .. i*stride+patch-1 and columns '
                 'j*stride .. j*stride+patch-1 of the image (all 3 channels) to fill; '
                 '(H - patch) // stride + 1 positions per axis',
}


def array_docs(spec, config, shapes, positions) -> dict[str, str]:
  """Name -> shape and meaning of every array of the file."""
  n, k, side = config.num_images, len(config.channels), config.image_size
  docs = {'metadata': 'this JSON, a 0-d numpy string array',
          'images': f'({n}, {side}, {side}, 3) input images'}
  previous = (side, side, 3)
  for record in spec:
    if isinstance(record, Conv):
      docs[f'params/{record.name}/kernel'] = (
          f'({record.kernel}, {record.kernel}, {previous[-1]}, {record.features}) HWIO')
    elif isinstance(record, Dense):
      docs[f'params/{record.name}/kernel'] = (
          f'({int(np.prod(previous))}, {record.features}) (in, out)')
    if isinstance(record, (Conv, Dense)):
      docs[f'params/{record.name}/bias'] = f'({record.features},)'
    previous = shapes[record.name]
    kind = ('logits' if isinstance(record, Dense) and not record.relu else
            'post-ReLU' if isinstance(record, (Conv, Dense)) else type(record).__name__)
    docs[f'activations/{record.name}'] = f'{(n, *shapes[record.name])} {kind} output'
  docs['deconv/channels'] = f'({k},) int32: the projected channels, at every layer'
  for layer in config.projected:
    docs[f'deconv/seeds/{layer}/position'] = (
        f'({n}, {k}, 2) int32: (row, column) of the seed of image n, channel k')
    docs[f'deconv/seeds/{layer}/value'] = f'({n}, {k}): the seed\'s value'
    for rule in RULES:
      docs[f'deconv/{rule}/{layer}'] = (
          f'({n}, {k}, {side}, {side}, 3): projection of image n\'s seed for channel k')
  docs.update({
      'occlusion/label': '() int32: the class whose probability is mapped',
      'occlusion/channel': '() int32: the feature layer\'s map holding the unoccluded '
                           'image\'s largest activation (argmax over channels of each '
                           'channel\'s maximum; the lowest channel on ties)',
      'occlusion/prob': f'({positions}, {positions}) softmax probability of the label',
      'occlusion/top_class': f'({positions}, {positions}) int32 argmax of the logits',
      'occlusion/feature': f'({positions}, {positions}) sum of the feature layer\'s map '
                           '`channel` (post-ReLU)',
  })
  return docs


# ------------------------------------------------------------------------- files


def save(arrays: dict[str, np.ndarray], path) -> None:
  """Write a compressed .npz (np.savez_compressed)."""
  with open(path, 'wb') as f:
    np.savez_compressed(f, **arrays)


def load(path) -> tuple[dict[str, np.ndarray], dict]:
  """(arrays without 'metadata', metadata dict); no pickles."""
  with np.load(path, allow_pickle=False) as data:
    arrays = {name: data[name] for name in data.files}
  return arrays, json.loads(str(arrays.pop('metadata')))

