"""Several evaluators per run (config.evals): each logged under its own prefix at its own cadence, values equal to
a by-hand computation on the saved params; ReaL label sets scored as big_vision does; one-line config errors."""
import numpy as np
import pytest

import loop_testlib as lib
from vit_jax.data import pipeline
from vit_jax.data import sources
from vit_jax.tools import inference
from vit_jax.training import config_checks
from vit_jax.training import loop

NUM_REAL = 40


def _real_sets(label: int, i: int) -> list:
  """The fake ReaL set of example i: empty (skipped), two labels, or the original label."""
  return [] if i % 4 == 0 else [label, (label + 1) % 10] if i % 4 == 1 else [label]


@pytest.fixture(scope='module', name='real_dir')
def _real_dir(tmp_path_factory):
  """A TFDS dataset with imagenet2012_real's features ('original_label', multi-label 'real_label') over the first
  digits test images, prepared as array_record locally (nothing downloads)."""
  tfds = pytest.importorskip('tensorflow_datasets')
  src = sources.digits(f'test[:{NUM_REAL}]')

  class VitJaxTinyReal(tfds.core.GeneratorBasedBuilder):
    """imagenet2012_real's layout over digits: image, original_label, real_label (a possibly empty set)."""
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(None, None, 3)),
          'original_label': tfds.features.ClassLabel(num_classes=10),
          'real_label': tfds.features.Sequence(tfds.features.ClassLabel(num_classes=10))}))

    def _split_generators(self, dl_manager):
      return {'validation': self._generate_examples()}

    def _generate_examples(self):
      for i in range(NUM_REAL):
        rec = src.records[i]
        yield i, {'image': np.asarray(rec['image']), 'original_label': rec['label'],
                  'real_label': _real_sets(rec['label'], i)}

  data_dir = str(tmp_path_factory.mktemp('tfds'))
  VitJaxTinyReal(data_dir=data_dir, file_format='array_record').download_and_prepare()
  return data_dir


def _predictions(model, params, dataset, pp, data_dir=None):
  """{example id: argmax class} over a split, from the saved params (ids from the pipeline, labels not used)."""
  preds = {}
  for batch in pipeline.make_eval_iterator(dataset, pp, global_batch=64, data_dir=data_dir, with_ids=True):
    logits = np.asarray(model.apply({'params': params}, batch['image'], train=False))
    for i, m, c in zip(batch['id'], batch['mask'], logits.argmax(-1)):
      if m:
        preds[int(i)] = int(c)
  return preds


@pytest.mark.slow
def test_several_evaluators_log_their_own_prefix_and_cadence(tmp_path, real_dir):
  workdir = str(tmp_path / 'run')
  config = lib.tiny_config(tfds_data_dir=real_dir, evals={
      'minival': {'split': 'train[:40]', 'every': 6},
      'real': {'dataset': 'vit_jax_tiny_real', 'split': 'validation'}})
  final = loop.train_and_evaluate(config, workdir)
  records = lib.read_metrics(workdir)
  steps = lambda key: [r['step'] for r in records if key in r]
  assert steps('minival/top1') == [6, 12] and steps('real/top1') == [12] and steps('val/top1') == [12]

  model, params, _ = inference.load_model(workdir)  # the step-12 checkpoint
  specs = {s.name: s for s in config_checks.evals(config)}
  # minival: the first 40 training digits, top-1 against their labels.
  preds = _predictions(model, params, 'digits', specs['minival'].pp)
  labels = [r['label'] for r in sources.digits('train[:40]').records]
  assert sorted(preds) == list(range(40))
  assert final['minival/top1'] == pytest.approx(np.mean([preds[i] == labels[i] for i in range(40)]), abs=1e-9)
  # ReaL: correct when the prediction is in the example's set; examples with an empty set are left out.
  preds = _predictions(model, params, 'vit_jax_tiny_real', specs['real'].pp, real_dir)
  tfds = pytest.importorskip('tensorflow_datasets')
  stored = tfds.data_source('vit_jax_tiny_real', split='validation', data_dir=real_dir)  # TFDS's own order
  real_sets = [[int(c) for c in stored[i]['real_label']] for i in range(NUM_REAL)]
  kept = [i for i in range(NUM_REAL) if real_sets[i]]
  assert sorted(preds) == kept and len(kept) == 30
  real_top1 = np.mean([preds[i] in real_sets[i] for i in kept])
  assert final['real/top1'] == pytest.approx(real_top1, abs=1e-9)
  assert 0 < final['real/top1'] <= final['real/top5'] <= 1
  assert final['val/top1'] == [r for r in records if 'val/top1' in r][0]['val/top1']


@pytest.mark.parametrize('entry, message', [
    ({'v2': {'dataset': 'digits'}}, r"config.evals.v2.split=None must be a split string"),
    ({'v2': {'split': 'test', 'evry': 3}}, r"config.evals.v2 has unknown key\(s\) \['evry'\]"),
    ({'val': {'split': 'test'}}, r'config.evals.val: the name must be'),
    ({'v2': {'split': 'test', 'every': 0}}, r'config.evals.v2.every=0 must be a positive int'),
    ({'v2': {'split': 'nosuchsplit'}}, r"config.evals.v2 \('digits', split 'nosuchsplit'\) cannot be loaded"),
    ({'v2': {'dataset': 'synthetic', 'split': 'test'}}, r"config.evals.v2: 'synthetic' has 1000 classes, the model 10"),
])
def test_bad_evals_entries_are_one_line(entry, message):
  with pytest.raises(config_checks.ConfigError, match=message) as info:
    config_checks.validate(lib.tiny_config(evals=entry))
  assert '\n' not in str(info.value)
