"""zfjax.interop against the PyTorch models it reads.

Sources: pytorchcv's zfnet and zfnetb (pretrained=False, offline), a torchvision-shaped
AlexNet written here in plain torch (torchvision is not a dependency), and
tools/torch_zfnet's TorchZFNet, whose state dict is the 'zfjax' layout. Their weights are
randomized (He-normal, small positive biases) so every layer is alive; inputs are like
ImageNet-normalized images. Each import must give the source's logits to 1e-4 (max error
over max |logit|) and come back bit for bit. Then the command line (zfjax.cli.interop):
import -> restore_params and zfjax.loading, export of each layout -> torch.load, bit for
bit, and the errors users see.

Tiers. The default tier checks each source layout once (pytorchcv's zfnet, torchvision's
AlexNet at 224, the zfjax layout on a narrow ZFNet), input-scale folding, the CLI's import
of a real zfnet, its export as pytorchcv's layout and folded re-import, the export and
re-import of a small model, and the errors. The full tier
(`--full`; marked slow) adds the big or repeated cases, each seconds of large tensors and
compilation: pytorchcv's zfnetb (108M weights), AlexNet at 256 (the adaptive pool), the
full-size zfjax round trip, the deconvnet projection of the imported zfnet, the CLI's
export and re-import of the full zfnet and its round trips of zfnetb and torchvision's
AlexNet; and the refused write, a subprocess that loads
JAX and Orbax before the OS refuses its checkpoint.
"""

import functools
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from test_train_cli import with_file_size_limit

# The model module itself: pytorchcv.model_provider imports every model, torchvision too,
# and PyPI's torchvision does not import beside the CPU torch the tests install.
from pytorchcv.models import zfnet as pytorchcv_zfnet  # pylint: disable=wrong-import-position
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tools'))
import torch_zfnet as tz  # pylint: disable=wrong-import-position

# pylint: disable=wrong-import-position
from zfjax import architecture, checkpoints, deconv, interop, loading, models, preprocess
from zfjax.cli import interop as cli_interop

TOLERANCE = 1e-4
nn = torch.nn


class TorchvisionAlexNet(nn.Module):
  """torchvision.models.AlexNet's modules, names and forward pass."""

  def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
    super().__init__()
    self.features = nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2))
    self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
    self.classifier = nn.Sequential(
        nn.Dropout(p=dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
        nn.Dropout(p=dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes))

  def forward(self, x):
    return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def randomize(model, seed=0):
  """He-normal weights, biases uniform on [0, 0.1]; the model in eval mode."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, value in model.state_dict().items():
      if name.endswith('weight'):
        fan_in = int(np.prod(value.shape[1:]))
        value.copy_(torch.randn(value.shape, generator=generator) * np.sqrt(2.0 / fan_in))
      else:
        value.copy_(torch.rand(value.shape, generator=generator) * 0.1)
  return model.eval()


def images(n=1, size=224, seed=0):
  """(n, 3, size, size) torch images on the scale of ImageNet-normalized inputs."""
  return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 1.5


def nhwc(x):
  return x.numpy().transpose(0, 2, 3, 1)


def relative_error(actual, reference):
  reference = np.asarray(reference, np.float64)
  return float(np.abs(np.asarray(actual, np.float64) - reference).max() / np.abs(reference).max())


@functools.lru_cache(maxsize=None)
def forward(spec):
  """The model's jitted apply.

  One compilation per spec takes a fraction of the time of compiling its operations one
  by one.
  """
  return jax.jit(models.ConvNet(spec).apply)


def logits(spec, variables, x):
  return np.asarray(forward(spec)(variables, nhwc(x)))


def assert_same_state_dict(actual, expected):
  assert list(actual) == list(expected) or set(actual) == set(expected)
  for key, value in expected.items():
    value = value.numpy() if hasattr(value, 'numpy') else np.asarray(value)
    other = actual[key].numpy() if hasattr(actual[key], 'numpy') else np.asarray(actual[key])
    assert other.dtype == value.dtype and other.shape == value.shape, key
    assert np.array_equal(other.view(np.uint32), value.view(np.uint32)), key  # bitwise


@pytest.fixture(scope='module')
def zfnet():
  return randomize(pytorchcv_zfnet.zfnet(pretrained=False), seed=1)


# ------------------------------------------------------------------------------ logits


def test_pytorchcv_zfnet_logits_and_round_trip(zfnet):
  x = images(2)
  with torch.no_grad():
    reference = zfnet(x).numpy()
  spec, variables = interop.from_torch(zfnet.state_dict(), 'zfnet')
  assert spec == architecture.pytorchcv_zfnet(1000)
  assert relative_error(logits(spec, variables, x), reference) < TOLERANCE
  assert_same_state_dict(interop.to_torch(variables, spec, 'zfnet'), zfnet.state_dict())
  # pytorchcv normalizes (functionally, invisible in the state dict) with torch's alpha
  # 1e-4, i.e. 2e-5 here: the paper's constant, or no normalization, changes the logits.
  for other in (architecture.zfnet(1000, norm_before_pool=True),
                architecture.without(spec, 'norm1', 'norm2')):
    assert relative_error(logits(other, variables, x), reference) > 10 * TOLERANCE


@pytest.mark.slow
def test_pytorchcv_zfnetb_logits_and_round_trip():
  source = randomize(pytorchcv_zfnet.zfnetb(pretrained=False), seed=2)
  x = images(1, seed=1)
  with torch.no_grad():
    reference = source(x).numpy()
  spec, variables = interop.from_torch(source.state_dict(), 'zfnetb')
  assert architecture.num_params(spec) == 107_627_624
  assert relative_error(logits(spec, variables, x), reference) < TOLERANCE
  assert_same_state_dict(interop.to_torch(variables, spec, 'zfnetb'), source.state_dict())


@pytest.mark.parametrize('size', [  # 256: the adaptive pool averages 7 -> 6
    224, pytest.param(256, marks=pytest.mark.slow)])
def test_torchvision_alexnet_logits_and_round_trip(size):
  source = randomize(TorchvisionAlexNet(num_classes=10), seed=3)
  x = images(1, size=size, seed=2)
  with torch.no_grad():
    reference = source(x).numpy()
  spec, variables = interop.from_torch(source.state_dict(), 'torchvision_alexnet',
                                       input_shape=(size, size, 3))
  assert spec == architecture.torchvision_alexnet(10)
  assert architecture.shapes(spec, (size, size, 3))['pool5'][:2] == ((6, 6) if size == 224
                                                                    else (7, 7))
  assert relative_error(logits(spec, variables, x), reference) < TOLERANCE
  assert_same_state_dict(interop.to_torch(variables, spec, 'torchvision_alexnet'),
                         source.state_dict())


def test_zfjax_layout_is_torch_zfnet():
  """TorchZFNet (the paper's order) has the 'zfjax' layout's keys."""
  source = randomize(tz.TorchZFNet(10, fc_features=(64, 64)), seed=4)
  spec = architecture.zfnet(10, fc_features=(64, 64))
  x = images(1, seed=3) * 50  # the paper's 0-255 scale
  with torch.no_grad():
    reference = source(x).numpy()
  _, variables = interop.from_torch(source.state_dict(), 'zfjax', spec=spec)
  assert relative_error(logits(spec, variables, x), reference) < TOLERANCE
  state_dict = interop.to_torch(variables, spec, tensors=True)
  assert_same_state_dict(state_dict, source.state_dict())
  assert isinstance(state_dict['fc6.weight'], torch.Tensor)


@pytest.mark.slow
def test_zfjax_params_round_trip_bitwise():
  spec = architecture.zfnet(7)
  params = tz.random_flax_params(num_classes=7, fc_features=(4096, 4096), seed=5)
  state_dict = interop.to_torch({'params': params}, spec)
  assert [k for k in state_dict][:2] == ['conv1.weight', 'conv1.bias']
  assert state_dict['conv1.weight'].shape == (96, 3, 7, 7)
  assert state_dict['fc6.weight'].shape == (4096, 256 * 6 * 6)
  # fc6 reads torch's CHW flattening: input (c, y, x) is our row (y * 6 + x) * 256 + c.
  assert np.array_equal(state_dict['fc6.weight'][:, 1 * 36 + 2 * 6 + 3],
                        params['fc6']['kernel'][(2 * 6 + 3) * 256 + 1])
  back_spec, back = interop.from_torch(state_dict, 'zfjax')  # default: the paper's ZFNet
  assert back_spec == spec
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a.view(np.uint32),
                                                          b.view(np.uint32)),
               back['params'], params)


# --------------------------------------------------------------------------- projection


@pytest.mark.slow
def test_deconv_projection_of_imported_zfnet_matches_torch_reference(zfnet):
  """The imported model's conv5 projections equal tools/torch_zfnet's literal deconvnet.

  On the same weights (pytorchcv's layout: normalize before pooling, alpha 2e-5).
  """
  spec, variables = interop.from_torch(zfnet.state_dict(), 'zfnet')
  x = images(1, seed=4)
  channels = (0, 7)
  projection = np.asarray(deconv.project(models.ConvNet(spec), variables, nhwc(x), 'conv5',
                                         np.asarray(channels)))
  assert projection.shape == (1, 2, 224, 224, 3) and np.isfinite(projection).all()
  assert np.abs(projection).max() > 0
  reference_model = tz.load_flax_params(
      tz.TorchZFNet(1000, norm_before_pool=True, lrn_alpha=1e-4 / 5).eval(),
      variables['params'])
  with torch.no_grad():
    reference_logits = reference_model(x).numpy()
  assert relative_error(logits(spec, variables, x), reference_logits) < TOLERANCE
  reference = tz.literal_deconvnet(reference_model, x, 'conv5', channels).numpy()
  assert relative_error(projection, reference.transpose(0, 1, 3, 4, 2)) < TOLERANCE


# ---------------------------------------------------------------------------------- CLI


@pytest.fixture(scope='module')
def imported(zfnet, tmp_path_factory):
  """`import` of a pytorchcv zfnet .pth (nested under 'state_dict') into a workdir."""
  root = tmp_path_factory.mktemp('interop')
  source = root / 'zfnet.pth'
  torch.save({'state_dict': zfnet.state_dict(), 'epoch': 3}, source)
  out = root / 'imported'
  assert cli_interop.main(['import', str(source), '--arch', 'zfnet', '--out', str(out)]) == 0
  return source, out


@pytest.mark.slow  # full tier (the imports by function are checked in the default one)
def test_cli_import_restores_the_same_model(zfnet, imported):
  _, out = imported
  config, params = checkpoints.restore_params(out)
  assert config.model == 'pytorchcv_zfnet' and config.norm_before_pool
  assert config.dataset == 'imagenet2012' and '0.229' in config.input_transform
  assert config.imported_from.startswith('zfnet:')
  _, expected = interop.from_torch(zfnet.state_dict(), 'zfnet')
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params),
               expected['params'])
  model = models.from_config(config, 1000)
  assert model.spec == architecture.pytorchcv_zfnet(1000)
  assert json.loads((out / 'config.json').read_text())['model'] == 'pytorchcv_zfnet'
  # The one loader (the figures' --checkpoint OUT and --workdir OUT) opens it, and knows
  # that pytorchcv's weights take ImageNet-normalized inputs (no mean image).
  net = loading.load(out / 'checkpoints' / '0')
  assert net.spec == model.spec and net.step == 0 and net.num_classes == 1000
  assert net.normalization == preprocess.IMAGENET and net.mean is None
  np.testing.assert_allclose(net.input(np.full((300, 240, 3), 255, np.uint8))[0, 0],
                             (1 - np.asarray(preprocess.IMAGENET_MEAN))
                             / np.asarray(preprocess.IMAGENET_STD), rtol=1e-5)


def round_trip(arch, workdir, expected, tmp_path, suffix='.pth'):
  """`export --arch ARCH` of `workdir`: the file holds `expected` bit for bit.

  Its config sits beside it. Returns the file's path and its state dict.
  """
  exported = tmp_path / f'exported_{arch}{suffix}'
  assert cli_interop.main(['export', str(workdir), '--arch', arch, '--out',
                           str(exported)]) == 0
  state_dict = interop.load_weights(exported)
  assert_same_state_dict(state_dict, expected)
  assert json.loads(exported.with_suffix('.json').read_text()) == json.loads(
      (workdir / 'config.json').read_text())
  return exported, state_dict


@pytest.mark.slow  # to_torch and the zfjax-layout export are in the default tier
def test_cli_exports_pytorchcv_layout(zfnet, imported, tmp_path):
  """export --arch zfnet gives pytorchcv's own state dict back; its module loads it."""
  _, out = imported
  _, state_dict = round_trip('zfnet', out, zfnet.state_dict(), tmp_path)
  fresh = pytorchcv_zfnet.zfnet(pretrained=False)
  fresh.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()})


@pytest.mark.slow
def test_cli_import_folded_is_a_paper_space_net(zfnet, imported, tmp_path):
  """import --fold-normalization: conv1 scaled, the rest as it was, 'paper' inputs."""
  source, _ = imported
  folded = tmp_path / 'folded'
  assert cli_interop.main(['import', str(source), '--arch', 'zfnet', '--out', str(folded),
                           '--fold-normalization']) == 0
  net = loading.load(folded)
  assert net.normalization == preprocess.PAPER and net.config.model == 'pytorchcv_zfnet'
  assert net.mean is not None and 'conv1 scaled' in net.config.input_transform
  _, variables = interop.from_torch(zfnet.state_dict(), 'zfnet')
  scale = 255 * np.asarray(preprocess.IMAGENET_STD)[:, None]  # per input channel (HWIO)
  np.testing.assert_allclose(np.asarray(net.params['conv1']['kernel']) * scale,
                             variables['params']['conv1']['kernel'], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(net.params['fc8']['kernel']),
                                variables['params']['fc8']['kernel'])


@pytest.mark.slow
@pytest.mark.parametrize('arch', ['zfnetb', 'torchvision_alexnet'])
def test_cli_round_trips_the_other_torch_layouts(arch, tmp_path):
  """import --arch ARCH, then export --arch ARCH: the source's state dict, bit for bit."""
  if arch == 'zfnetb':
    source = randomize(pytorchcv_zfnet.zfnetb(pretrained=False, num_classes=10), seed=8)
  else:
    source = randomize(TorchvisionAlexNet(num_classes=10), seed=9)
  path = tmp_path / f'{arch}.pth'
  torch.save(source.state_dict(), path)
  workdir = tmp_path / 'imported'
  assert cli_interop.main(['import', str(path), '--arch', arch, '--out', str(workdir)]) == 0
  assert loading.load(workdir).normalization == preprocess.IMAGENET
  round_trip(arch, workdir, source.state_dict(), tmp_path, suffix='.safetensors')


@pytest.mark.slow
def test_cli_export_and_reimport(zfnet, imported, tmp_path):
  _, out = imported
  exported = tmp_path / 'export' / 'zfjax.pth'
  assert cli_interop.main(['export', str(out), '--out', str(exported)]) == 0
  state_dict = torch.load(exported, weights_only=True)
  spec, variables = interop.from_torch(zfnet.state_dict(), 'zfnet')
  assert_same_state_dict(state_dict, interop.to_torch(variables, spec, 'zfjax'))
  assert json.loads(exported.with_suffix('.json').read_text())['model'] == 'pytorchcv_zfnet'
  again = tmp_path / 'again'  # the sidecar config brings back pytorchcv's spec
  assert cli_interop.main(['import', str(exported), '--arch', 'zfjax', '--out', str(again)]) == 0
  config, params = checkpoints.restore_params(again)
  assert models.spec_from_config(config, 1000) == spec
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params),
               variables['params'])


def test_fold_input_scale():
  """Folded params on 0-255 pixels minus 255 * mean give the source's logits.

  The source's of the normalized image, that is.
  """
  source = randomize(TorchvisionAlexNet(num_classes=10), seed=6)
  spec, variables = interop.from_torch(source.state_dict(), 'torchvision_alexnet')
  folded = interop.fold_input_scale(variables['params'], spec)
  assert folded['conv2'] is variables['params']['conv2']
  pixels = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(7))
  mean = torch.tensor(preprocess.IMAGENET_MEAN)[:, None, None]
  std = torch.tensor(preprocess.IMAGENET_STD)[:, None, None]
  with torch.no_grad():
    reference = source((pixels - mean) / std).numpy()
  ours = logits(spec, {'params': folded}, (pixels - mean) * 255)
  assert relative_error(ours, reference) < TOLERANCE


# ------------------------------------------------------------------------------ errors


def test_errors_name_the_problem(zfnet, tmp_path):
  state_dict = zfnet.state_dict()
  with pytest.raises(ValueError, match="unknown arch 'vgg16'"):
    interop.from_torch(state_dict, 'vgg16')
  missing = {k: v for k, v in state_dict.items() if k != 'output.fc2.fc.bias'}
  with pytest.raises(ValueError, match=r"missing keys \['output.fc2.fc.bias'\]"):
    interop.from_torch(missing, 'zfnet')
  with pytest.raises(ValueError, match=r"unexpected keys \['extra.weight'\]"):
    interop.from_torch({**state_dict, 'extra.weight': torch.zeros(1)}, 'zfnet')
  wrong = {**state_dict, 'features.stage3.unit2.conv.weight': torch.zeros(384, 384, 5, 5)}
  with pytest.raises(ValueError, match=r'features.stage3.unit2.conv.weight: expected shape '
                     r'\(384, 384, 3, 3\)'):
    interop.from_torch(wrong, 'zfnet')
  with pytest.raises(ValueError, match="fits --arch zfnet"):
    interop.from_torch(state_dict, 'zfnetb')
  with pytest.raises(ValueError, match='missing keys'):
    interop.from_torch(state_dict, 'torchvision_alexnet')
  spec = architecture.zfnet(10, fc_features=(64, 64))
  with pytest.raises(ValueError, match=r"params\['conv2'\]\['kernel'\]: expected shape"):
    interop.to_torch({'params': {**tz.random_flax_params(10),
                                 'conv2': {'kernel': np.zeros((3, 3, 96, 256), np.float32),
                                           'bias': np.zeros(256, np.float32)}}}, spec)
  with pytest.raises(ValueError, match="no layer 'fc8'"):
    params = tz.random_flax_params(10)
    interop.to_torch({k: v for k, v in params.items() if k != 'fc8'}, spec)
  with pytest.raises(ValueError, match=r"arch 'zfnet' has no parameters for layer\(s\) \['fc9'\]"):
    interop.to_torch({}, architecture.zfnet(10, fc_features=(64, 64, 64)), 'zfnet')
  # the CLI: one line on stderr, exit status 2; an existing workdir is not overwritten.
  path = tmp_path / 'bad.pth'
  torch.save(missing, path)
  result = subprocess.run([sys.executable, '-m', 'zfjax.interop', 'import', str(path),
                           '--arch', 'zfnet', '--out', str(tmp_path / 'out')],
                          cwd=REPO, capture_output=True, text=True, check=False)
  assert result.returncode == 2 and 'output.fc2.fc.bias' in result.stderr
  assert 'Traceback' not in result.stderr
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'file').write_text('x')
  assert cli_interop.main(['import', str(path), '--arch', 'zfnet', '--out',
                           str(tmp_path / 'full')]) == 2


@pytest.fixture(scope='module')
def small_export(tmp_path_factory):
  """(params, exported .pth) of a digits-sized small_zfnet, exported by the CLI.

  32x32 inputs, a 4x4 map into fc6; written as a workdir first.
  """
  from zfjax.configs import digits  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp('small')
  config = digits.get_config('smoke')
  spec = models.spec_from_config(config, 10)
  # Random weights of the model's shapes (its init would compile for seconds).
  shapes = jax.eval_shape(models.ConvNet(spec).init, jax.random.key(0),
                          np.zeros((1, 32, 32, 3), np.float32))['params']
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(s.dtype), shapes)
  interop.write_checkpoint(root / 'digits', params, config)
  exported = root / 'digits.pth'
  assert cli_interop.main(['export', str(root / 'digits'), '--out', str(exported)]) == 0
  return params, exported


def test_export_of_a_small_model_uses_its_image_size(small_export, tmp_path):
  """The small model goes out and back, folded or not."""
  params, exported = small_export
  state_dict = torch.load(exported, weights_only=True)
  assert tuple(state_dict['fc6.weight'].shape) == (16, 8 * 4 * 4)
  assert cli_interop.main(['import', str(exported), '--arch', 'zfjax', '--out',
                           str(tmp_path / 'back')]) == 0
  back_config, back = checkpoints.restore_params(tmp_path / 'back')
  assert back_config.dataset == 'digits' and back_config.model == 'small_zfnet'
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, back),
               jax.tree.map(np.asarray, params))
  round_trip('zfjax', tmp_path / 'back', torch.load(exported, weights_only=True), tmp_path)
  assert cli_interop.main(['import', str(exported), '--arch', 'zfjax', '--out',
                           str(tmp_path / 'folded'), '--fold-normalization']) == 0
  folded_config, folded = checkpoints.restore_params(tmp_path / 'folded')
  assert 'conv1 scaled' in folded_config.input_transform
  scale = 255 * np.asarray(preprocess.IMAGENET_STD)[:, None]  # per input channel (HWIO)
  np.testing.assert_allclose(np.asarray(folded['conv1']['kernel']) * scale,
                             np.asarray(params['conv1']['kernel']), rtol=1e-6)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, folded['conv2']),
               jax.tree.map(np.asarray, params['conv2']))
  assert folded_config.input_normalization == preprocess.PAPER
  # absl's usual spelling of the flag works too
  assert cli_interop.main(['import', str(exported), '--arch', 'zfjax', '--out',
                           str(tmp_path / 'folded_too'), '--fold_normalization']) == 0
  _, folded_too = checkpoints.restore_params(tmp_path / 'folded_too')
  np.testing.assert_array_equal(np.asarray(folded_too['conv1']['kernel']),
                                np.asarray(folded['conv1']['kernel']))


def test_export_refuses_a_layout_of_another_model(small_export, tmp_path, capsys):
  """A small_zfnet is no pytorchcv zfnet: exit 2, one line saying to use --arch zfjax."""
  _, exported = small_export
  workdir = tmp_path / 'small'
  assert cli_interop.main(['import', str(exported), '--arch', 'zfjax', '--out',
                           str(workdir)]) == 0
  capsys.readouterr()
  for arch in ('zfnet', 'zfnetb', 'torchvision_alexnet'):
    out = tmp_path / f'{arch}.pth'
    assert cli_interop.main(['export', str(workdir), '--arch', arch, '--out', str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: checkpoint '), err
    assert f"holds model 'small_zfnet', not arch {arch!r}'s; export it with --arch zfjax" in err
    assert not out.exists()
  assert cli_interop.main(['export', str(workdir), '--arch', 'vgg', '--out',
                           str(tmp_path / 'x.pth')]) == 2
  assert 'vgg' in capsys.readouterr().err
  assert cli_interop.main(['export', str(workdir), '--out', str(tmp_path)]) == 2
  assert 'is a directory' in capsys.readouterr().err


# Big enough for the workdir's config.json (about 1 kB), too small for the array data of
# the small model's checkpoint (one OCDBT file of about 19 kB).
FILE_SIZE_LIMIT = 8_000


@pytest.mark.slow
def test_import_refused_by_the_file_system_is_one_line_and_leaves_no_checkpoint(
    small_export, tmp_path):
  """`import` refused by the file system: exit 2, one line, no complete-looking step.

  Under a file size limit too small for the checkpoint's array data (the kernel refuses
  the write, as a full disk would): one line naming where and why, and no step directory
  that would pass for a complete checkpoint.
  """
  _, exported = small_export
  out = tmp_path / 'full'
  proc = subprocess.run(with_file_size_limit(FILE_SIZE_LIMIT, [
      sys.executable, '-m', 'zfjax.interop', 'import', str(exported), '--arch', 'zfjax',
      '--out', str(out)]), cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  # One line, nothing else: TensorStore's callbacks into Orbax's closed event loop
  # ('Event loop is closed') are kept off stderr by zfjax.cli's error hooks.
  assert proc.stderr == (f'error: cannot write a checkpoint in {out / "checkpoints"}: File '
                         'too large\n'), proc.stderr[-3000:]
  assert not (out / 'checkpoints' / '0').exists()
  with pytest.raises(FileNotFoundError):
    checkpoints.find_checkpoint(out)
  with pytest.raises((FileNotFoundError, checkpoints.CheckpointError)):
    checkpoints.restore_params(out)


def test_imported_config_has_every_training_field():
  from zfjax.configs import zfnet  # pylint: disable=import-outside-toplevel
  config = interop.imported_config('zfnetb', 'x.pth')
  assert set(zfnet.get_config()) <= set(config)
  assert config.conv_features == interop.ZFNETB_FEATURES
  assert models.spec_from_config(config, 1000) == interop.spec_for('zfnetb')


def test_no_torch_at_import_time():
  code = ('import sys; import zfjax.interop, zfjax.architecture; '
          'assert "torch" not in sys.modules, "torch imported"')
  subprocess.run([sys.executable, '-c', code], cwd=REPO, check=True)
