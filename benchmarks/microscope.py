r"""The microscope at scale: a site of every unit, its search, projection and writing times.

    python benchmarks/microscope.py                        # both cases below
    python benchmarks/microscope.py --case zfnet --images 512
    python benchmarks/microscope.py --case digits --digits_workdir /tmp/zf
    python benchmarks/microscope.py --case zfnet --quick   # 32 images, a smoke run

Cases:
- `digits`: the digits net of `python train.py --config configs/digits.py` (trained here
  into a temporary workdir unless --digits_workdir names one; the training is not timed)
  over its whole test split (360 images), every layer, Fig. 4 rows for its checkpoints.
- `zfnet`: the paper's full ZFNet (fc 4096, 1000 classes) with He-normal random weights
  (benchmarks/top9.he_variables) saved as a checkpoint, over --images random 224x224
  images made batch by batch, every unit of --layers (default conv1..conv5: 1,376 units,
  9 projections each).

Reported per case: seconds of the survey pass (search), the second pass (crops and
deconvnet projections), the checkpoints' rows (evolution) and the pages (writing), the
total wall time including compilation, the process's RSS high-water mark and the peak
above its starting RSS while building (benchmarks/common.py), and the site's size. With
--browser (needs selenium and Debian's chromium), also how long the largest layer page
takes to show in headless Chromium (first contentful paint, from the page's own
performance timeline). Prints one JSON line, then a Markdown table. No TensorFlow is
imported for the zfnet case.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position
import top9  # pylint: disable=wrong-import-position

from zfjax import checkpoints, loading, models  # pylint: disable=wrong-import-position
from zfjax.configs import zfnet  # pylint: disable=wrong-import-position
from zfjax.report import examples, microscope_site  # pylint: disable=wrong-import-position

CONVS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--case', choices=('both', 'digits', 'zfnet'), default='both')
  parser.add_argument('--images', type=int, default=512, help='zfnet: images searched')
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--layers', default=','.join(CONVS), help='zfnet: layers shown')
  parser.add_argument('--digits_workdir', default=None,
                      help='a trained configs/digits.py workdir (default: train one)')
  parser.add_argument('--out', default=None, help='keep the sites here (default: a temp dir)')
  parser.add_argument('--browser', action='store_true',
                      help='time the largest layer page in headless Chromium')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--json', default=None, help='also append the JSON line here')
  parser.add_argument('--quick', action='store_true', help='zfnet over 32 images')
  args = parser.parse_args(argv)
  if args.quick:
    args.images, args.batch_size = 32, 16
  args.layers = tuple(name.strip() for name in args.layers.split(',') if name.strip())
  return args


def random_zfnet_checkpoint(directory: pathlib.Path, seed: int) -> pathlib.Path:
  """A workdir holding the full ZFNet with He-normal random weights as one checkpoint."""
  config = zfnet.get_config()
  model = models.from_config(config, 1000)
  params = top9.he_variables(model, seed, 224)['params']
  manager = checkpoints.create_manager(directory / 'checkpoints', async_save=False)
  checkpoints.save(manager, 0, {'params': params}, config=config)
  manager.wait_until_finished()
  manager.close()
  return directory


def random_images(num_images: int, batch_size: int, seed: int) -> examples.ImageSet:
  """Random 224x224 model inputs, made batch by batch (never all held)."""
  def batches():
    for batch in top9.batches(num_images, batch_size, 224, seed):
      yield {'image': batch['image'], 'mask': batch['mask'],
             'label': np.full(len(batch['mask']), -1, np.int32)}
  return examples.ImageSet(batches, f'{num_images} random 224x224 images',
                           [-1] * num_images)


def build(source, out: pathlib.Path, **kwargs) -> dict:
  """One site, timed, with its memory; the figures as a dict."""
  memory = common.MemorySampler(interval_s=0.01)
  start = time.perf_counter()
  with memory:
    site = microscope_site.microscope(source, out, log=print, **kwargs)
  wall = time.perf_counter() - start
  return {'units': site.units, 'layers': list(site.layers), 'images': site.images,
          'search_s': site.seconds['search'], 'projection_s': site.seconds['projection'],
          'evolution_s': site.seconds['evolution'], 'writing_s': site.seconds['writing'],
          'total_s': wall, 'site_mib': site.bytes / 2**20,
          'peak_rss_delta_mib': memory.peak_delta_mb, 'max_rss_mib': common.max_rss_mb(),
          'files': sum(1 for f in site.directory.rglob('*') if f.is_file()),
          'site': str(site.directory)}


def digits_case(args, root: pathlib.Path) -> dict:
  workdir = args.digits_workdir
  trained_s = None
  if not workdir:
    from zfjax import train  # pylint: disable=import-outside-toplevel
    from zfjax.configs import digits  # pylint: disable=import-outside-toplevel
    workdir = root / 'digits_workdir'
    start = time.perf_counter()
    train.train_and_evaluate(digits.get_config(), workdir)
    trained_s = time.perf_counter() - start
  result = build(workdir, root / 'digits_site')
  return dict(result, case='digits', training_s=trained_s)


def zfnet_case(args, root: pathlib.Path) -> dict:
  workdir = random_zfnet_checkpoint(root / 'zfnet_workdir', args.seed)
  net = loading.load(workdir, mean='imagenet_channels')  # no dataset here: no mean image
  images = random_images(args.images, args.batch_size, args.seed)
  result = build(net, root / 'zfnet_site', images=images, layers=args.layers)
  return dict(result, case='zfnet')


def first_paint_ms(site: pathlib.Path, layers) -> dict:
  """Largest layer page: first contentful paint and DOMContentLoaded in headless Chromium."""
  from selenium import webdriver  # pylint: disable=import-outside-toplevel
  options = webdriver.ChromeOptions()
  for argument in ('--headless=new', '--no-sandbox', '--disable-gpu',
                   '--window-size=1200,900'):
    options.add_argument(argument)
  options.binary_location = '/usr/bin/chromium'
  browser = webdriver.Chrome(service=webdriver.ChromeService('/usr/bin/chromedriver'),
                             options=options)
  try:
    sizes = {layer: (site / f'{layer}.html').stat().st_size for layer in layers}
    largest = max(sizes, key=sizes.get)
    browser.get((site / f'{largest}.html').as_uri())
    time.sleep(1.0)
    paint = browser.execute_script(
        "var p = performance.getEntriesByName('first-contentful-paint'); "
        'return p.length ? p[0].startTime : null;')
    loaded = browser.execute_script(
        "return performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd;")
    return {'page': f'{largest}.html', 'page_kib': sizes[largest] / 1024,
            'first_contentful_paint_ms': paint, 'dom_content_loaded_ms': loaded}
  finally:
    browser.quit()


def main(argv=None):
  args = parse_args(argv)
  root = pathlib.Path(args.out or tempfile.mkdtemp(prefix='zfjax-microscope-bench-'))
  root.mkdir(parents=True, exist_ok=True)
  cases = []
  if args.case in ('both', 'digits'):
    cases.append(digits_case(args, root))
  if args.case in ('both', 'zfnet'):
    cases.append(zfnet_case(args, root))
  if args.browser:
    for case in cases:
      case['browser'] = first_paint_ms(pathlib.Path(case['site']), case['layers'])
  result = {'benchmark': 'microscope', 'cases': cases, 'devices': len(jax.devices()),
            'backend': jax.default_backend(), 'env': common.environment()}
  header = ('case', 'images', 'units', 'search s', 'projection s', 'evolution s',
            'writing s', 'total s', 'max RSS MiB', 'site MiB', 'first paint ms')
  rows = [(c['case'], c['images'], c['units'], c['search_s'], c['projection_s'],
           c['evolution_s'], c['writing_s'], c['total_s'], c['max_rss_mib'], c['site_mib'],
           c.get('browser', {}).get('first_contentful_paint_ms', ''))
          for c in cases]
  common.print_report(result, header, rows, args.json)


if __name__ == '__main__':
  main()
