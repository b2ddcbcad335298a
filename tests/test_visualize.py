"""The figures of zfjax.report and their command line, on a smoke-trained digits workdir.

Every subcommand of zfjax-visualize (visualize.py, python -m zfjax.visualize) writes
decodable PNGs, JSON with the numbers, and an index.html linking only files that exist;
user mistakes give one-line errors and exit status 2. Each figure function runs from
Python with plain arguments, and `report.gallery` writes the folder. Plus the display
helpers of zfjax.report.plots and the pure parts of zfjax.report.strongest and
filter_stats.

The default tier runs each subcommand on its own; `visualize.py all` and the numbers of
its figures are the full tier's (about 25 s).
"""

import dataclasses
import html.parser
import json
import os
import pathlib
import subprocess
import sys

import matplotlib.figure
import matplotlib.image
import numpy as np
import pytest
from PIL import Image

from zfjax import loading
from zfjax import preprocess
from zfjax import report
from zfjax.cli import visualize
from zfjax.report import examples
from zfjax.report import filter_stats
from zfjax.report import folder
from zfjax.report import plots
from zfjax.report import strongest

REPO = pathlib.Path(__file__).resolve().parents[1]
FIGURES = ('top9', 'evolution', 'invariance', 'filters', 'occlusion', 'correspondence')


def environment():
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  return env


@pytest.fixture(scope='module')
def workdir(digits_smoke_run):
  """A digits smoke run: 4 steps, checkpoints at steps 2 and 4 (shared, read-only)."""
  return digits_smoke_run(0)


@pytest.fixture(scope='module')
def figures(workdir, tmp_path_factory):
  """`visualize.py all` on the smoke workdir (in-process, the first 120 test digits)."""
  out = tmp_path_factory.mktemp('figures')
  assert visualize.main(['all', '--workdir', str(workdir), '--out', str(out),
                         '--max-examples', '120']) == 0
  return out


class Links(html.parser.HTMLParser):
  """Every src and href of a page."""

  def __init__(self):
    super().__init__()
    self.links = []

  def handle_starttag(self, tag, attrs):
    self.links += [value for name, value in attrs if name in ('src', 'href')]


def links(page: pathlib.Path) -> list:
  parser = Links()
  parser.feed(page.read_text())
  return parser.links


def assert_png(path: pathlib.Path, min_size: int = 100):
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and image.shape[-1] in (3, 4), image.shape
  assert min(image.shape[:2]) >= min_size, image.shape
  assert np.ptp(image[..., :3]) > 0  # not a blank canvas


def read_json(path: pathlib.Path) -> dict:
  return json.loads(path.read_text())


# --------------------------------------------------------------------------- `all`


@pytest.mark.slow  # `all`: every figure at once (the full tier)
def test_all_writes_every_figure_and_an_index(figures):
  for name in FIGURES:
    assert_png(figures / f'{name}.png')
    record = read_json(figures / f'{name}.json')
    assert record['figure'] == f'{name}.png'
    assert record['provenance']['model'] == 'small_zfnet'
    assert record['provenance']['step'] == 4
    assert record['caption']
  targets = links(figures / 'index.html')
  assert targets, 'index.html links nothing'
  for target in targets:
    assert (figures / target).is_file(), target
  for name in FIGURES:
    assert f'{name}.png' in targets and f'{name}.json' in targets


@pytest.mark.slow  # `all`: every figure at once (the full tier)
def test_top9_numbers(figures):
  record = read_json(figures / 'top9.json')
  assert record['k'] == 9
  assert set(record['layers']) == {'conv1', 'conv2', 'conv3', 'conv4', 'conv5'}
  for layer in record['layers'].values():
    channels = layer['channels']
    assert len(channels) == 8  # the smoke model has 8 maps: all of them
    assert np.shape(layer['values']) == (8, 9)
    assert np.shape(layer['example']) == (8, 9)
    values = np.asarray([[-np.inf if v is None else v for v in row] for row in layer['values']])
    assert np.all(np.diff(values, axis=1) <= 0)  # strongest first
    examples = np.asarray(layer['example'])
    assert examples.max() < 120  # --max-examples
    labels = np.asarray(layer['label'])
    assert np.all((labels >= 0) & (labels < 10))


@pytest.mark.slow  # `all`: every figure at once (the full tier)
def test_evolution_has_a_row_per_checkpoint(figures):
  record = read_json(figures / 'evolution.json')
  assert record['steps'] == [2, 4]
  for layer in record['layers'].values():
    assert np.shape(layer['value'])[0] == 2
    assert np.shape(layer['value'])[1] == len(layer['channels'])


@pytest.mark.slow  # `all`: every figure at once (the full tier)
def test_invariance_numbers(figures):
  record = read_json(figures / 'invariance.json')
  assert record['layers'] == ['conv1', 'fc7']
  assert len(record['images']) == 5
  for name, unit in (('vertical translation', 'pixels'), ('scale', 'factor'),
                     ('rotation', 'degrees')):
    sweep = record['transforms'][name]
    assert sweep['unit'] == unit
    amounts = len(sweep['amounts'])
    assert np.shape(sweep['probability']) == (5, amounts)
    for layer in ('conv1', 'fc7'):
      distance = np.asarray(sweep['distance'][layer])
      assert distance.shape == (5, amounts)
      assert np.all(distance >= 0)
  translation = record['transforms']['vertical translation']
  assert translation['amounts'] == list(range(-9, 10))  # +-60 px at 224, scaled to 32
  zero = translation['amounts'].index(0)
  np.testing.assert_allclose(np.asarray(translation['distance']['conv1'])[:, zero], 0,
                             atol=1e-3)


@pytest.mark.slow  # `all`: every figure at once (the full tier)
def test_occlusion_numbers(figures):
  record = read_json(figures / 'occlusion.json')
  assert (record['patch'], record['stride']) == (8, 2)
  assert len(record['maps']) == 3
  for item in record['maps']:
    assert np.shape(item['prob']) == (13, 13)  # (32 - 8) // 2 + 1
    assert np.shape(item['top_class']) == (13, 13)
    prob = np.asarray(item['prob'])
    assert np.all((prob >= 0) & (prob <= 1))


@pytest.mark.slow  # `all`: every figure at once (the full tier)
def test_correspondence_numbers(figures):
  record = read_json(figures / 'correspondence.json')
  assert record['rows'] == ['top', 'centre', 'bottom', 'random']
  assert record['columns'] == ['conv5', 'fc7']
  assert np.shape(record['mean']) == (4, 2)
  assert np.all((np.asarray(record['mean']) >= 0) & (np.asarray(record['mean']) <= 1))
  assert 'same box' in record['caption']
  boxes = np.asarray(record['boxes']['top'])
  assert boxes.shape == (5, 4) and np.all(boxes == boxes[0])


@pytest.mark.slow  # `all`: every figure at once (the full tier)
def test_filters_numbers(figures):
  record = read_json(figures / 'filters.json')
  (only,) = record['checkpoints']
  assert only['num_filters'] == 8
  assert len(only['rms']) == 8
  assert only['features']['layer'] == 'conv2'


# --------------------------------------------------------------------- subcommands


@pytest.mark.slow  # report.filters runs from Python in the default tier
def test_filters_compares_two_checkpoints(workdir, tmp_path):
  out = tmp_path / 'figures'
  assert visualize.main(['filters', '--checkpoint', str(workdir / 'checkpoints' / '2'),
                         '--compare', str(workdir), '--compare-step', '4',
                         '--names', 'early,late', '--max-examples', '40',
                         '--out', str(out)]) == 0
  record = read_json(out / 'filters.json')
  assert [c['name'] for c in record['checkpoints']] == ['early', 'late']
  assert [c['step'] for c in record['checkpoints']] == [2, 4]
  assert_png(out / 'filters.png')
  assert links(out / 'index.html').count('filters.png') >= 1


def test_evolution_of_chosen_steps_and_channels(workdir, tmp_path):
  out = tmp_path / 'figures'
  assert visualize.main(['evolution', '--workdir', str(workdir), '--steps', '2,4',
                         '--layers', 'conv2', '--channels', '0,3', '--max-examples', '40',
                         '--out', str(out)]) == 0
  record = read_json(out / 'evolution.json')
  assert record['steps'] == [2, 4]
  assert record['layers']['conv2']['channels'] == [0, 3]
  assert np.shape(record['layers']['conv2']['value']) == (2, 2)


@pytest.mark.slow  # report.top9 from Python is in the default tier
def test_top9_options_and_index_accumulates(workdir, tmp_path):
  out = tmp_path / 'figures'
  common = ['--workdir', str(workdir), '--out', str(out), '--max-examples', '50']
  assert visualize.main(['top9', *common, '--layers', 'conv1,conv5', '--channels', '1,2',
                         '--k', '4']) == 0
  record = read_json(out / 'top9.json')
  assert list(record['layers']) == ['conv1', 'conv5']
  assert np.shape(record['layers']['conv5']['values']) == (2, 4)
  assert visualize.main(['invariance', *common, '--num-images', '2',
                         '--translations=-2:2:1', '--scales', '1,1.5', '--rotations', '0,90']) == 0
  record = read_json(out / 'invariance.json')
  assert record['transforms']['vertical translation']['amounts'] == [-2, -1, 0, 1, 2]
  assert set(links(out / 'index.html')) >= {'top9.png', 'invariance.png'}


def test_image_files_gray_and_rgba_are_converted(workdir, tmp_path, capsys):
  gray = tmp_path / 'gray.png'
  rgba = tmp_path / 'rgba.png'
  Image.fromarray((np.arange(40 * 48).reshape(40, 48) % 256).astype(np.uint8), 'L').save(gray)
  Image.fromarray(np.full((30, 30, 4), 200, np.uint8), 'RGBA').save(rgba)
  out = tmp_path / 'figures'
  assert visualize.main(['occlusion', '--workdir', str(workdir), '--images', str(gray),
                         str(rgba), '--label', '3', '--patch', '6', '--stride', '3',
                         '--out', str(out)]) == 0
  printed = capsys.readouterr().out
  assert 'tiled to RGB' in printed and 'alpha channel dropped' in printed
  record = read_json(out / 'occlusion.json')
  assert record['labels'] == [3, 3]
  assert np.shape(record['maps'][0]['prob']) == (9, 9)  # (32 - 6) // 3 + 1
  assert_png(out / 'occlusion.png')


def test_correspondence_with_boxes(workdir, tmp_path):
  boxes = tmp_path / 'boxes.json'
  boxes.write_text(json.dumps({'left': [[10, 2, 6, 6]] * 3, 'right': [[10, 24, 6, 6]] * 3}))
  out = tmp_path / 'figures'
  assert visualize.main(['correspondence', '--workdir', str(workdir), '--boxes', str(boxes),
                         '--num-random', '3', '--out', str(out)]) == 0
  record = read_json(out / 'correspondence.json')
  assert record['rows'] == ['left', 'right', 'random']


# -------------------------------------------------------------------- bad input


def fails(argv, capsys, *expected):
  assert visualize.main(argv) == 2
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  assert 'Traceback' not in err
  for text in expected:
    assert text in err, err
  return err


def test_missing_workdir(tmp_path, capsys):
  fails(['top9', '--workdir', str(tmp_path / 'nope'), '--out', str(tmp_path)], capsys,
        'does not exist')
  fails(['top9', '--out', str(tmp_path)], capsys, '--workdir')
  fails(['top9', '--checkpoint', str(tmp_path), '--out', str(tmp_path)], capsys, 'checkpoint')


def test_unknown_layer_channel_and_step(workdir, tmp_path, capsys):
  common = ['--workdir', str(workdir), '--out', str(tmp_path)]
  fails(['top9', *common, '--layers', 'conv9'], capsys, "'conv9'", 'conv1')
  fails(['top9', *common, '--layers', 'fc7'], capsys, "'fc7'")
  fails(['top9', *common, '--layers', 'conv1', '--channels', '99'], capsys, '99', 'conv1')
  fails(['invariance', *common, '--layers', 'conv1,fc9'], capsys, 'fc9')
  fails(['evolution', *common, '--steps', '3'], capsys, '3')
  fails(['occlusion', *common, '--label', '12'], capsys, '12')
  fails(['top9', *common, '--step', 'newest'], capsys, '--step')


def test_bad_image_files(workdir, tmp_path, capsys):
  text = tmp_path / 'notes.png'
  text.write_text('not an image')
  common = ['--workdir', str(workdir), '--out', str(tmp_path)]
  fails(['occlusion', *common, '--images', str(text)], capsys, 'not an image')
  fails(['occlusion', *common, '--images', str(tmp_path / 'missing.png')], capsys,
        'does not exist')


@pytest.mark.slow  # subprocesses; the same mistakes run in-process in the default tier
def test_cli_exit_codes_without_traceback(tmp_path):
  for program, argv, expected in (
      (['visualize.py'], ['frobnicate'], 'unknown command'),
      (['visualize.py'], ['top9', '--workdir', str(tmp_path / 'nope')], 'does not exist'),
      (['-m', 'zfjax.visualize'], ['occlusion', '--max-examples', '0'], 'max-examples')):
    proc = subprocess.run([sys.executable, *program, *argv], cwd=tmp_path if program[0] == '-m'
                          else REPO, text=True, capture_output=True, env=environment(),
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr and 'Traceback' not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_mistakes_in_flags_and_output(workdir, tmp_path, capsys):
  common = ['--workdir', str(workdir)]
  fails(['top9', *common, '--out', str(tmp_path), '--max-examples', '0'], capsys,
        '--max-examples', 'positive')
  taken = tmp_path / 'taken.png'
  taken.write_bytes(b'a file')
  fails(['filters', *common, '--no-features', '--out', str(taken)], capsys, 'is a file')
  fails(['top9', *common, '--out', str(tmp_path), 'stray.png'], capsys, 'unexpected',
        'stray.png')
  fails(['top9', *common, '--checkpoint', str(workdir), '--out', str(tmp_path)], capsys,
        'exactly one of --workdir')
  fails(['invariance', *common, '--out', str(tmp_path), '--translations', '1:0:0'], capsys,
        '--translations')
  fails(['occlusion', *common, '--out', str(tmp_path), '--label', '1,2,3,4'], capsys,
        'one per image')


# ------------------------------------------------------------------ from Python


@pytest.mark.slow  # the full tier; each subcommand runs the same functions by default
def test_each_figure_from_python_with_plain_arguments(workdir):
  """Every figure: a Figure and its numbers, from a path or a Loaded net and plain values."""
  net = loading.load(workdir)
  made = {
      'top9': report.top9(str(workdir), layers=['conv1'], channels=[0, 5], k=3,
                          max_examples=30),
      'evolution': report.evolution(net, steps=[2, 4], layers=['conv2'], channels=[1],
                                    max_examples=30),
      'invariance': report.invariance(net, num_images=2, labels=[3, 4],
                                      translations=[-1, 0, 1], scales=[1.0, 1.25],
                                      rotations=[0, 90]),
      'filters': report.filters(net, features=False),
      'occlusion': report.occlusion(net, num_images=1, patch=8, stride=8),
      'correspondence': report.correspondence(net, num_images=3, num_random=2),
  }
  for name, (fig, numbers) in made.items():
    assert isinstance(fig, matplotlib.figure.Figure), name
    assert numbers['title'] and numbers['caption'], name
  top9 = made['top9'][1]['layers']['conv1']
  assert np.shape(top9['values']) == (2, 3) and np.max(top9['example']) < 30
  assert np.shape(made['evolution'][1]['layers']['conv2']['value']) == (2, 1)
  invariance = made['invariance'][1]
  assert np.asarray(invariance['labels']).tolist() == [3, 4]
  assert np.shape(invariance['transforms']['rotation']['probability']) == (2, 2)
  assert 'features' not in made['filters'][1]['checkpoints'][0]
  assert np.shape(made['occlusion'][1]['maps'][0]['prob']) == (4, 4)  # (32 - 8) // 8 + 1
  assert list(made['correspondence'][1]['rows']) == ['top', 'centre', 'bottom', 'random']
  with pytest.raises(report.FigureError, match="'conv9'"):
    report.top9(net, layers=['conv9'])
  with pytest.raises(report.FigureError, match='label 10 does not exist'):
    report.occlusion(net, labels=10)


@pytest.mark.slow  # the full tier (each figure from Python stays in the default one)
def test_gallery_writes_pngs_json_and_index(workdir, tmp_path):
  out, logged = tmp_path / 'gallery', []
  written = report.gallery(str(workdir), out, max_examples=20, log=logged.append,
                           skip=('top9', 'evolution', 'invariance'))  # the full tier's `all`
  names = ('filters', 'occlusion', 'correspondence')
  assert [path.name for path in written] == [f'{name}.png' for name in names]
  assert [line for line in logged if line.startswith('==')] == [f'== {n}' for n in names]
  for name in names:
    assert_png(out / f'{name}.png')
    assert read_json(out / f'{name}.json')['provenance']['step'] == 4
  assert set(links(out / 'index.html')) == {f'{name}.{ext}' for name in names
                                            for ext in ('png', 'json')}
  with pytest.raises(report.FigureError, match='unknown figures'):
    report.gallery(workdir, out, skip=('fig9',))


def test_image_files_become_the_nets_input(workdir, tmp_path):
  """Paper-space nets subtract their mean; ImageNet-normalized ones get their own input."""
  path = tmp_path / 'photo.png'
  rgb = (np.random.default_rng(0).uniform(0, 255, (40, 52, 3))).astype(np.uint8)
  Image.fromarray(rgb).save(path)
  paper = loading.load(workdir)
  imagenet = dataclasses.replace(paper, normalization=preprocess.IMAGENET, mean=None)
  for net in (paper, imagenet):
    chosen = examples.for_net(net, [path])
    expected = preprocess.model_input(rgb, net.normalization, net.mean, size=net.image_size,
                                      resize=net.resize_size)
    np.testing.assert_allclose(chosen.images[0], expected, rtol=1e-6, atol=1e-4)
    shown = net.to_display(chosen.images[0])
    np.testing.assert_allclose(shown, preprocess.preprocess(rgb, 0.0, size=net.image_size,
                                                            resize=net.resize_size),
                               atol=1e-3)
  assert not np.allclose(examples.for_net(paper, [path]).images,
                         examples.for_net(imagenet, [path]).images)


# ------------------------------------------------------------------ index and helpers


def test_index_escapes_and_links_only_existing_files(tmp_path):
  (tmp_path / 'a.png').write_bytes(b'png')
  entries = [{'key': 'a', 'title': '<b>A</b>', 'png': 'a.png', 'json': 'a.json',
              'caption': 'x < y & "z"', 'model': 'm', 'command': 'visualize.py <x>'},
             {'key': 'b', 'title': 'B', 'png': 'b.png', 'json': 'b.json', 'caption': 'gone'},
             {'key': 'c', 'title': 'C', 'png': '../etc/passwd', 'caption': 'outside'}]
  page = folder.write_index(tmp_path, entries)
  text = page.read_text()
  assert '<b>A</b>' not in text and '&lt;b&gt;A&lt;/b&gt;' in text
  assert 'x &lt; y &amp; &quot;z&quot;' in text
  assert links(page) == ['a.png', 'a.png']  # no JSON (absent), no b, no path outside
  assert 'gone' not in text and 'outside' not in text


def test_display_normalization():
  x = np.array([[[[-2.0, 0.0, 1.0]]], [[[0.0, 0.0, 0.0]]]])
  shown = plots.signed_to_display(x)
  np.testing.assert_allclose(shown[0, 0, 0], [0.0, 0.5, 0.75])
  np.testing.assert_allclose(shown[1], 0.5)
  tiles = np.zeros((5, 4, 3, 3))
  assert plots.mosaic(tiles, columns=2, pad=1).shape == (3 * 5 - 1, 2 * 4 - 1, 3)
  assert plots.block_mosaic(np.zeros((2, 4, 6, 6, 3))).shape[-1] == 3


def test_filter_statistics():
  checker = np.indices((4, 4)).sum(0) % 2 * 2.0 - 1.0
  bank = np.stack([np.repeat(checker[..., None], 3, -1), np.ones((4, 4, 3))])
  high = filter_stats.high_frequency_fraction(bank)
  np.testing.assert_allclose(high, [1.0, 0.0])
  np.testing.assert_allclose(filter_stats.rms_per_filter(bank), [1.0, 1.0])
  params = {'conv1': {'kernel': np.moveaxis(bank, 0, -1)}}
  np.testing.assert_array_equal(filter_stats.filter_bank(params), bank)
  with pytest.raises(ValueError, match='conv layer'):
    filter_stats.filter_bank(params, 'conv2')


def test_select_steps():
  assert strongest.select_steps((2, 4, 6)) == (2, 4, 6)
  assert strongest.select_steps((2, 4, 6), [6, 2]) == (2, 6)
  with pytest.raises(strongest.MissingStepError, match=r'\[3\]'):
    strongest.select_steps((2, 4), [3])


# ------------------------------------------------------- a photo-sized (224) model


@pytest.fixture(scope='module')
def photo_workdir(tmp_path_factory):
  """A narrow, untrained ZFNet on 224x224 inputs whose dataset is not on this machine.

  Its dataset, imagenet2012, is looked for in an empty data_dir: the photo and fallback
  paths.
  """
  from zfjax.configs import zfnet  # pylint: disable=g-import-not-at-top
  from zfjax import checkpoints, models  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp('zf_photo')
  config = zfnet.get_config()
  config.update(conv_features=(8, 8, 8, 8, 8), fc_features=(16, 16), init='he_normal',
                data_dir=str(path / 'no_data'))
  model = models.from_config(config, 1000)
  params = models.init_params(model, 0, 224)
  manager = checkpoints.create_manager(path / 'checkpoints', async_save=False)
  checkpoints.save(manager, 7, {'params': params}, config=config)
  manager.wait_until_finished()
  manager.close()
  return path


@pytest.mark.slow  # a 224x224 net; photos into a net's input are in the default tier
def test_photo_model_uses_sample_photos(photo_workdir, tmp_path, capsys):
  out = tmp_path / 'figures'
  common = ['--workdir', str(photo_workdir), '--out', str(out)]
  assert visualize.main(['occlusion', *common, '--num-images', '1', '--patch', '56',
                         '--stride', '56']) == 0
  record = read_json(out / 'occlusion.json')
  assert record['images'] == ['astronaut']
  assert 'most probable class' in record['label_source']
  assert np.shape(record['maps'][0]['prob']) == (4, 4)
  assert record['provenance']['notes'] and 'channel means' in record['provenance']['notes'][0]
  assert visualize.main(['top9', *common, '--layers', 'conv1', '--channels', '0',
                         '--k', '2']) == 0
  assert 'using the sample photos' in capsys.readouterr().out
  record = read_json(out / 'top9.json')
  assert 'sample photos' in record['dataset']
  fails(['correspondence', *common], capsys, 'needs boxes')
  assert set(links(out / 'index.html')) == {'occlusion.png', 'occlusion.json', 'top9.png',
                                            'top9.json'}
