"""Statistics of a net's layer-1 filters, and its layer-2 features (Zeiler & Fergus, Fig. 6).

    summary = filter_stats.summarize(model, variables, batches, feature_channels=range(16))
    summary.filters        # (K, h, w, 3) conv1's filters, one per output map
    summary.rms            # (K,) each filter's RMS (what feature scale clipping bounds)
    summary.features       # strongest.Strongest for conv2: each map's strongest activation
                           # over the dataset, projected with the deconvnet

The paper's Fig. 6 compares AlexNet's layer-1 filters (large stride 4: aliasing, many
"dead" filters) with ZFNet's (7x7 stride 2), and layer 1 without renormalization (a few
filters dominate). What this module measures, per filter (our choices; the paper shows
pictures only):
- rms: sqrt(mean of the squared weights) over height, width and input channels, the
  quantity the trainer's renormalization clips to `filter_rms_radius`.
- never_active: the filter's map is zero (post-ReLU) at every position of every image of
  the dataset: a dead filter in the sense of the paper's "no activation".
- low_rms: RMS below `low_rms_fraction` (default 0.1) of the median filter's RMS.
- high_frequency: the fraction of the filter's spectral energy (2-D DFT, summed over input
  channels, mean removed) at frequencies whose larger component exceeds a quarter cycle per
  pixel (half the Nyquist rate): high values mean checkerboard-like, aliasing-prone filters.
"""

from __future__ import annotations

from typing import Callable, Iterable, NamedTuple, Optional, Sequence

import numpy as np

from zfjax import architecture, models, topk
from zfjax.report import strongest


class Summary(NamedTuple):
  """One net's layer-1 filters, their statistics, and its layer-2 features."""
  layer: str
  filters: np.ndarray         # (K, h, w, C_in) the filters, output map first
  rms: np.ndarray             # (K,)
  high_frequency: np.ndarray  # (K,)
  low_rms: np.ndarray         # (K,) bool
  never_active: Optional[np.ndarray]  # (K,) bool, None without a dataset
  max_activation: Optional[np.ndarray]  # (K,) largest activation over the dataset
  features_layer: str
  features: Optional[strongest.Strongest]


def filter_bank(params, layer: str = 'conv1') -> np.ndarray:
  """A conv layer's kernel (HWIO) as (O, H, W, I): one filter per output map."""
  if layer not in params or np.ndim(params[layer].get('kernel')) != 4:
    convs = [name for name, leaves in params.items() if np.ndim(leaves.get('kernel')) == 4]
    raise ValueError(f'{layer!r} is not a conv layer of these params; conv layers: {convs}')
  return np.moveaxis(np.asarray(params[layer]['kernel'], np.float32), -1, 0)


def rms_per_filter(filters: np.ndarray) -> np.ndarray:
  """(K,) RMS of each (h, w, c) filter of a `filter_bank`."""
  return np.sqrt(np.mean(np.square(filters), axis=(1, 2, 3)))


def high_frequency_fraction(filters: np.ndarray, cutoff: float = 0.25) -> np.ndarray:
  """(K,) fraction of each filter's energy at high spatial frequencies.

  The energy (mean removed per input channel) at frequencies with max(|f_y|, |f_x|) >
  cutoff cycles per pixel; 0 for a constant filter.
  """
  centred = filters - filters.mean(axis=(1, 2), keepdims=True)
  power = np.sum(np.abs(np.fft.fft2(centred, axes=(1, 2))) ** 2, axis=-1)  # (K, h, w)
  fy = np.abs(np.fft.fftfreq(filters.shape[1]))[:, None]
  fx = np.abs(np.fft.fftfreq(filters.shape[2]))[None, :]
  high = np.maximum(fy, fx) > cutoff
  total = power.sum(axis=(1, 2))
  return np.where(total > 0, (power * high).sum(axis=(1, 2)) / np.where(total > 0, total, 1),
                  0.0)


def summarize(model: models.ConvNet, variables, batches: Optional[Callable[[], Iterable]],
              layer: str = 'conv1', features_layer: str = 'conv2',
              feature_channels: Optional[Sequence[int]] = None,
              low_rms_fraction: float = 0.1, rule: str = 'deconvnet') -> Summary:
  """Filters and statistics of `layer`, and the strongest activations of `features_layer`.

  With `batches` (a function returning a fresh iterable of batches), each listed map of
  `features_layer` at its strongest activation over the dataset, projected.
  feature_channels None: every map of features_layer.
  """
  convs = architecture.conv_names(model.spec)
  for name in (layer, features_layer):
    if name not in convs:
      raise ValueError(f'unknown conv layer {name!r}; this model has {convs}')
  bank = filter_bank(variables['params'], layer)
  rms = rms_per_filter(bank)
  low = rms < low_rms_fraction * np.median(rms)
  never_active = max_activation = features = None
  if batches is not None:
    maps = architecture.layer(model.spec, features_layer).features
    channels = np.arange(maps) if feature_channels is None else np.asarray(
        feature_channels, np.int32).reshape(-1)
    if channels.size and (channels.min() < 0 or channels.max() >= maps):
      raise ValueError(f'channels out of range for {features_layer}, which has {maps} maps '
                       f'(valid: 0..{maps - 1}); got {channels.tolist()}')
    results = topk.search(model, variables, batches(), layers=(layer,), k=1)
    max_activation = np.asarray(results[layer].values)[:, 0]
    never_active = ~(max_activation > 0)
    features = strongest.strongest(model, variables, batches, {features_layer: channels},
                                   rule)[features_layer]
  return Summary(layer, bank, rms, high_frequency_fraction(bank), low, never_active,
                 max_activation, features_layer, features)


def statistics(summary: Summary) -> dict:
  """The numbers of a summary, as plain Python values for JSON."""
  out = {
      'layer': summary.layer,
      'num_filters': int(summary.rms.size),
      'filter_shape': list(summary.filters.shape[1:]),
      'rms': summary.rms.tolist(),
      'rms_mean': float(summary.rms.mean()),
      'rms_max': float(summary.rms.max()),
      'high_frequency_fraction': summary.high_frequency.tolist(),
      'high_frequency_mean': float(summary.high_frequency.mean()),
      'low_rms_filters': np.flatnonzero(summary.low_rms).tolist(),
  }
  if summary.never_active is not None:
    out['never_active_filters'] = np.flatnonzero(summary.never_active).tolist()
    out['max_activation'] = summary.max_activation.tolist()
  if summary.features is not None:
    out['features'] = {
        'layer': summary.features_layer,
        'channels': summary.features.channels.tolist(),
        'value': summary.features.value.tolist(),
        'example': summary.features.example.tolist(),
        'y': summary.features.y.tolist(), 'x': summary.features.x.tolist()}
  return out
