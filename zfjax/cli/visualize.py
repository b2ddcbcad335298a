r"""Figures of the paper's analyses from a trained checkpoint, and an HTML page of them.

    zfjax-visualize all --workdir /tmp/zf --out /tmp/zf/figures
    python visualize.py top9 --workdir /tmp/zf --layers conv1,conv5 --num-channels 9 --k 9
    python visualize.py occlusion --checkpoint /tmp/zfnet/checkpoints/9000 \
        --images dog.jpg --label 207 --patch 32 --stride 8
    python -m zfjax.visualize correspondence --workdir /tmp/zfnet --images d1.jpg d2.jpg \
        --boxes parts.json       # {"right eye": [[row, col, h, w], ...one per image], ...}
    zfjax-visualize microscope --workdir /tmp/zf --out /tmp/zf/microscope

Subcommands: top9 (Fig. 2), evolution (Fig. 4), invariance (Fig. 5), filters (Fig. 6),
occlusion (Fig. 7), correspondence (Table 1), all (every one with its defaults), and
microscope (a static site of every unit: docs/microscope.md; --out default
WORKDIR/microscope, else ./microscope). Each
takes --workdir (a train.py workdir: its latest checkpoint, or --step) or --checkpoint (a
checkpoint directory), and writes into --out (default WORKDIR/figures, else ./figures) a
PNG per figure, its numbers as JSON, and index.html with a caption per figure. The
figures are zfjax.report's; docs/figures.md describes each and its options. Mistakes
(a missing workdir, an unknown layer or channel, an unreadable image) exit with status 2
and one line on stderr.
"""

from __future__ import annotations

import functools
import logging
import pathlib
import sys
import time
from typing import Callable, Optional, Sequence

from absl import flags

from zfjax import cli
from zfjax import loading
from zfjax.report import figures
from zfjax.report import folder
from zfjax.report import microscope_site
from zfjax.report import options
from zfjax.report import strongest

PROGRAM = 'zfjax-visualize'
LIST_FLAGS = ('images',)  # --images a.jpg b.jpg: a list, as before
HELP = {'top9': 'Fig. 2: top-9 activations per map, projected, beside image patches',
        'evolution': 'Fig. 4: strongest activation per map at each checkpoint',
        'invariance': 'Fig. 5: distances and probability under translation, scale, rotation',
        'filters': 'Fig. 6: layer-1 filters, RMS and layer-2 features of one or two nets',
        'occlusion': 'Fig. 7: occlusion sensitivity maps',
        'correspondence': 'Table 1: correspondence of occluded parts across images',
        'all': 'every figure with its defaults',
        'microscope': 'a static, linkable site of every unit of every layer'}


# ------------------------------------------------------------------------ flags


def _common(fv: flags.FlagValues) -> None:
  """The flags every subcommand takes: where the net is, the output, the images."""
  flags.DEFINE_string('workdir', None, 'a train.py workdir (its latest checkpoint, or --step)',
                      flag_values=fv)
  flags.DEFINE_string('checkpoint', None, 'a checkpoint directory (WORKDIR/checkpoints/STEP)',
                      flag_values=fv)
  flags.DEFINE_string('step', 'latest', "which checkpoint: 'latest', 'best' or a step",
                      flag_values=fv)
  flags.DEFINE_string('out', None, 'output folder (default: WORKDIR/figures, else ./figures)',
                      flag_values=fv)
  flags.DEFINE_multi_string('images', None, 'image files to use instead of the default '
                            'images (--images a.jpg b.jpg)', flag_values=fv)
  flags.DEFINE_string('split', None, "dataset split (default: the config's eval_split)",
                      flag_values=fv)
  flags.DEFINE_integer('max-examples', None, 'use only the first N examples of the split '
                       '(default: all)', lower_bound=1, flag_values=fv)
  flags.DEFINE_enum('rule', 'deconvnet', ['deconvnet', 'guided', 'backprop'],
                    'projection rule (the paper: deconvnet)', flag_values=fv)
  flags.DEFINE_integer('seed', 0, 'seed of random choices', flag_values=fv)


def _maps(fv: flags.FlagValues, num_channels: int) -> None:
  flags.DEFINE_string('layers', None, 'comma-separated conv layers (default: all)',
                      flag_values=fv)
  flags.DEFINE_string('channels', None, 'comma-separated maps (default: a random subset)',
                      flag_values=fv)
  flags.DEFINE_integer('num-channels', num_channels, 'random maps per layer', lower_bound=1,
                       flag_values=fv)


def _top9(fv: flags.FlagValues) -> None:
  _maps(fv, 9)
  flags.DEFINE_integer('k', 9, 'activations per map', lower_bound=1, flag_values=fv)


def _evolution(fv: flags.FlagValues) -> None:
  _maps(fv, 3)
  flags.DEFINE_string('steps', None, 'comma-separated checkpoint steps (default: all kept)',
                      flag_values=fv)


def _per_image(fv: flags.FlagValues, num_images: int, label: str) -> None:
  flags.DEFINE_integer('num-images', num_images, 'images (default images only)',
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_string('label', None, label, flag_values=fv)
  flags.DEFINE_float('fill', 0.0, "occluder / uncovered pixels' value (0: the mean)",
                     flag_values=fv)


def _invariance(fv: flags.FlagValues) -> None:
  _per_image(fv, 5, 'true label(s): one, or comma-separated per image')
  flags.DEFINE_string('layers', None, 'two layers to compare (default: conv1,fc7)',
                      flag_values=fv)
  flags.DEFINE_string('translations', None, "pixels, 'start:stop:step' or a comma list "
                      "(default: the paper's +-60 step 5, scaled to the input size)",
                      flag_values=fv)
  flags.DEFINE_string('scales', None, 'factors (default 1.0:1.8:0.05)', flag_values=fv)
  flags.DEFINE_string('rotations', None, 'degrees (default 0:350:10)', flag_values=fv)


def _occlusion(fv: flags.FlagValues) -> None:
  _per_image(fv, 3, 'correct class(es): one, or comma-separated per image')
  flags.DEFINE_integer('patch', None, 'occluder size (default: 32 at 224 px, 8 at 32)',
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_integer('stride', None, 'occluder stride (default: 8 at 224, 2 at 32)',
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_string('layer', None, 'feature layer of panels (b), (c) (default: last conv)',
                      flag_values=fv)


def _boxes(fv: flags.FlagValues) -> None:
  flags.DEFINE_string('boxes', None, 'JSON file or text {part: [[row, col, h, w], ...]}, one '
                      'box per image (needed for photos)', flag_values=fv)


def _correspondence(fv: flags.FlagValues) -> None:
  _boxes(fv)
  flags.DEFINE_integer('num-images', 5, 'images (default images only)', lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_integer('digit-class', 0, 'digits: the class whose images share the boxes',
                       flag_values=fv)
  flags.DEFINE_string('layers', None, 'layers (default: conv5,fc7)', flag_values=fv)
  flags.DEFINE_integer('num-random', 10, 'random draws', flag_values=fv)
  flags.DEFINE_float('fill', 0.0, 'occluder value (0: the mean)', flag_values=fv)


def _compare(fv: flags.FlagValues) -> None:
  flags.DEFINE_string('compare', None, 'a second workdir or checkpoint to show beside',
                      flag_values=fv)
  flags.DEFINE_string('compare-step', 'latest', 'step of --compare', flag_values=fv)


def _filters(fv: flags.FlagValues) -> None:
  _compare(fv)
  flags.DEFINE_string('names', None, 'comma-separated column titles', flag_values=fv)
  flags.DEFINE_string('layer', None, 'layer of the filters (default: the first conv)',
                      flag_values=fv)
  flags.DEFINE_string('features-layer', None, 'layer of the features (default: the 2nd '
                      'conv)', flag_values=fv)
  flags.DEFINE_string('channels', None, 'comma-separated feature maps (default: random)',
                      flag_values=fv)
  flags.DEFINE_integer('num-features', 16, 'random feature maps', lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_boolean('no-features', False, 'filters only (no dataset)', flag_values=fv)


def _all(fv: flags.FlagValues) -> None:
  _boxes(fv)
  _compare(fv)
  flags.DEFINE_string('skip', '', 'comma-separated figures to leave out', flag_values=fv)


def _microscope(fv: flags.FlagValues) -> None:
  flags.DEFINE_string('layers', None, 'comma-separated layers (default: every conv, fc6, '
                      'fc7)', flag_values=fv)
  flags.DEFINE_integer('k', 9, 'examples per unit', lower_bound=1, flag_values=fv)
  flags.DEFINE_integer('tile', 64, 'pixels of a crop or projection on the pages',
                       lower_bound=8, flag_values=fv)
  flags.DEFINE_boolean('evolution', True, "each unit's top-k at the other checkpoints kept "
                       '(--noevolution: not)', flag_values=fv)


def _definer(extra: Callable[[flags.FlagValues], None]) -> cli.Define:
  def define(argv: list) -> flags.FlagValues:
    del argv
    fv = flags.FlagValues()
    _common(fv)
    extra(fv)
    return fv
  return define


# ------------------------------------------------------------------------ values


def split_list(text: Optional[str]) -> list:
  """'a, b,c' -> ['a', 'b', 'c']; None or '' -> []."""
  return [t.strip() for t in (text or '').split(',') if t.strip()]


def parse_ints(text: Optional[str], flag: str) -> Optional[list]:
  """A comma list of integers, or None when the flag is not given."""
  if text is None:
    return None
  try:
    return [int(t) for t in split_list(text)]
  except ValueError:
    raise cli.UserError(f'{flag}: expected comma-separated integers, got {text!r}') from None


def parse_amounts(text: Optional[str], flag: str) -> Optional[list]:
  """'start:stop:step' (stop included) or a comma list of numbers; None when not given."""
  if text is None:
    return None
  try:
    if ':' in text:
      start, stop, step = (float(t) for t in text.split(':'))
      if step <= 0:
        raise ValueError
      count = int((stop - start) / step + 1e-6) + 1 if stop >= start else 0
      values = [start + step * i for i in range(count)]
    else:
      values = [float(t) for t in split_list(text)]
  except ValueError:
    raise cli.UserError(f"{flag}: expected 'start:stop:step' (step > 0) or comma-separated "
                        f'numbers, got {text!r}') from None
  if not values:
    raise cli.UserError(f'{flag}: no amounts in {text!r}')
  return values


def _value(fv: flags.FlagValues, name: str):
  return fv[name].value


def _images(fv: flags.FlagValues, args: list) -> Optional[list]:
  images = _value(fv, 'images')
  if args:
    raise cli.UserError(f'unexpected arguments {args} (image files go after --images)')
  return list(images) if images else None


def _load(path: str, step: str, log: Callable[[str], None]) -> loading.Loaded:
  net = loading.load(path, cli.parse_step(step))
  for note in net.notes:
    log(f'note: {note}')
  return net


def _where(fv: flags.FlagValues) -> str:
  workdir, checkpoint = _value(fv, 'workdir'), _value(fv, 'checkpoint')
  if bool(workdir) == bool(checkpoint):
    raise cli.UserError('give exactly one of --workdir DIR or --checkpoint DIR')
  return workdir or checkpoint


def _out(fv: flags.FlagValues, default: str = 'figures') -> pathlib.Path:
  if _value(fv, 'out'):
    return pathlib.Path(_value(fv, 'out'))
  workdir = _value(fv, 'workdir')
  return pathlib.Path(workdir) / default if workdir else pathlib.Path(default)


def _command_line(name: str, fv: flags.FlagValues) -> str:
  """How the figures were made, for their captions: the program and the flags given."""
  given = [fv[flag].serialize() for flag in fv if fv[flag].present]
  return ' '.join([PROGRAM, name, *given])


def timed_log(stream=None) -> Callable[[str], None]:
  """A log printing each message with the seconds since its start (stdout by default)."""
  start = time.perf_counter()

  def log(message: str) -> None:
    print(f'[{time.perf_counter() - start:7.1f}s] {message}', file=stream or sys.stdout,
          flush=True)
  return log


def _quietly(body: cli.Body) -> cli.Body:
  """`body` with library log lines below ERROR kept off the console.

  Orbax and TFDS log notices while a net and its dataset are looked for (a missing
  dataset is reported by the figures themselves); the program prints its own progress.
  """
  @functools.wraps(body)
  def quiet_body(fv: flags.FlagValues, args: list) -> Optional[int]:
    absl_logger = logging.getLogger('absl')
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
      return body(fv, args)
    finally:
      absl_logger.setLevel(level)
  return quiet_body


# ----------------------------------------------------------------- the figures


def _shared(fv: flags.FlagValues, images: Optional[list], log) -> dict:
  return dict(images=images, split=_value(fv, 'split'), log=log)


def _dataset_wide(fv: flags.FlagValues, images: Optional[list], log) -> dict:
  return dict(_shared(fv, images, log), max_examples=_value(fv, 'max-examples'),
              rule=_value(fv, 'rule'), seed=_value(fv, 'seed'))


def _top9_args(fv, images, log) -> dict:
  return dict(_dataset_wide(fv, images, log), layers=split_list(_value(fv, 'layers')),
              channels=parse_ints(_value(fv, 'channels'), '--channels'),
              num_channels=_value(fv, 'num-channels'), k=_value(fv, 'k'))


def _evolution_args(fv, images, log) -> dict:
  return dict(_dataset_wide(fv, images, log), steps=parse_ints(_value(fv, 'steps'), '--steps'),
              layers=split_list(_value(fv, 'layers')),
              channels=parse_ints(_value(fv, 'channels'), '--channels'),
              num_channels=_value(fv, 'num-channels'))


def _invariance_args(fv, images, log) -> dict:
  return dict(_shared(fv, images, log), num_images=_value(fv, 'num-images'),
              labels=parse_ints(_value(fv, 'label'), '--label'),
              layers=split_list(_value(fv, 'layers')), fill=_value(fv, 'fill'),
              translations=parse_amounts(_value(fv, 'translations'), '--translations'),
              scales=parse_amounts(_value(fv, 'scales'), '--scales'),
              rotations=parse_amounts(_value(fv, 'rotations'), '--rotations'))


def _occlusion_args(fv, images, log) -> dict:
  return dict(_shared(fv, images, log), num_images=_value(fv, 'num-images'),
              labels=parse_ints(_value(fv, 'label'), '--label'), patch=_value(fv, 'patch'),
              stride=_value(fv, 'stride'), fill=_value(fv, 'fill'), layer=_value(fv, 'layer'))


def _correspondence_args(fv, images, log) -> dict:
  return dict(_shared(fv, images, log), boxes=_value(fv, 'boxes'),
              num_images=_value(fv, 'num-images'), digit_class=_value(fv, 'digit-class'),
              layers=split_list(_value(fv, 'layers')), num_random=_value(fv, 'num-random'),
              fill=_value(fv, 'fill'), seed=_value(fv, 'seed'))


def _filters_args(fv, images, log) -> dict:
  compare = None
  if _value(fv, 'compare'):
    compare = _load(_value(fv, 'compare'), _value(fv, 'compare-step'), log)
  return dict(_dataset_wide(fv, images, log), compare=compare,
              names=split_list(_value(fv, 'names')) or None, layer=_value(fv, 'layer'),
              features_layer=_value(fv, 'features-layer'),
              channels=parse_ints(_value(fv, 'channels'), '--channels'),
              num_features=_value(fv, 'num-features'), features=not _value(fv, 'no-features'))


FIGURE_FLAGS = {'top9': (_top9, _top9_args), 'evolution': (_evolution, _evolution_args),
                'invariance': (_invariance, _invariance_args),
                'filters': (_filters, _filters_args),
                'occlusion': (_occlusion, _occlusion_args),
                'correspondence': (_correspondence, _correspondence_args)}


def _figure_body(name: str) -> cli.Body:
  """The work of one figure's subcommand: load the net, draw the figure, write it."""
  def body(fv: flags.FlagValues, args: list) -> int:
    images, log = _images(fv, args), timed_log()
    net = _load(_where(fv), _value(fv, 'step'), log)
    log(f'loaded {net.describe()}')
    out = folder.FigureFolder(_out(fv), net, _command_line(name, fv))
    fig, numbers = figures.FIGURES[name](net, **FIGURE_FLAGS[name][1](fv, images, log))
    out.write(name, fig, numbers)
    log(f'done: {len(out.written)} figure(s) and index.html in {out.directory}')
    return 0
  return body


def _all_body(fv: flags.FlagValues, args: list) -> int:
  """Every figure with its defaults (`report.gallery`)."""
  images, log = _images(fv, args), timed_log()
  net = _load(_where(fv), _value(fv, 'step'), log)
  log(f'loaded {net.describe()}')
  compare = None
  if _value(fv, 'compare'):
    compare = _load(_value(fv, 'compare'), _value(fv, 'compare-step'), log)
  written = folder.gallery(
      net, _out(fv), images=images, split=_value(fv, 'split'),
      max_examples=_value(fv, 'max-examples'), rule=_value(fv, 'rule'),
      seed=_value(fv, 'seed'), boxes=_value(fv, 'boxes'), compare=compare,
      skip=split_list(_value(fv, 'skip')), log=log, command=_command_line('all', fv))
  log(f'done: {len(written)} figure(s) and index.html in {_out(fv)}')
  return 0


def _microscope_body(fv: flags.FlagValues, args: list) -> int:
  """The microscope site (`report.microscope`)."""
  images, log = _images(fv, args), timed_log()
  net = _load(_where(fv), _value(fv, 'step'), log)
  log(f'loaded {net.describe()}')
  site = microscope_site.microscope(
      net, _out(fv, 'microscope'), images=images, split=_value(fv, 'split'),
      max_examples=_value(fv, 'max-examples'), layers=split_list(_value(fv, 'layers')),
      k=_value(fv, 'k'), rule=_value(fv, 'rule'), tile=_value(fv, 'tile'),
      evolution=_value(fv, 'evolution'), log=log, command=_command_line('microscope', fv))
  log(f'done: open {site.directory / "index.html"} ({site.units} units, '
      f'{site.bytes / 2**20:.1f} MiB)')
  return 0


COMMANDS = {name: cli.Command(HELP[name], _definer(define), _quietly(_figure_body(name)))
            for name, (define, _) in FIGURE_FLAGS.items()}
COMMANDS['all'] = cli.Command(HELP['all'], _definer(_all), _quietly(_all_body))
COMMANDS['microscope'] = cli.Command(HELP['microscope'], _definer(_microscope),
                                     _quietly(_microscope_body))


def main(argv: Optional[Sequence[str]] = None) -> int:
  """zfjax-visualize: see the module doc."""
  argv = cli.spread_lists(sys.argv[1:] if argv is None else argv, LIST_FLAGS)
  return cli.run_commands(PROGRAM, __doc__, COMMANDS, argv,
                          user_errors=(options.FigureError, strongest.MissingStepError))
