"""Untrusted files: code in weights files, safetensors, damaged files, HTML escaping.

Weights files that try to run code, safetensors in and out, damaged weights files, and
index.html's escaping of captions and file names.

A malicious .pth here is a torch.save'd dict holding an object whose __reduce__ returns
(os.system, ('touch MARKER',)): a full unpickler (torch.load(weights_only=False),
pickle.load) would run the command while loading. zfjax must refuse it, without running
it, in one line naming the file.
"""

import html.parser
import os
import pathlib
import pickle
import sys
import urllib.parse

import jax
import numpy as np
import pytest

import safetensors.torch as safetensors_torch
import torch
# pylint: disable=wrong-import-position
from pytorchcv.models import zfnet as pytorchcv_zfnet

from zfjax.configs import digits
from zfjax import checkpoints, interop, models
from zfjax.cli import interop as interop_cli
from zfjax.report import folder

REPO = pathlib.Path(__file__).resolve().parents[1]
REFUSED = 'holds objects other than tensors'
ACCEPTED = 'only state dicts of tensors (.pth) or .safetensors files are accepted'


class RunsCode:
  """Unpickling this runs `command` (what a malicious checkpoint does)."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


class Custom:
  """A harmless class: still not a tensor, so refused too."""


def bitwise_equal(a, b):
  a, b = np.asarray(a), np.asarray(b)
  return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(
      a.view(np.uint32), b.view(np.uint32))


@pytest.fixture(scope='module')
def digits_workdir(tmp_path_factory):
  """An imported-style workdir of the digits smoke model.

  Params only, random numbers of the model's shapes: nothing is compiled.
  """
  config = digits.get_config('smoke')
  shapes = checkpoints.param_shapes(models.spec_from_config(config, 10), (32, 32, 3))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
  workdir = tmp_path_factory.mktemp('digits') / 'work'
  interop.write_checkpoint(workdir, params, config)
  return workdir, params


# ------------------------------------------------------------------------ malicious


@pytest.mark.filterwarnings('ignore:Detected pickle protocol')  # torch's, on pickle.dump
@pytest.mark.parametrize('kind', ['zip', 'legacy', 'plain pickle', 'harmless class'])
def test_pickle_that_runs_code_is_refused_and_not_run(kind, tmp_path):
  marker = tmp_path / 'MARKER'
  path = tmp_path / f'evil_{kind.replace(" ", "_")}.pth'
  payload = {'conv1.weight': torch.zeros(2),
             'x': Custom() if kind == 'harmless class' else RunsCode(f'touch {marker}')}
  if kind == 'plain pickle':
    with open(path, 'wb') as f:
      pickle.dump(payload, f)
  else:
    torch.save(payload, path, _use_new_zipfile_serialization=kind != 'legacy')
  with pytest.raises(ValueError) as error:
    interop.load_weights(path)
  message = str(error.value)
  assert message.startswith(f'{path} {REFUSED}') and ACCEPTED in message, message
  assert '\n' not in message and 'nothing in it was run' in message
  if kind in ('zip', 'legacy'):
    assert 'system' in message  # names what it asked for (posix.system)
  assert not marker.exists(), 'the pickle ran its command'


def test_cli_refuses_a_malicious_pth_in_one_line(tmp_path, capsys):
  """`python -m zfjax.interop import` refuses a malicious .pth: status 2 and one line.

  Its main runs in this process: exit status 2 and one line on stderr; the command did not
  run and no workdir was written.
  """
  marker = tmp_path / 'MARKER'
  path = tmp_path / 'zfnet.pth'
  torch.save({'state_dict': {'w': RunsCode(f'touch {marker}')}}, path)
  out = tmp_path / 'out'
  assert interop_cli.main(['import', str(path), '--arch', 'zfnet', '--out', str(out)]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f'error: {path} {REFUSED} (') and err.count('\n') == 1, err
  assert ACCEPTED in err and 'Traceback' not in err
  assert not marker.exists() and not out.exists()


def test_damaged_weights_files_are_one_line_errors(tmp_path):
  good = tmp_path / 'good.pth'
  torch.save({'w': torch.ones(3)}, good)
  data = good.read_bytes()
  cases = {'cut.pth': data[:len(data) // 2], 'junk.pth': b'not a pickle at all',
           'empty.pth': b''}
  for name, content in cases.items():
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=f'^{tmp_path / name} ') as error:
      interop.load_weights(tmp_path / name)
    assert ACCEPTED in str(error.value) and '\n' not in str(error.value), name
  safetensors_torch.save_file({'w': torch.ones(3)}, tmp_path / 'w.safetensors')
  data = (tmp_path / 'w.safetensors').read_bytes()
  (tmp_path / 'cut.safetensors').write_bytes(data[:-4])
  (tmp_path / 'junk.safetensors').write_bytes(b'not safetensors')
  for name in ('cut.safetensors', 'junk.safetensors'):
    with pytest.raises(ValueError, match=f'^{tmp_path / name} is not a readable '
                       r'\.safetensors file'):
      interop.load_weights(tmp_path / name)
  with pytest.raises(FileNotFoundError, match='no file'):
    interop.load_weights(tmp_path / 'missing.pth')
  assert interop_cli.main(['import', str(tmp_path / 'junk.pth'), '--arch', 'zfnet', '--out',
                           str(tmp_path / 'out')]) == 2


# ----------------------------------------------------------------------- safetensors


@pytest.mark.slow  # full tier (safetensors round trips stay in the default one)
def test_safetensors_of_a_pytorchcv_state_dict_imports_as_the_pth(tmp_path):
  """A state dict written by torch.save and by safetensors imports as the same params.

  pytorchcv's zfnet (random weights); the two imports agree bit for bit.
  """
  state_dict = pytorchcv_zfnet.zfnet(pretrained=False).state_dict()
  torch.save(state_dict, tmp_path / 'zfnet.pth')
  safetensors_torch.save_file(state_dict, tmp_path / 'zfnet.safetensors')
  spec, expected = interop.from_torch(interop.load_weights(tmp_path / 'zfnet.pth'), 'zfnet')
  loaded = interop.load_weights(tmp_path / 'zfnet.safetensors')
  assert all(isinstance(v, np.ndarray) for v in loaded.values())  # read without torch
  other_spec, variables = interop.from_torch(loaded, 'zfnet')
  assert other_spec == spec
  assert jax.tree.all(jax.tree.map(bitwise_equal, variables, expected))


def test_safetensors_is_told_by_suffix_or_header(tmp_path):
  tensors = {'w': torch.arange(6, dtype=torch.float32), 'h': torch.ones(2, dtype=torch.bfloat16)}
  safetensors_torch.save_file(tensors, tmp_path / 'w.safetensors')
  (tmp_path / 'w.bin').write_bytes((tmp_path / 'w.safetensors').read_bytes())
  torch.save(tensors, tmp_path / 'w.pth')
  assert interop.is_safetensors(tmp_path / 'w.bin')
  assert not interop.is_safetensors(tmp_path / 'w.pth')
  for name in ('w.safetensors', 'w.bin', 'w.pth'):
    loaded = interop.load_weights(tmp_path / name)
    assert set(loaded) == {'w', 'h'}, name
    np.testing.assert_array_equal(np.asarray(loaded['w']), np.arange(6))
    assert str(loaded['h'].dtype).endswith('bfloat16')  # numpy lacks it: torch reads it


def test_safetensors_export_and_import_round_trip_without_torch(digits_workdir, tmp_path,
                                                              monkeypatch):
  """export --out X.safetensors, then import it --arch zfjax, without torch: a round trip.

  The same params bit for bit and the same config, with torch made unimportable.
  """
  workdir, params = digits_workdir
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` now fails
  exported = tmp_path / 'digits.safetensors'
  assert interop_cli.main(['export', str(workdir), '--out', str(exported)]) == 0
  assert interop.is_safetensors(exported) and exported.with_suffix('.json').is_file()
  assert interop_cli.main(['import', str(exported), '--arch', 'zfjax', '--out',
                           str(tmp_path / 'back')]) == 0
  config, back = checkpoints.restore_params(tmp_path / 'back')
  assert config.model == 'small_zfnet' and config.dataset == 'digits'
  assert jax.tree.all(jax.tree.map(bitwise_equal, jax.tree.map(np.asarray, back), params))


def test_pth_and_safetensors_exports_agree(digits_workdir, tmp_path):
  workdir, _ = digits_workdir
  assert interop_cli.main(['export', str(workdir), '--out', str(tmp_path / 'a.pth')]) == 0
  assert interop_cli.main(['export', str(workdir), '--out',
                           str(tmp_path / 'a.safetensors')]) == 0
  pth = interop.load_weights(tmp_path / 'a.pth')
  safe = interop.load_weights(tmp_path / 'a.safetensors')
  assert list(pth) == list(safe) or set(pth) == set(safe)
  for key, value in pth.items():
    assert bitwise_equal(value.numpy(), safe[key]), key


# ------------------------------------------------------------------------ index.html


class Page(html.parser.HTMLParser):
  """Every start tag of a page, and its src and href values."""

  def __init__(self):
    super().__init__()
    self.tags, self.links = [], []

  def handle_starttag(self, tag, attrs):
    self.tags.append(tag)
    self.links += [value for name, value in attrs if name in ('src', 'href')]


def test_index_escapes_captions_and_file_names(tmp_path):
  png, numbers = 'a&b "c" <d>.png', 'a&b "c" <d>.json'
  (tmp_path / png).write_bytes(b'png')
  (tmp_path / numbers).write_text('{}')
  entries = [{'key': 'x', 'title': '<img src=x onerror=alert(1)>', 'png': png,
              'json': numbers, 'caption': '<script>alert("x")</script> & more',
              'model': '<b>m</b>', 'command': 'visualize.py --images "<x>.png"'}]
  page = folder.write_index(tmp_path, entries)
  text = page.read_text()
  parser = Page()
  parser.feed(text)
  assert '<script>' not in text and 'script' not in parser.tags
  assert '&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more' in text
  assert '<b>m</b>' not in text and parser.tags.count('img') == 1
  assert '&lt;img src=x onerror=alert(1)&gt;' in text
  assert len(parser.links) == 3  # the figure (href, src) and its numbers
  for link in parser.links:
    assert '"' not in link and '<' not in link and ' ' not in link and '&' not in link
    assert (tmp_path / urllib.parse.unquote(link)).is_file(), link
  assert {urllib.parse.unquote(link) for link in parser.links} == {png, numbers}
