"""Tests for vit_jax.predict (and the checkpoint/image loading it shares with the other tools)."""

import jax
import numpy as np
import pytest
from PIL import Image

from vit_jax import predict
from vit_jax.tools import inference
import tiny_checkpoint


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
  return tiny_checkpoint.save_checkpoint(str(tmp_path_factory.mktemp('ckpt')))


@pytest.mark.slow
def test_image_size_is_read_from_the_position_embeddings(ckpt):
  path, model, _ = ckpt
  params = inference.load_params(path)
  assert inference.image_size(model, params) == tiny_checkpoint.SIZE
  hybrid = inference.build_model('R26+ViT-S_32', num_classes=0)  # 32x down-sampling: 4 (root) * 2**3 stages.
  posemb_7x7 = {'Transformer': {'posembed_input': {'pos_embedding': np.zeros((1, 50, 2))}}}
  assert inference.image_size(hybrid, posemb_7x7) == 224


def test_load_image_is_resize_small_then_central_crop(tmp_path):
  # A 32x16 image is already 16 on its small side, so the crop keeps columns 8..23 unchanged.
  pixels = np.random.default_rng(0).integers(0, 256, (16, 32, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(tmp_path / 'wide.png')
  x = inference.load_image(str(tmp_path / 'wide.png'), 16)
  assert x.shape == (16, 16, 3) and x.dtype == np.float32
  np.testing.assert_allclose(x, pixels[:, 8:24] / 127.5 - 1, atol=1e-6)


def test_cli_prints_topk_in_order_with_the_models_probabilities(ckpt, tmp_path, capsys):
  path, model, params = ckpt
  img = tiny_checkpoint.write_image(str(tmp_path / 'a.jpg'))
  labels = tmp_path / 'labels.txt'
  labels.write_text('\n'.join(f'class_{i}' for i in range(5)) + '\n')
  assert inference.run_cli(predict.main, ['--model', tiny_checkpoint.MODEL, '--checkpoint', path, '--image', img,
                                          '--topk', '3', '--labels', str(labels)]) == 0
  lines = capsys.readouterr().out.strip().split('\n')
  assert lines[0] == img and len(lines) == 4
  probs = np.asarray(jax.nn.softmax(model.apply({'params': params}, inference.load_image(img, 16)[None],
                                                train=False)))[0]
  expected = np.argsort(-probs)[:3]
  for line, c in zip(lines[1:], expected):
    p, name, index = line.split()
    assert (name, index) == (f'class_{c}', f'({c})')
    assert float(p) == pytest.approx(probs[c], abs=1e-4)


def test_builtin_imagenet_names():
  names = predict.builtin_label_names('imagenet2012')
  if names is None:
    pytest.skip('neither timm nor tensorflow-datasets is installed')
  assert len(names) == 1000 and names[0] in ('tench, Tinca tinca', 'n01440764')
  names21k = predict.builtin_label_names('imagenet21k')
  assert names21k is None or len(names21k) == 21843
  assert predict.label_names('imagenet2012', 1000)[0] == names
  with pytest.raises(ValueError, match='1000 names but the model has 5 classes'):
    predict.label_names('imagenet2012', 5)


@pytest.mark.parametrize('problem', ['missing_image', 'corrupt_image', 'wrong_model', 'missing_checkpoint'])
def test_user_errors_are_one_line(ckpt, tmp_path, capsys, problem):
  path, _, _ = ckpt
  img = tiny_checkpoint.write_image(str(tmp_path / 'ok.png'))
  model = tiny_checkpoint.MODEL
  if problem == 'missing_image':
    img = str(tmp_path / 'nope.jpg')
  elif problem == 'corrupt_image':
    img = str(tmp_path / 'bad.jpg')
    with open(img, 'wb') as f:
      f.write(b'not a jpeg at all')
  elif problem == 'wrong_model':
    model = 'testing'
  else:
    path = str(tmp_path / 'nope.npz')
  assert inference.run_cli(predict.main, ['--model', model, '--checkpoint', path, '--image', img]) == 2
  err = capsys.readouterr().err.strip()
  assert '\n' not in err and err.startswith('error: ')
  culprit = {'missing_image': img, 'corrupt_image': img, 'wrong_model': 'does not fit testing',
             'missing_checkpoint': path}[problem]
  assert culprit in err
