"""The microscope (zfjax.survey, zfjax.report.microscope_site) on a smoke-trained digits net.

The survey equals topk.search and NumPy's statistics of the same activations, whatever the
batching; the site's numbers and pictures come from the right examples; every page, link
and anchor exists; mistakes exit 2 with one line and leave no site behind. In headless
Chromium (Debian's chromium and chromium-driver, driven by selenium): no console error,
every image decodes, every link resolves, permalinks scroll to their unit, and the keys
and the jump box move between units and layers.
"""

import html.parser
import json
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import urllib.parse

import jax
import numpy as np
import pytest
from jax import lax
from PIL import Image
from selenium.webdriver.support.ui import WebDriverWait

from zfjax import loading
from zfjax import models
from zfjax import survey
from zfjax import topk
from zfjax.cli import visualize
from zfjax.report import examples
from zfjax.report import microscope_pages
from zfjax.report import microscope_pictures
from zfjax.report import microscope_site

REPO = pathlib.Path(__file__).resolve().parents[1]
IMAGES = 24


@pytest.fixture(scope='module')
def net(digits_smoke_run):
  return loading.load(digits_smoke_run(0))


@pytest.fixture(scope='module')
def data(net):
  return examples.image_set(net, None, None, IMAGES)


def images_of(data) -> np.ndarray:
  return np.concatenate([np.asarray(b['image'])[b['mask']] for b in data.batches()])


@pytest.fixture(scope='module')
def site(digits_smoke_run, tmp_path_factory):
  """`visualize.py microscope` on the smoke workdir (checkpoints 2 and 4), 24 test digits."""
  out = tmp_path_factory.mktemp('site') / 'microscope'
  assert visualize.main(['microscope', '--workdir', str(digits_smoke_run(0)), '--out',
                         str(out), '--max-examples', str(IMAGES)]) == 0
  return out


# ------------------------------------------------------------------------ the survey


def test_survey_equals_topk_and_numpy_statistics(net, data):
  layers = ('conv1', 'conv3', 'fc6')
  found = survey.survey(net.model, net.variables, data.batches(), layers, k=5)
  images = images_of(data)
  searched = topk.search(net.model, net.variables, data.batches(), ('conv1', 'conv3'), k=5)
  post = models.activations(net.model, net.variables, images, layers)
  for layer in layers:
    result = found[layer]
    assert result.images == IMAGES
    if layer in searched:
      for got, expected in zip(result.top, searched[layer]):
        np.testing.assert_array_equal(got, expected)
    maps = np.asarray(post[layer]).reshape(IMAGES, -1, post[layer].shape[-1])
    np.testing.assert_allclose(result.firing, (maps.max(1) > 1e-6).mean(0), atol=1 / IMAGES)
    np.testing.assert_allclose(result.positive, (maps > 1e-6).mean((0, 1)), atol=1e-3)
    np.testing.assert_allclose(result.mean, maps.mean((0, 1)), rtol=1e-4, atol=1e-6)
    # (the forward pass here has another batch size: float32 rounding differs)
    np.testing.assert_allclose(result.max, maps.max((0, 1)), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(result.max, result.top.values[:, 0])


def test_most_negative_pre_activations_against_an_independent_convolution(net, data):
  """conv1's pre-activation computed here with lax.conv: its per-image minima, ranked."""
  found = survey.survey(net.model, net.variables, data.batches(), ('conv1',), k=4)['conv1']
  images = images_of(data)
  params = net.params['conv1']
  record = net.spec[0]
  pre = lax.conv_general_dilated(
      images, params['kernel'], (record.stride,) * 2, [(record.padding,) * 2] * 2,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + params['bias']
  columns = pre.shape[2]
  pre = np.asarray(pre).reshape(IMAGES, -1, pre.shape[-1])
  lowest = pre.min(1)                                                # (images, C)
  for c in range(pre.shape[-1]):
    order = np.argsort(lowest[:, c], kind='stable')
    negative = order[lowest[order, c] < 0][:4]
    got = np.asarray(found.bottom.example[c])
    np.testing.assert_array_equal(got[:negative.size], negative)
    np.testing.assert_allclose(found.bottom.values[c, :negative.size],
                               lowest[negative, c], rtol=1e-4, atol=1e-4)
    assert (got[negative.size:] == -1).all()
    where = np.argmin(pre[negative, :, c], axis=1)
    np.testing.assert_array_equal(found.bottom.y[c, :negative.size], where // columns)
    np.testing.assert_array_equal(found.bottom.x[c, :negative.size], where % columns)


@pytest.mark.slow  # the full tier (the survey equals topk.search in the default one)
def test_survey_does_not_depend_on_the_batching(net, data):
  images = images_of(data)
  mask = np.ones(IMAGES, bool)
  one = survey.survey(net.model, net.variables, [images], ('conv2', 'fc7'), k=3)
  pieces = [{'image': images[i:i + 7], 'mask': mask[i:i + 7]} for i in range(0, IMAGES, 7)]
  many = survey.survey(net.model, net.variables, pieces, ('conv2', 'fc7'), k=3)
  for layer in ('conv2', 'fc7'):
    for a, b in zip(jax.tree.leaves(one[layer]), jax.tree.leaves(many[layer])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_survey_rejects_unknown_layers(net):
  with pytest.raises(ValueError, match=r"unknown layer\(s\) \['pool1'\].*conv1, conv2"):
    survey.check_layers(net.spec, ['pool1'])
  assert survey.unit_layers(net.spec) == ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6',
                                          'fc7')


SHARDED = """
import pickle, sys
import numpy as np
from zfjax import models, survey
spec, variables, images = pickle.load(open(sys.argv[1], 'rb'))
model = models.ConvNet(spec)
found = survey.survey(model, variables, [images[:20], images[20:]], ('conv2', 'fc6'), k=3)
out = {f'{layer}/{i}': np.asarray(leaf) for layer in found
       for i, leaf in enumerate(__import__('jax').tree.leaves(found[layer]))}
np.savez(sys.argv[2], **out)
"""


@pytest.mark.slow  # a subprocess with four CPU devices
def test_survey_over_four_devices_equals_one(net, data, tmp_path):
  images = images_of(data)
  with open(tmp_path / 'inputs.pkl', 'wb') as f:
    pickle.dump((net.spec, jax.tree.map(np.asarray, net.variables), images), f)
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  subprocess.run([sys.executable, '-c', SHARDED, str(tmp_path / 'inputs.pkl'),
                  str(tmp_path / 'out.npz')], check=True, cwd=REPO, env=env)
  sharded = np.load(tmp_path / 'out.npz')
  found = survey.survey(net.model, net.variables, [images[:20], images[20:]],
                        ('conv2', 'fc6'), k=3)
  for layer in found:
    for i, leaf in enumerate(jax.tree.leaves(found[layer])):
      np.testing.assert_allclose(sharded[f'{layer}/{i}'], leaf, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ the pictures


def test_second_pass_puts_each_entry_where_the_gathered_path_does(net, data):
  """Crops and projections cut batch by batch equal topk.crops/project over gathered images."""
  layer, k = 'conv2', 4
  found = survey.survey(net.model, net.variables, data.batches(), (layer,), k=k)
  tiles, _ = microscope_site.second_pass(net, net.variables, data, found, (layer,),
                                         'deconvnet', tile=9)
  gathered = topk.gather_images(data.batches(), found[layer].top)
  shown = topk.Images(gathered.example, net.to_display(gathered.image))
  crops = topk.crops(net.model, found[layer].top, shown, layer)
  projections = topk.project(net.model, net.variables, found[layer].top, gathered, layer)
  pictures = microscope_pictures
  expected_crops = pictures.tiles(
      np.where(np.asarray(crops.valid)[..., None], np.asarray(crops.pixels) / 255.0,
               np.asarray((0.78, 0.84, 0.92), np.float32)), 9)
  np.testing.assert_array_equal(tiles[layer].top_crop, expected_crops)
  from zfjax.report import plots  # pylint: disable=import-outside-toplevel
  expected = pictures.to_uint8(plots.blank_outside(
      plots.signed_to_display(np.asarray(projections.pixels), gray=True),
      np.asarray(projections.valid)))
  assert np.abs(tiles[layer].top_projection.astype(int) - expected).max() <= 1


def test_display_sizes_and_strips():
  assert microscope_pictures.display_size(7, 64) == 63
  assert microscope_pictures.display_size(27, 64) == 54
  assert microscope_pictures.display_size(139, 64) == 64
  tiles = np.arange(2 * 3 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 3)
  row = microscope_pictures.strip(tiles, np.array([True, False]))
  assert row.shape == (3, 3 + 2 + 3, 3)
  np.testing.assert_array_equal(row[:, :3], tiles[0])
  assert (row[:, 3:5] == 255).all() and (row[:, 5:] == microscope_pictures.BLANK).all()


def test_feeding_units_rank_input_units_by_weight_norm(net):
  below, units, norms = microscope_pictures.feeding_units(net, 'conv3', 3)
  assert below == 'conv2'
  kernel = np.asarray(net.params['conv3']['kernel'])
  expected = np.sqrt((kernel ** 2).sum((0, 1)))                       # (Cin, Cout)
  for c in range(kernel.shape[-1]):
    np.testing.assert_array_equal(units[c], np.argsort(-expected[:, c], kind='stable')[:3])
    np.testing.assert_allclose(norms[c], np.sort(expected[:, c])[::-1][:3], rtol=1e-5)
  below, units, _ = microscope_pictures.feeding_units(net, 'fc6', 2)
  kernel = np.asarray(net.params['fc6']['kernel'])
  channels = net.params['conv5']['kernel'].shape[-1]
  per_map = np.sqrt((kernel.reshape(-1, channels, kernel.shape[-1]) ** 2).sum(0))
  assert below == 'conv5'
  np.testing.assert_array_equal(units[0], np.argsort(-per_map[:, 0], kind='stable')[:2])
  assert microscope_pictures.feeding_units(net, 'conv1')[0] is None


# ---------------------------------------------------------------------------- the site


class Page(html.parser.HTMLParser):
  """A page's links, image sources with their sizes, and element ids."""

  def __init__(self, path: pathlib.Path):
    super().__init__()
    self.links, self.images, self.ids = [], [], set()
    self.feed(path.read_text())

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if 'id' in attrs:
      self.ids.add(attrs['id'])
    if tag == 'a' and 'href' in attrs:
      self.links.append(attrs['href'])
    if tag == 'img':
      self.images.append(attrs)


def test_site_pages_units_and_numbers(site, net):
  layers = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7')
  made = json.loads((site / 'microscope.json').read_text())
  assert made['images'] == IMAGES and made['step'] == 4 and made['k'] == 9
  assert made['bytes'] > 0 and set(made['seconds']) >= {'search', 'projection', 'writing'}
  assert 'microscope' in made['command'] and made['version']
  index = Page(site / 'index.html')
  assert {f'{layer}.html' for layer in layers} <= set(index.links)
  text = (site / 'index.html').read_text()
  assert 'conv1' in text and '32 x 32 x 8' in text  # Fig. 3's shapes of this narrow net
  for layer in layers:
    page = Page(site / f'{layer}.html')
    units = net.params[layer]['bias'].shape[0]
    assert {f'{layer}-{c}' for c in range(units)} <= page.ids
    numbers = json.loads((site / f'{layer}.json').read_text())
    assert numbers['units'] == units and np.shape(numbers['top']['example']) == (units, 9)
    assert numbers['checkpoints'].keys() == {'2'}  # the other checkpoint kept
    assert all(img.get('loading') == 'lazy' and int(img['width']) > 0 and
               int(img['height']) > 0 for img in page.images)
  conv1 = json.loads((site / 'conv1.json').read_text())
  assert 'fed_by' not in conv1 and conv1['max'][0] == pytest.approx(conv1['top']['value'][0][0])
  conv2 = json.loads((site / 'conv2.json').read_text())
  assert conv2['fed_by']['layer'] == 'conv1' and np.shape(conv2['fed_by']['units']) == (8, 6)


def test_every_link_and_picture_resolves(site):
  pages = sorted(site.glob('*.html'))
  ids = {page.name: Page(page).ids for page in pages}
  for page in pages:
    parsed = Page(page)
    for link in parsed.links + [img['src'] for img in parsed.images]:
      target = urllib.parse.urlsplit(link)
      assert not target.scheme and not target.netloc, (page.name, link)  # nothing external
      name = urllib.parse.unquote(target.path) or page.name
      assert (site / name).is_file(), (page.name, link)
      if target.fragment:
        assert urllib.parse.unquote(target.fragment) in ids[name], (page.name, link)
  strip = Image.open(site / 'img' / 'conv2' / '0.png')
  assert strip.size == (9 * 63 + 8 * 2, 2 * 63 + 2)  # conv2's 9-pixel windows, 7x
  assert np.ptp(np.asarray(strip)) > 0
  steps = Image.open(site / 'img' / 'conv2' / '0-steps.png')
  assert steps.size == (10 * 63 + 9 * 2, 63)


def test_texts_are_escaped(net, data, tmp_path):
  out = tmp_path / 'site'
  microscope_site.microscope(net, out, images=images_of(data)[:5], layers=['conv1'],
                             evolution=False, command='<script>alert("x")</script>')
  index = (out / 'index.html').read_text()
  assert '<script>alert' not in index and '&lt;script&gt;alert(&quot;x&quot;)' in index


# --------------------------------------------------------------------------- mistakes


def fails(argv, capsys, *expected):
  assert visualize.main(argv) == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and 'Traceback' not in err, err
  for text in expected:
    assert text in err, err


def test_mistakes_exit_2_with_one_line_and_leave_no_site(digits_smoke_run, tmp_path, capsys):
  workdir = str(digits_smoke_run(0))
  out = tmp_path / 'site'
  empty = tmp_path / 'empty_workdir'
  empty.mkdir()
  taken = tmp_path / 'taken.html'
  taken.write_text('a file')
  common = ['microscope', '--workdir', workdir, '--out', str(out)]
  fails(['microscope', '--workdir', str(empty), '--out', str(out)], capsys, 'no checkpoints')
  fails([*common, '--layers', 'conv1,conv9'], capsys, 'conv9', 'choose from conv1')
  fails([*common, '--max-examples', '0'], capsys, '--max-examples')
  fails(['microscope', '--workdir', workdir, '--out', str(taken)], capsys, 'is a file')
  fails(['microscope', '--workdir', workdir, '--out', str(REPO / 'docs')], capsys,
        'holds other files')
  assert not out.exists() and taken.read_text() == 'a file'
  assert sorted(p.name for p in tmp_path.iterdir()) == ['empty_workdir', 'taken.html']


@pytest.mark.slow  # full tier (the other mistakes exit 2 in the default one)
def test_dataset_not_here_exits_2(tmp_path, capsys):
  """A net whose dataset (imagenet2012) is not here: no sample-photo stand-in."""
  from zfjax.configs import zfnet  # pylint: disable=import-outside-toplevel
  from zfjax import checkpoints  # pylint: disable=import-outside-toplevel
  config = zfnet.get_config()
  config.update(model='small_zfnet', image_size=32, resize_size=36,
                conv_features=(4, 4, 4, 4, 4), fc_features=(8, 8),
                data_dir=str(tmp_path / 'no_data'))
  model = models.from_config(config, 10)
  params = models.init_params(model, 0, 32)
  manager = checkpoints.create_manager(tmp_path / 'net' / 'checkpoints', async_save=False)
  checkpoints.save(manager, 1, {'params': params}, config=config)
  manager.wait_until_finished()
  manager.close()
  fails(['microscope', '--workdir', str(tmp_path / 'net'), '--out', str(tmp_path / 'site')],
        capsys, 'imagenet2012')
  assert not (tmp_path / 'site').exists()


def test_a_failed_write_leaves_nothing_and_an_old_site_is_replaced(net, data, tmp_path,
                                                                   monkeypatch):
  out = tmp_path / 'site'
  images = images_of(data)[:4]
  microscope_site.microscope(net, out, images=images, layers=['conv1'], evolution=False)
  first = json.loads((out / 'microscope.json').read_text())

  def broken(directory, site_data):
    (directory / 'index.html').write_text('half')
    raise OSError('disk full')
  monkeypatch.setattr(microscope_pages, 'write_site', broken)
  with pytest.raises(OSError, match='disk full'):
    microscope_site.microscope(net, out, images=images, layers=['conv1'], evolution=False)
  assert json.loads((out / 'microscope.json').read_text()) == first  # the old site, whole
  assert sorted(p.name for p in tmp_path.iterdir()) == ['site']
  monkeypatch.undo()
  microscope_site.microscope(net, out, images=images, layers=['conv2'], evolution=False)
  assert (out / 'conv2.html').is_file() and not (out / 'conv1.html').exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ['site']


# ------------------------------------------------------------------------ in a browser


@pytest.fixture(scope='module')
def browser():
  """Headless Chromium (Debian's chromium and chromium-driver) driven by selenium."""
  from selenium import webdriver  # pylint: disable=import-outside-toplevel
  chromium, driver = shutil.which('chromium'), shutil.which('chromedriver')
  if not (chromium and driver):
    pytest.fail("the browser checks need Debian's chromium and chromium-driver: "
                'apt-get install chromium chromium-driver (.ci/run installs them)')
  options = webdriver.ChromeOptions()
  for argument in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
                   '--window-size=1200,900', '--disable-extensions'):
    options.add_argument(argument)
  options.binary_location = chromium
  options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
  session = webdriver.Chrome(service=webdriver.ChromeService(driver), options=options)
  session.set_page_load_timeout(60)
  yield session
  session.quit()


def open_page(browser, url: str) -> None:
  browser.get(url)
  WebDriverWait(browser, 20).until(
      lambda b: b.execute_script('return document.readyState') == 'complete')


def console_errors(browser) -> list:
  return [entry for entry in browser.get_log('browser') if entry['level'] == 'SEVERE']


def all_images_decoded(browser) -> list:
  """Loads every lazy image now; the sources of those that did not decode."""
  browser.execute_script(
      "document.querySelectorAll('img').forEach(function (i) { i.loading = 'eager'; });")
  WebDriverWait(browser, 60).until(lambda b: b.execute_script(
      "return Array.from(document.images).every(function (i) { return i.complete; })"))
  return browser.execute_script(
      'return Array.from(document.images).filter(function (i) { return !(i.naturalWidth > 0); })'
      '.map(function (i) { return i.src; })')


def unit_in_view(browser, anchor: str) -> bool:
  top = browser.execute_script(
      'return document.getElementById(arguments[0]).getBoundingClientRect().top;', anchor)
  return 0 <= top < 200 and browser.execute_script('return window.scrollY') > 0


def test_pages_load_without_errors_and_every_image_decodes(site, browser):
  pages = ['index.html'] + [f'{layer}.html' for layer in
                            ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7')]
  browser.get_log('browser')
  for page in pages + ['conv4.html#conv4-3']:
    open_page(browser, (site / page).as_uri() if '#' not in page else
              (site / page.split('#')[0]).as_uri() + '#' + page.split('#')[1])
    assert all_images_decoded(browser) == [], page
    assert console_errors(browser) == [], page
  links = set()
  for page in pages:
    open_page(browser, (site / page).as_uri())
    links |= set(browser.execute_script(
        'return Array.from(document.querySelectorAll("a[href]")).map(function (a) '
        '{ return a.href; })'))
  for link in links:  # every internal link, resolved by the browser, reaches a file and id
    target = urllib.parse.urlsplit(link)
    assert target.scheme == 'file', link
    path = pathlib.Path(urllib.parse.unquote(target.path))
    assert path.is_file() and site in path.parents, link
    if target.fragment:
      assert urllib.parse.unquote(target.fragment) in Page(path).ids, link


def test_permalink_opens_scrolled_to_its_unit(site, browser):
  open_page(browser, (site / 'conv3.html').as_uri() + '#conv3-5')
  assert all_images_decoded(browser) == []
  assert unit_in_view(browser, 'conv3-5')


def test_keys_move_between_units_and_layers_and_the_jump_box(site, browser):
  from selenium.webdriver.common.by import By  # pylint: disable=import-outside-toplevel
  from selenium.webdriver.common.keys import Keys  # pylint: disable=import-outside-toplevel
  open_page(browser, (site / 'conv2.html').as_uri() + '#conv2-3')
  body = browser.find_element(By.TAG_NAME, 'body')
  body.send_keys(Keys.ARROW_RIGHT)
  WebDriverWait(browser, 10).until(lambda b: b.current_url.endswith('conv2.html#conv2-4'))
  assert unit_in_view(browser, 'conv2-4')
  body.send_keys(Keys.ARROW_LEFT)
  WebDriverWait(browser, 10).until(lambda b: b.current_url.endswith('#conv2-3'))
  body.send_keys(Keys.ARROW_DOWN)
  WebDriverWait(browser, 10).until(lambda b: b.current_url.endswith('conv3.html#conv3-3'))
  browser.find_element(By.TAG_NAME, 'body').send_keys(Keys.ARROW_UP)
  WebDriverWait(browser, 10).until(lambda b: b.current_url.endswith('conv2.html#conv2-3'))
  open_page(browser, (site / 'conv1.html').as_uri() + '#conv1-7')
  browser.find_element(By.TAG_NAME, 'body').send_keys(Keys.ARROW_RIGHT)  # the last unit
  WebDriverWait(browser, 10).until(lambda b: b.current_url.endswith('conv2.html#conv2-0'))
  box = browser.find_element(By.ID, 'jump-unit')
  box.send_keys('5', Keys.ENTER)
  WebDriverWait(browser, 10).until(lambda b: b.current_url.endswith('#conv2-5'))
  assert unit_in_view(browser, 'conv2-5')
  box.clear()
  box.send_keys('99', Keys.ENTER)
  assert 'units are 0 to 7' in browser.find_element(By.ID, 'jump-message').text
  assert browser.current_url.endswith('#conv2-5') and console_errors(browser) == []
