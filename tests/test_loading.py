"""zfjax.loading.load: one loader for a workdir, a checkpoint directory and imported weights."""

import json

import ml_collections
import numpy as np
import pytest

from zfjax import checkpoints, input_pipeline, interop, loading, preprocess


@pytest.fixture(scope='module')
def workdir(digits_smoke_run):
  return digits_smoke_run(0)


def photo(height=40, width=50, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_a_workdir_gives_everything_to_use_the_net(workdir):
  net = loading.load(workdir)
  config = json.loads((workdir / 'config.json').read_text())
  assert (net.step, net.checkpoint) == (4, workdir / 'checkpoints' / '4')
  assert net.config.model == config['model'] == 'small_zfnet'
  assert net.num_classes == 10 and net.normalization == 'paper' and net.notes == ()
  assert net.spec == net.model.spec and net.spec[-1].name == 'fc8'
  np.testing.assert_array_equal(net.mean, input_pipeline.mean_image(net.config))
  logits = net.model.apply(net.variables, net.input(photo())[None])
  assert logits.shape == (1, 10) and np.isfinite(logits).all()


def test_input_is_the_evaluation_preprocessing_and_to_display_inverts_it(workdir):
  net = loading.load(workdir)
  x = net.input(photo())
  np.testing.assert_array_equal(x, preprocess.preprocess(photo(), net.mean, size=32,
                                                         resize=36))
  plain = preprocess.preprocess(photo(), 0.0, size=32, resize=36)
  np.testing.assert_allclose(net.to_display(x), plain, atol=1e-4)


@pytest.mark.parametrize('where, step, expected', [
    ('checkpoints', 'latest', 4), ('checkpoints', 2, 2), ('checkpoints/2', 'latest', 2),
    ('', '2', 2), ('', 'best', None)])
def test_checkpoint_directories_and_steps(workdir, where, step, expected):
  net = loading.load(workdir / where if where else workdir, step)
  if expected is None:  # 'best': the lowest validation error among the saved steps
    expected = int(checkpoints.find_checkpoint(workdir, 'best').name)
  assert (net.step, net.checkpoint) == (expected, workdir / 'checkpoints' / str(expected))


def test_bad_paths_say_what_is_wrong(workdir, tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    loading.load(tmp_path / 'missing')
  (tmp_path / 'file').write_text('x')
  with pytest.raises(NotADirectoryError, match='is not a directory'):
    loading.load(tmp_path / 'file')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='has no checkpoints'):
    loading.load(tmp_path / 'empty')
  with pytest.raises(FileNotFoundError, match=r'no checkpoint of step 3 .*steps: \[2, 4\]'):
    loading.load(workdir, 3)


def small_params(net):
  return {name: {key: np.asarray(value) for key, value in layer.items()}
          for name, layer in net.params.items()}


def test_imported_imagenet_weights_take_imagenet_inputs(workdir, tmp_path):
  """Weights imported with ImageNet's normalization take torchvision's inputs, no mean."""
  net = loading.load(workdir)
  config = interop.imported_config('zfjax', 'test.pth', net.config.to_dict(),
                                   normalization=preprocess.IMAGENET)
  interop.write_checkpoint(tmp_path / 'imported', small_params(net), config)
  imported = loading.load(tmp_path / 'imported')
  assert imported.normalization == 'imagenet' and imported.mean is None
  assert (imported.step, imported.num_classes) == (0, 10)
  x = imported.input(photo())
  crop = preprocess.preprocess(photo(), 0.0, size=32, resize=36) / 255.0
  expected = (crop - np.float32(preprocess.IMAGENET_MEAN)) / np.float32(preprocess.IMAGENET_STD)
  np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(imported.to_display(x), crop * 255.0, atol=1e-3)


def test_a_checkpoint_without_config_is_refused(workdir, tmp_path):
  net = loading.load(workdir)
  out = interop.write_checkpoint(tmp_path / 'bare', small_params(net), net.config)
  (tmp_path / 'bare' / 'config.json').unlink()
  metadata = out / '_CHECKPOINT_METADATA'
  record = json.loads(metadata.read_text())
  record['custom_metadata'] = {}
  metadata.write_text(json.dumps(record))
  with pytest.raises(checkpoints.CheckpointError, match='carries no config'):
    loading.load(tmp_path / 'bare')


def unavailable_config(tmp_path) -> ml_collections.ConfigDict:
  """A paper-space net trained on a TFDS dataset whose files are not on this machine."""
  return ml_collections.ConfigDict({'dataset': 'imagenet2012', 'data_dir': str(tmp_path),
                                    'train_split': 'train', 'image_size': 32,
                                    'resize_size': 36, 'mean_image_examples': 0})


def test_a_missing_dataset_mean_falls_back_to_channel_means_with_a_note(tmp_path):
  image, notes, reason = loading.mean_image(unavailable_config(tmp_path))
  np.testing.assert_array_equal(image[5, 7], np.float32(preprocess.IMAGENET_MEAN_255))
  assert image.shape == (36, 36, 3)
  assert len(notes) == 1 and 'not available here' in notes[0]
  assert reason and 'ILSVRC2012_img_train.tar' in reason
  with pytest.raises(input_pipeline.DatasetUnavailableError):
    loading.mean_image(unavailable_config(tmp_path), 'dataset')


def test_the_mean_can_be_given(tmp_path):
  config = unavailable_config(tmp_path)
  channels, notes, _ = loading.mean_image(config, 'imagenet_channels')
  assert notes == [] and channels.shape == (36, 36, 3)
  np.save(tmp_path / 'mean.npy', np.full((36, 36, 3), 7.0, np.float32))
  given, _, _ = loading.mean_image(config, str(tmp_path / 'mean.npy'))
  assert given.shape == (36, 36, 3) and float(given.max()) == 7.0
  np.save(tmp_path / 'wrong.npy', np.zeros((4, 4, 3), np.float32))
  with pytest.raises(ValueError, match=r'has shape \(4, 4, 3\); the net needs \(36, 36, 3\)'):
    loading.mean_image(config, str(tmp_path / 'wrong.npy'))
  scalar, _, _ = loading.mean_image(config, 5.0)
  assert scalar.shape == (36, 36, 3) and float(scalar.min()) == 5.0
