"""The paper's convnets as one Flax linen module driven by a layer spec.

    model = models.ZFNet(num_classes=1000)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    params = models.init_params(model, seed=0, image_size=224)  # its params, one compiled program
    logits = model.apply(variables, images)                         # inference
    logits = model.apply(variables, images, train=True, rngs={'dropout': key})
    maps = models.activations(model, variables, images, ('conv1', 'conv5'))

Parameters are named after the layers, {'conv1': {'kernel', 'bias'}, ..., 'fc8': ...}:
conv kernels HWIO, dense kernels (in, out), fc6's input the last map flattened in HWC
order. Initialization follows the paper: normal(std 1e-2) weights, zero biases. Convolutions
and max pools go through `zfjax.fast_ops`: the same functions, with gradients that train
faster on CPUs.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from zfjax import architecture
from zfjax import configs
from zfjax import fast_ops
from zfjax.architecture import AvgPool, Conv, Dense, Norm, Pool

Array = jax.Array

PAPER_INIT = nn.initializers.normal(stddev=1e-2)
# config.init and config.dtype -> the module's
INITIALIZERS = {
    'paper': PAPER_INIT,                      # normal, std 1e-2 (Sec. 3)
    'he_normal': nn.initializers.he_normal(),
    'lecun_normal': nn.initializers.lecun_normal(),
    'glorot_uniform': nn.initializers.glorot_uniform(),
}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def local_response_norm(x: Array, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 2.0) -> Array:
  """AlexNet's normalization across the channel axis of an NHWC map.

  x_c / (k + alpha * sum over the `size` maps centred on c of x^2) ** beta. Beta 0.75
  (every network here) goes as sqrt(d) * sqrt(sqrt(d)): XLA:CPU evaluates a power by
  exp and log, and the two square roots measured 2x faster forward and 2-3x in the
  gradient, equally close to float64 (1.8e-7 of the largest output, 1.4e-7 for pow)."""
  half = size // 2
  squares = lax.reduce_window(jnp.square(x), 0.0, lax.add, (1, 1, 1, size), (1, 1, 1, 1),
                              ((0, 0), (0, 0), (0, 0), (half, size - 1 - half)))
  denominator = k + alpha * squares
  if beta == 0.75:
    return x / (jnp.sqrt(denominator) * jnp.sqrt(jnp.sqrt(denominator)))
  return x / denominator ** beta


def max_pool(x: Array, record: Pool) -> Array:
  """Max pooling of an NHWC map; ceil mode pads the overhang with -inf.

  `fast_ops.max_pool`: its gradient goes to each window's first maximum (row-major)."""
  pad_h = architecture.pool_overhang(x.shape[1], record.window, record.stride, record.ceil)
  pad_w = architecture.pool_overhang(x.shape[2], record.window, record.stride, record.ceil)
  return fast_ops.max_pool(x, record.window, record.stride, ((0, pad_h), (0, pad_w)))


def adaptive_avg_pool(x: Array, size: int) -> Array:
  """torch's AdaptiveAvgPool2d on an NHWC map.

  torch's AdaptiveAvgPool2d: output cell i averages rows floor(i*H/size) to
  ceil((i+1)*H/size)."""
  def pool_axis(x, axis):
    n = x.shape[axis]
    cells = [jnp.mean(lax.slice_in_dim(x, (i * n) // size, -(-(i + 1) * n // size), axis=axis),
                      axis=axis, keepdims=True) for i in range(size)]
    return jnp.concatenate(cells, axis=axis)
  return pool_axis(pool_axis(x, 1), 2)


class ConvNet(nn.Module):
  """A convnet built from an `architecture` spec.

  Attributes:
    spec: tuple of layer records (see zfjax.architecture).
    dtype: computation dtype (params stay float32); bfloat16 is the usual GPU choice.
    kernel_init, bias_init: the paper's normal(1e-2) and zeros by default.
    relu, normalize: the nonlinearity and the normalization function
      (x, Norm record) -> y. The deconvnet swaps them for versions with other
      backward passes (zfjax.deconv); nothing else should need to.
    convolution: lax.conv_general_dilated's signature; `fast_ops.conv_general_dilated`
      (the same values, faster gradients on CPUs). The deconvnet's gradient method takes
      lax's own, so its forward values are those of a plain forward pass bit for bit.
  """
  spec: tuple
  dtype: Any = jnp.float32
  kernel_init: Callable = PAPER_INIT
  bias_init: Callable = nn.initializers.zeros
  relu: Callable[[Array], Array] = nn.relu
  convolution: Callable = fast_ops.conv_general_dilated
  normalize: Callable[[Array, Norm], Array] = (
      lambda x, r: local_response_norm(x, r.size, r.alpha, r.beta, r.k))

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    """Logits for a batch of NHWC images.

    Every layer's output is also sown into the 'intermediates' collection as one dict {layer
    name: output} (see `activations`)."""
    check_images(x, self.spec)
    images_shape = x.shape
    x = x.astype(self.dtype)
    for record in self.spec:
      if isinstance(record, Conv):
        x = nn.Conv(record.features, (record.kernel,) * 2, strides=(record.stride,) * 2,
                    padding=[(record.padding, record.padding)] * 2, dtype=self.dtype,
                    kernel_init=self.kernel_init, bias_init=self.bias_init,
                    conv_general_dilated=self.convolution, name=record.name)(x)
        x = self.relu(x)
      elif isinstance(record, Pool):
        x = max_pool(x, record)
      elif isinstance(record, Norm):
        x = self.normalize(x, record)
      elif isinstance(record, AvgPool):
        x = adaptive_avg_pool(x, record.size)
      elif isinstance(record, Dense):
        x = x.reshape(x.shape[0], -1)
        _check_dense_input(self, record.name, x, images_shape)
        x = nn.Dense(record.features, dtype=self.dtype, kernel_init=self.kernel_init,
                     bias_init=self.bias_init, name=record.name)(x)
        if record.relu:
          x = self.relu(x)
        if record.dropout:
          x = nn.Dropout(record.dropout, deterministic=not train)(x)
      self.sow('intermediates', 'layers', {record.name: x}, init_fn=dict,
               reduce_fn=lambda layers, new: {**layers, **new})
    return x.astype(jnp.float32)


def ZFNet(num_classes: int = 1000, **kwargs) -> ConvNet:  # pylint: disable=invalid-name
  """The paper's ZFNet (Fig. 3).

  Keyword arguments go to `architecture.zfnet` (conv_features, fc_features, dropout,
  norm_before_pool, norm)."""
  return ConvNet(architecture.zfnet(num_classes, **kwargs))


def ZFNetWide(num_classes: int = 1000, **kwargs) -> ConvNet:  # pylint: disable=invalid-name
  """The paper's wide model (b): conv3/4/5 with 512/1024/512 maps."""
  return ConvNet(architecture.zfnet_wide(num_classes, **kwargs))


def AlexNet(num_classes: int = 1000, **kwargs) -> ConvNet:  # pylint: disable=invalid-name
  """AlexNet as replicated in the paper (single tower, normalize then pool)."""
  return ConvNet(architecture.alexnet(num_classes, **kwargs))


def check_images(x, spec: tuple) -> None:
  """ValueError unless x is a batch of NHWC RGB images large enough for this spec."""
  if getattr(x, 'ndim', None) != 4:
    raise ValueError(f'expected a batch of NHWC images of rank 4, got shape '
                     f'{getattr(x, "shape", type(x).__name__)}; add a batch axis with x[None]')
  if x.shape[-1] != 3:
    raise ValueError(f'expected images with 3 color channels last (NHWC), got shape '
                     f'{x.shape}')
  try:
    architecture.shapes(spec, x.shape[1:])  # raises if a map would be empty
  except ValueError as error:
    raise ValueError(f'images of shape {tuple(x.shape)}: {error}') from None


def _check_dense_input(module: nn.Module, name: str, x: Array, images_shape) -> None:
  params = module.variables.get('params', {})
  if name in params and params[name]['kernel'].shape[0] != x.shape[-1]:
    raise ValueError(
        f'{name} was initialized for {params[name]["kernel"].shape[0]} input features but '
        f'images of shape {tuple(images_shape)} give {x.shape[-1]}: use images of the size '
        f'the model was initialized with (224x224 for the paper\'s models)')


def activations(model: ConvNet, variables, images: Array,
                layers: Sequence[str]) -> dict[str, Array]:
  """The outputs of the named layers for a batch of images, from one forward pass (inference mode).

  Conv and dense names give post-ReLU outputs; fc8 gives logits. Under jit, layers above the
  highest one asked for are not computed."""
  layers = tuple(layers)
  architecture.check_layers(model.spec, layers)
  _, state = model.apply(variables, images, mutable=['intermediates'])
  outputs = state['intermediates']['layers']
  return {name: outputs[name] for name in layers}


# Compiler options for a program that runs once on CPU (an init): XLA's lowest
# optimization level compiles random-number kernels in a fraction of the time.
ONE_SHOT_CPU_OPTIONS = {'xla_backend_optimization_level': 0}


def jit_once(fun: Callable) -> Callable:
  """jax.jit for a program that runs once: on CPU, compiled with ONE_SHOT_CPU_OPTIONS."""
  options = ONE_SHOT_CPU_OPTIONS if jax.default_backend() == 'cpu' else None
  return jax.jit(fun, compiler_options=options)


def init_params(model: ConvNet, seed: int, image_size: int):
  """Fresh parameters of `model` (its init) for (image_size, image_size, 3) images.

  One compiled program, on CPU at XLA's lowest optimization level (jit_once): it runs
  once, and an eager `model.init` runs the forward pass op by op (a narrow ZFNet on a
  2-core CPU: 8.9 s eagerly, 1.4 s here). The values agree with an optimized compile's to
  about 1e-7."""
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  return jit_once(model.init)(jax.random.key(seed), images)['params']


# ----------------------------------------------------------------------- from a config


def spec_from_config(config, num_classes: int) -> architecture.Spec:
  """The layer spec of config.model with the config's widths, dropout and removed layers."""
  kwargs = {'dropout': config.dropout}
  if config.conv_features:
    kwargs['conv_features'] = tuple(config.conv_features)
  if config.fc_features:
    kwargs['fc_features'] = tuple(config.fc_features)
  if config.norm_before_pool:
    kwargs['norm_before_pool'] = True
  try:
    spec = architecture.get(config.model, num_classes, **kwargs)
    if config.remove_layers:
      spec = architecture.without(spec, *config.remove_layers)
  except (TypeError, ValueError) as e:
    raise configs.ConfigError(f'config.model {config.model!r} with {kwargs}: {e}') from e
  return spec


def from_config(config, num_classes: int) -> ConvNet:
  """The ConvNet described by the config: model, widths, init, dtype."""
  if config.init not in INITIALIZERS:
    raise configs.ConfigError(f'unknown init {config.init!r} (config.init); choose one of '
                      f'{sorted(INITIALIZERS)}')
  if config.dtype not in DTYPES:
    raise configs.ConfigError(f'unknown dtype {config.dtype!r} (config.dtype); choose one of '
                      f'{sorted(DTYPES)}')
  return ConvNet(spec_from_config(config, num_classes), dtype=DTYPES[config.dtype],
                        kernel_init=INITIALIZERS[config.init])
