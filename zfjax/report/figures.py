"""The paper's figures from a trained net: one function each, a Figure and its numbers out.

    fig, numbers = figures.occlusion('/tmp/zf', images=['dog.jpg'], labels=207)
    fig, numbers = figures.top9(loading.load('/tmp/zf'), layers=['conv5'], max_examples=500)
    fig.savefig('top9.png'); numbers['layers']['conv5']['values']

`top9` (Fig. 2), `evolution` (Fig. 4), `invariance` (Fig. 5), `filters` (Fig. 6),
`occlusion` (Fig. 7) and `correspondence` (Table 1) take a `zfjax.loading.Loaded` net
(or a path, loaded with `loading.load`), the images (see zfjax.report.examples: None for
the defaults, image paths, or model inputs) and the figure's options with the paper's
defaults. Each returns the matplotlib Figure and a dict of its numbers, with a 'title' and
a 'caption' saying how the figure was made. docs/figures.md describes every figure and
option. A mistake in the options raises `options.FigureError` with one line.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping, Optional, Sequence, Union

import jax
import numpy as np
from matplotlib.figure import Figure

from zfjax import architecture
from zfjax import correspondence as correspondence_measure  # the names below are figures
from zfjax import invariance as invariance_sweeps
from zfjax import loading
from zfjax import occlusion as occlusion_maps
from zfjax import preprocess
from zfjax import topk
from zfjax.report import examples
from zfjax.report import filter_stats
from zfjax.report import options
from zfjax.report import plots
from zfjax.report import strongest

Net = Union[loading.Loaded, str, os.PathLike]
Log = Callable[[str], None]
PROJECTION_NOTE = ('Projections are shown per projection as p / (2 max|p|) + 0.5, so zero '
                   'is mid-gray and the sign is kept; light blue-gray cells lie outside the '
                   'unit\'s receptive field (or the image).')


def as_net(net: Net) -> loading.Loaded:
  """A Loaded net as is; a path loaded with `loading.load` (its latest checkpoint)."""
  return net if isinstance(net, loading.Loaded) else loading.load(net)


def _shown(net: loading.Loaded, x: np.ndarray) -> np.ndarray:
  """The net's inputs as [0, 1] RGB to look at."""
  return plots.image_to_display(net.to_display(x))


def _undone(net: loading.Loaded) -> str:
  if net.normalization == preprocess.IMAGENET:
    return "ImageNet's normalization undone"
  return 'the mean image added back'


def _labels(net: loading.Loaded, chosen: examples.Examples,
            labels: Union[None, int, Sequence[int]]) -> tuple[np.ndarray, str, str]:
  """(N,) labels, how they were chosen, and a word for titles ('given', 'true', ...).

  `labels`, else the true labels, else the net's top class on each unaltered image.
  """
  if labels is not None:
    return (options.class_labels(net, labels, len(chosen.images)), 'labels given', 'given')
  if chosen.labels is not None:
    return chosen.labels, 'the true labels', 'true'
  logits = net.model.apply(net.variables, chosen.images)
  return (np.asarray(np.argmax(logits, -1), np.int32),
          "the model's most probable class on each unaltered image (no true label)",
          'top class')


def _chosen_maps(channels: Optional[Sequence[int]], count: int, seed: int, what: str) -> str:
  if channels:
    return f'maps {options.describe_numbers(channels)}'
  return f'{count} random maps {what}(seed {seed})'


# --------------------------------------------------------------------------- Fig. 2


def top9(net: Net, images: examples.Images = None, *, layers: Optional[Sequence[str]] = None,
         channels: Optional[Sequence[int]] = None, num_channels: int = 9, k: int = 9,
         rule: str = 'deconvnet', seed: int = 0, split: Optional[str] = None,
         max_examples: Optional[int] = None, log: Log = examples.silent,
         ) -> tuple[Figure, dict]:
  """Fig. 2: per conv layer, chosen maps' top-k activations, projected, beside the patches.

  `layers`: conv layers (default: all); `channels`: the maps of each (default:
  `num_channels` random ones per layer); `k` activations per map, at most one per image,
  over the dataset (`examples.image_set`).
  """
  net = as_net(net)
  layers = options.conv_layers(net, layers)
  chosen = {layer: options.choose_channels(net, layer, channels, num_channels, seed)
            for layer in layers}
  options.positive(k, 'k')
  data = examples.image_set(net, images, split, max_examples, log)
  log(f'top9: searching the top {k} of {", ".join(layers)} over {data.description}')
  found = topk.search(net.model, net.variables, data.batches(), layers=layers, k=k)
  gathered = topk.gather_images(data.batches(), [found[layer] for layer in layers])
  shown = topk.Images(gathered.example, net.to_display(gathered.image))
  gray = options.is_gray(net)
  panels, numbers = [], {'layers': {}}
  for layer in layers:
    log(f'top9: projecting {layer} ({len(chosen[layer])} maps x {k})')
    result = found[layer]
    patches = topk.crops(net.model, result, shown, layer, channels=chosen[layer])
    projections = topk.project(net.model, net.variables, result, gathered, layer,
                               channels=chosen[layer], rule=rule)
    valid = np.asarray(patches.valid)
    panels.append(plots.TopKPanel(
        layer, chosen[layer],
        plots.blank_outside(plots.signed_to_display(np.asarray(projections.pixels), gray=gray),
                            valid),
        plots.blank_outside(np.clip(np.asarray(patches.pixels) / 255.0, 0, 1), valid)))
    pick = lambda a, layer=layer: np.asarray(a)[chosen[layer]]
    example = pick(result.example)
    numbers['layers'][layer] = {
        'channels': chosen[layer], 'values': pick(result.values), 'example': example,
        'y': pick(result.y), 'x': pick(result.x), 'window_size': int(valid.shape[-1]),
        'window_top': np.asarray(patches.top), 'window_left': np.asarray(patches.left),
        'label': [[data.labels[e] if 0 <= e < len(data.labels) else None for e in row]
                  for row in example.tolist()]}
  log('top9: drawing')
  fig = plots.top_k_figure(panels, f'Top-{k} activations, {net.config.model} step '
                           f'{net.step}')
  caption = (f'Fig. 2. For {", ".join(layers)}: '
             f'{_chosen_maps(channels, num_channels, seed, "per layer ")}; for each map its '
             f'top {k} activations (at most one per image, strongest first, row by row within '
             f'a block) over {data.description}, each projected separately to pixel space '
             f'with the {rule} rule and cut to the unit\'s receptive-field window (left), '
             f'beside the image patches under the same windows (right; {_undone(net)}). '
             f'{PROJECTION_NOTE}')
  numbers.update(title=f'Fig. 2: top-{k} activations and their projections', caption=caption,
                 k=k, rule=rule, dataset=data.description)
  return fig, numbers


# --------------------------------------------------------------------------- Fig. 4


def evolution(net: Net, images: examples.Images = None, *,
              steps: Optional[Sequence[int]] = None, layers: Optional[Sequence[str]] = None,
              channels: Optional[Sequence[int]] = None, num_channels: int = 3,
              rule: str = 'deconvnet', seed: int = 0, split: Optional[str] = None,
              max_examples: Optional[int] = None, log: Log = examples.silent,
              ) -> tuple[Figure, dict]:
  """Fig. 4: rows = the run's checkpoints, columns = maps; each map's strongest activation.

  `steps`: checkpoints of the net's run (default: every one kept); `layers`, `channels`,
  `num_channels` as in `top9`. Each cell is projected in its receptive-field window.
  """
  net = as_net(net)
  run_dir = net.checkpoint.parent
  steps = strongest.select_steps(strongest.checkpoint_steps(run_dir), steps)
  layers = options.conv_layers(net, layers)
  chosen = {layer: options.choose_channels(net, layer, channels, num_channels, seed)
            for layer in layers}
  data = examples.image_set(net, images, split, max_examples, log)
  log(f'evolution: {len(steps)} checkpoints {list(steps)}, maps of {", ".join(layers)}')
  result = strongest.over_checkpoints(
      net.model, strongest.restore_steps(run_dir, steps), data.batches, chosen, rule,
      on_checkpoint=lambda step: log(f'evolution: checkpoint {step}'))
  log('evolution: drawing')
  gray = options.is_gray(net)
  columns, numbers = [], {'steps': result.steps, 'layers': {}}
  for layer in layers:
    found = result.layers[layer]
    shown = plots.blank_outside(plots.signed_to_display(found.projection, gray=gray),
                                found.valid)
    for c, channel in enumerate(chosen[layer]):
      columns.append((f'{layer} #{channel}', shown[:, c]))
    numbers['layers'][layer] = {'channels': chosen[layer], 'value': found.value,
                                'example': found.example, 'y': found.y, 'x': found.x}
  rows = [options.row_label(net, step) for step in result.steps]
  fig = plots.evolution_figure(rows, columns, f'Feature evolution, {net.config.model}')
  caption = (f'Fig. 4. Rows: the checkpoints of the run in {run_dir} (steps '
             f'{", ".join(map(str, result.steps))}); columns: feature maps of '
             f'{", ".join(layers)} ({_chosen_maps(channels, num_channels, seed, "per layer ")}'
             f'). Each cell: the map\'s strongest activation over {data.description} at that '
             f'checkpoint (top-1 search), projected with the {rule} rule, in its '
             f'receptive-field window. {PROJECTION_NOTE}')
  numbers.update(title='Fig. 4: evolution of features during training', caption=caption,
                 rule=rule, dataset=data.description)
  return fig, numbers


# --------------------------------------------------------------------------- Fig. 5


def invariance(net: Net, images: examples.Images = None, *, num_images: int = 5,
               labels: Union[None, int, Sequence[int]] = None,
               layers: Optional[Sequence[str]] = None,
               translations: Optional[Sequence[float]] = None,
               scales: Optional[Sequence[float]] = None,
               rotations: Optional[Sequence[float]] = None, fill: float = 0.0,
               split: Optional[str] = None, log: Log = examples.silent,
               ) -> tuple[Figure, dict]:
  """Fig. 5: feature distances at two layers and P(label) under translation, scale, rotation.

  `layers` default conv1 and fc7; `translations` (pixels) default the paper's +-60 step 5
  scaled to the input size; `scales` 1.0..1.8 step 0.05; `rotations` 0..350 degrees step
  10; `fill`: the value of uncovered pixels in the net's input space.
  """
  net = as_net(net)
  layers = options.named_layers(net, layers, invariance_sweeps.DEFAULT_LAYERS)
  chosen = examples.for_net(net, images, num_images, split, log=log)
  labels, how, _ = _labels(net, chosen, labels)
  grids = {
      'vertical translation': (invariance_sweeps.translate_vertical, 'pixels', options.amounts(
          translations, options.default_translations(net.image_size), 'translations')),
      'scale': (invariance_sweeps.scale, 'factor', options.amounts(
          scales, invariance_sweeps.SCALE_FACTORS, 'scales')),
      'rotation': (invariance_sweeps.rotate, 'degrees', options.amounts(
          rotations, invariance_sweeps.ROTATION_DEGREES, 'rotations')),
  }
  panels, numbers = [], {'images': chosen.names, 'labels': labels, 'layers': layers,
                         'transforms': {}}
  for name, (transform, unit, amounts) in grids.items():
    log(f'invariance: {name}, {len(amounts)} amounts x {len(labels)} images')
    sweep = invariance_sweeps.sweep(net.model, net.variables, chosen.images, labels,
                                    transform, amounts, layers=layers, fill=fill)
    picks = np.unique(np.linspace(0, len(amounts) - 1, min(5, len(amounts))).round()
                      .astype(int))
    strip = np.stack([np.asarray(transform(chosen.images[0], amounts[i], fill))
                      for i in picks])
    panels.append(plots.SweepPanel(
        name, unit, np.asarray(sweep.amounts),
        {layer: np.asarray(sweep.distance[layer]) for layer in layers},
        np.asarray(sweep.probability), _shown(net, strip), [float(amounts[i]) for i in picks]))
    numbers['transforms'][name] = {
        'unit': unit, 'amounts': sweep.amounts,
        'distance': {layer: sweep.distance[layer] for layer in layers},
        'probability': sweep.probability, 'top_class': sweep.top_class}
  log('invariance: drawing')
  fig = plots.invariance_figure(panels, chosen.names, layers,
                                f'Invariance, {net.config.model} step {net.step}')
  caption = (f'Fig. 5. {len(labels)} images ({chosen.description}) under vertical '
             f'translation, scaling about the centre and rotation about the centre (bilinear '
             f'resampling, uncovered pixels set to {fill:g} in the model\'s input, i.e. the '
             f'mean pixel). Left: the first image at a few amounts. Then the Euclidean '
             f'distance between the feature vectors (flattened post-ReLU outputs) of the '
             f'original and the transformed image at {" and ".join(layers)}, and the '
             f'probability of the true label, one curve per image. Labels: {how}.')
  numbers.update(title='Fig. 5: invariance to translation, scale and rotation',
                 caption=caption, label_source=how)
  return fig, numbers


# --------------------------------------------------------------------------- Fig. 6


def filters(net: Net, images: examples.Images = None, *, compare: Optional[Net] = None,
            names: Optional[Sequence[str]] = None, layer: Optional[str] = None,
            features_layer: Optional[str] = None, channels: Optional[Sequence[int]] = None,
            num_features: int = 16, features: bool = True, rule: str = 'deconvnet',
            seed: int = 0, split: Optional[str] = None, max_examples: Optional[int] = None,
            log: Log = examples.silent) -> tuple[Figure, dict]:
  """Fig. 6: layer-1 filters, their RMS and layer-2 features, one column per net.

  `compare`: a second net beside the first; `names`: the columns' titles; `layer` (default
  the first conv) and `features_layer` (default the second); `channels` of the features
  layer (default `num_features` random maps); `features=False` leaves out the features
  (no dataset needed).
  """
  nets = [as_net(net)] + ([as_net(compare)] if compare is not None else [])
  if names and len(names) != len(nets):
    raise options.FigureError(f'names: give {len(nets)} names (one per checkpoint), got '
                              f'{len(names)}')
  gray = options.is_gray(nets[0])
  panels, numbers = [], {'checkpoints': []}
  for i, current in enumerate(nets):
    convs = architecture.conv_names(current.spec)
    shown_layer = options.conv_layers(current, [layer] if layer else None, 'layer',
                                      convs[:1])[0]
    feature_layer = options.conv_layers(current, [features_layer] if features_layer else None,
                                        'features_layer', convs[1:2] or convs[:1])[0]
    maps = options.choose_channels(current, feature_layer, channels, num_features, seed,
                                   'num_features')
    radius = float(current.config.get('filter_rms_radius', 0) or 0)
    name = names[i] if names else (f'{current.config.model} step {current.step}, ' + (
        f'renormalized to RMS {radius:g}' if radius > 0 else 'no renormalization'))
    batches, data_text = None, 'no dataset (features left out)'
    if features:
      data = examples.image_set(current, images, split, max_examples, log)
      batches, data_text = data.batches, data.description
    log(f'filters: {name}: {shown_layer} filters, {feature_layer} features over {data_text}')
    summary = filter_stats.summarize(current.model, current.variables, batches, shown_layer,
                                     feature_layer, maps, rule=rule)
    bank = summary.filters
    if bank.shape[-1] != 3:
      bank = np.repeat(bank.mean(-1, keepdims=True), 3, axis=-1)
    feature_tiles = None
    if summary.features is not None:
      feature_tiles = plots.blank_outside(
          plots.signed_to_display(summary.features.projection, gray=gray),
          summary.features.valid)
    panels.append(plots.FilterPanel(
        f'{name}\n{shown_layer}: {bank.shape[0]} filters {bank.shape[1]}x{bank.shape[2]}',
        plots.signed_to_display(bank, gray=gray), summary.rms, radius or None, feature_tiles,
        f'{feature_layer} features (strongest activation per map, projected)'))
    numbers['checkpoints'].append({'name': name, 'checkpoint': current.checkpoint,
                                   'step': current.step, 'model': current.config.model,
                                   'filter_rms_radius': radius, 'dataset': data_text,
                                   **filter_stats.statistics(summary)})
  log('filters: drawing')
  fig = plots.filters_figure(panels, 'Layer-1 filters and layer-2 features')
  columns = '; '.join(entry['name'] for entry in numbers['checkpoints'])
  caption = (f'Fig. 6. One column per checkpoint ({columns}). '
             f'Top: the first layer\'s filters, each scaled on its own (w / (2 max|w|) + '
             f'0.5, zero = gray). Middle: each filter\'s RMS, with the renormalization radius '
             f'(dashed) the trainer clips it to. Bottom: maps of the second conv layer '
             f'({_chosen_maps(channels, num_features, seed, "")}), each at its strongest '
             f'activation over the dataset, projected with the {rule} rule. The JSON adds '
             f'per-filter high-frequency energy (aliasing) and the filters that never '
             f'activate on the dataset (dead). {PROJECTION_NOTE}')
  numbers.update(title='Fig. 6: layer-1 filters and layer-2 features', caption=caption)
  return fig, numbers


# --------------------------------------------------------------------------- Fig. 7


def occlusion(net: Net, images: examples.Images = None, *, num_images: int = 3,
              labels: Union[None, int, Sequence[int]] = None, patch: Optional[int] = None,
              stride: Optional[int] = None, fill: float = 0.0, layer: Optional[str] = None,
              split: Optional[str] = None, log: Log = examples.silent,
              ) -> tuple[Figure, dict]:
  """Fig. 7: occlusion maps (b)-(e) for a few images.

  `patch` and `stride` default 32 and 8 at 224 pixels (8 and 2 at 32); `fill` is the
  occluder's value in the net's input space (0: the mean pixel, the paper's gray square);
  `layer` (default the last conv) gives panels (b) and (c); `labels` the correct classes.
  """
  net = as_net(net)
  convs = architecture.conv_names(net.spec)
  layer = options.conv_layers(net, [layer] if layer else None, 'layer', convs[-1:])[0]
  default_patch, default_stride = options.default_patch(net.image_size)
  patch = default_patch if patch is None else patch
  stride = default_stride if stride is None else stride
  if not 1 <= patch <= net.image_size or stride < 1:
    raise options.FigureError(f'patch must be in 1..{net.image_size} and stride positive, '
                              f'got {patch} and {stride}')
  chosen = examples.for_net(net, images, num_images, split, log=log)
  labels, how, kind = _labels(net, chosen, labels)
  class_names = [str(i) for i in range(net.num_classes)]
  rows, numbers = [], {'images': chosen.names, 'labels': labels, 'patch': patch,
                       'stride': stride, 'fill': fill, 'layer': layer, 'maps': []}
  for image, label, name in zip(chosen.images, labels, chosen.names):
    log(f'occlusion: {name} (label {label}), patch {patch}, stride {stride}')
    maps = occlusion_maps.sensitivity(net.model, net.variables, image, int(label),
                                      patch=patch, stride=stride, fill=fill, layer=layer)
    rows.append(plots.OcclusionRow(
        name, _shown(net, image), np.asarray(maps.feature),
        plots.signed_to_display(np.asarray(maps.projection), gray=options.is_gray(net)),
        np.asarray(maps.prob), np.asarray(maps.top_class), int(label), int(maps.channel),
        layer, patch, stride, class_names, kind))
    numbers['maps'].append({
        'image': name, 'label': int(label), 'channel': int(maps.channel),
        'prob': maps.prob, 'top_class': maps.top_class, 'feature': maps.feature,
        'unoccluded_prob': float(maps.unoccluded_prob),
        'unoccluded_feature': float(maps.unoccluded_feature)})
  log('occlusion: drawing')
  fig = plots.occlusion_figure(rows, f'Occlusion, {net.config.model} step {net.step}')
  caption = (f'Fig. 7. {len(rows)} images ({chosen.description}); a {patch}x{patch} square '
             f'of value {fill:g} in the model\'s input (0: the mean pixel, the paper\'s gray '
             f'square) slid with stride {stride} (shown at top left of (a)). Each map cell '
             f'sits at the centre of its occluder position. (b) summed activity of the '
             f'{layer} map holding the unoccluded image\'s strongest {layer} activation; (c) '
             f'that activation projected with the deconvnet (p / (2 max|p|) + 0.5); (d) '
             f'probability of the correct class; (e) most probable class. Labels: {how}.')
  numbers.update(title='Fig. 7: occlusion sensitivity', caption=caption, label_source=how)
  return fig, numbers


# ------------------------------------------------------------------------- Table 1


def correspondence(net: Net, images: examples.Images = None, *,
                   boxes: Union[None, Mapping, str, os.PathLike] = None, num_images: int = 5,
                   digit_class: int = 0, layers: Optional[Sequence[str]] = None,
                   num_random: int = 10, fill: float = 0.0, seed: int = 0,
                   split: Optional[str] = None, log: Log = examples.silent,
                   ) -> tuple[Figure, dict]:
  """Table 1: Delta per layer for parts occluded in every image, and for random occlusions.

  `boxes`: {part: [[row, col, height, width], ...one per image]} (or a JSON file of it),
  in the pixels of the net's input; needed for photos and image files. Without it, a
  small-input net (the digits) uses `digit_class`'s first test images and three bands of
  the centred digit. `layers` default conv5 and fc7; `num_random` random draws.
  """
  net = as_net(net)
  layers = options.named_layers(net, layers, correspondence_measure.DEFAULT_LAYERS)
  if boxes is not None:
    parts, origin = options.read_boxes(boxes)
    chosen = examples.for_net(net, images, len(next(iter(parts.values()))), split,
                              digit_class, log)
    how = f'the {origin}'
  elif images is not None or options.photo_sized(net):
    raise options.MissingInput(
        'correspondence on photos needs boxes (--boxes FILE): the same part (e.g. an eye) '
        'boxed in each image, as JSON {"part": [[row, col, height, width], ...one per '
        'image]} in the pixels of the preprocessed (center-cropped) input')
  else:
    chosen = examples.for_net(net, None, num_images, split, digit_class, log)
    parts = options.digit_parts(net.image_size, len(chosen.images))
    how = (f'the same box in every image: {len(chosen.images)} test images of class '
           f'{digit_class} (the digits are centred and size-normalized, so a box covers '
           f'about the same part of each digit)')
  if len(chosen.images) < 2:
    raise options.FigureError('correspondence needs at least 2 images')
  log(f'correspondence: {len(parts)} parts + {num_random} random draws, '
      f'{len(chosen.images)} images, layers {", ".join(layers)}')
  try:
    table = correspondence_measure.table(net.model, net.variables, chosen.images, parts,
                                         layers=layers, fill=fill, num_random=num_random,
                                         key=jax.random.key(seed))
  except ValueError as error:  # boxes or num_random that do not fit the images
    raise options.FigureError(str(error)) from None
  log('correspondence: drawing')
  fig = plots.table_figure(table['rows'], [f'Delta at {layer}' for layer in layers],
                           np.asarray(table['mean']), np.asarray(table['std']),
                           f'Correspondence (Table 1), {net.config.model} step {net.step}',
                           images=_shown(net, chosen.images), boxes=parts)
  caption = (f'Table 1. {len(chosen.images)} images ({chosen.description}); parts: {how}. '
             f'Each part is occluded (value {fill:g}: the mean pixel) in every image; eps_i is '
             f'the change of the flattened feature vector at each layer, and Delta the mean '
             f'over pairs i != j of the fraction of coordinates where sign(eps_i) and '
             f'sign(eps_j) differ (signs -1, 0, +1). Parts: Delta +- its spread over the '
             f'pairs; random: the mean +- std over {num_random} draws of boxes of the first '
             f'part\'s size at random positions (seed {seed}). Lower = more consistent. '
             f'The paper (dogs, ImageNet): layer 5 about 0.07 for parts vs 0.107 random; '
             f'layer 7 0.07 vs 0.073.')
  numbers = {'title': 'Table 1: correspondence of parts across images', 'caption': caption,
             'rows': table['rows'], 'columns': table['columns'], 'mean': table['mean'],
             'std': table['std'], 'boxes': parts, 'images': chosen.names,
             'num_random': num_random, 'seed': seed, 'fill': fill}
  return fig, numbers


FIGURES = {'top9': top9, 'evolution': evolution, 'invariance': invariance,
           'filters': filters, 'occlusion': occlusion, 'correspondence': correspondence}
