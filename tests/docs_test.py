"""The README and docs/ stay true: every command in a ```sh fence is in a test (or .ci/run), every repository path
they name exists, the generated tables match the code, and the documented commands of the manual run."""
import ast
import glob
import importlib
import itertools
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import loop_testlib as lib
import tiny_checkpoint
from vit_jax.configs import common
from vit_jax.configs import describe
from vit_jax.tools import inference

DOCS = ['README.md'] + sorted(os.path.relpath(p, lib.REPO) for p in glob.glob(os.path.join(lib.REPO, 'docs', '*.md')))


def _read(path: str) -> str:
  with open(os.path.join(lib.REPO, path), encoding='utf-8') as f:
    return f.read()


def _commands(text: str) -> list[str]:
  """The commands in the ```sh fences of a Markdown text (a trailing backslash continues a line)."""
  out, fence = [], None
  for line in text.splitlines():
    if line.strip().startswith('```'):
      fence = line.strip()[3:].strip() if fence is None else None
      continue
    if fence == 'sh' and line.strip():
      if out and out[-1].endswith('\\'):
        out[-1] = out[-1][:-1].rstrip() + ' ' + line.strip()
      else:
        out.append(line.strip())
  return out


def _strings_in_tests() -> list[str]:
  """Every string constant in the test files (implicitly concatenated literals are one), and .ci/run's text."""
  strings = [_read('.ci/run')]
  for path in glob.glob(os.path.join(lib.REPO, 'tests', '**', '*.py'), recursive=True):
    if os.path.basename(path) == 'docs_test.py':
      continue  # This file's own copies count below, where it runs them.
    with open(path, encoding='utf-8') as f:
      tree = ast.parse(f.read())
    strings += [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
  return strings


# The documented commands this file runs itself (test_documented_commands_run below).
TOOL_COMMANDS = [
    'python -m vit_jax.predict --checkpoint /tmp/vit_default --image digit.png --topk 3',
    'python -m vit_jax.visualize all --checkpoint /tmp/vit_default --dataset digits --num_images 4 --per_layer '
    '--out /tmp/vit_default/figures',
    'python -m vit_jax.visualize curves --workdir /tmp/vit_default --out /tmp/vit_default/figures',
    'python -m vit_jax.visualize distance --checkpoint /tmp/vit_default --dataset digits --num_images 64 '
    '--out /tmp/vit_default/figures',
    'python -m vit_jax.fewshot --checkpoint /tmp/vit_default --dataset digits --shots 1 5 10 25',
    'python -m vit_jax.evaluate --checkpoint /tmp/vit_default --dataset digits --split test',
    'python -m vit_jax.export --workdir /tmp/vit_default --out /tmp/vit_default/model.npz',
]
FINETUNE_COMMAND = ('python -m vit_jax.main --config=configs/default.py --workdir=/tmp/vit_default_ft '
                    '--config.model_init=/tmp/vit_default/model.npz')
PRINT_CONFIG_COMMAND = 'python -m vit_jax.main --config=configs/default.py --print_config'
SWEEP_COMMANDS = [
    'python -m vit_jax.sweep --config=configs/default.py --workdir=/tmp/vit_default_sweep',
    'python -m vit_jax.sweep report /tmp/vit_default_sweep',
    "python -m vit_jax.sweep --config=configs/finetune.py:cifar10 --workdir=/shared/ft_sweep --sweep "
    "config.base_lr=1e-3,3e-3 --runner slurm --launcher_args='--nodes 1 --gpus-per-node 8' --dry-run",
]
RUN_HERE = TOOL_COMMANDS + [FINETUNE_COMMAND, PRINT_CONFIG_COMMAND] + SWEEP_COMMANDS


def test_every_documented_command_is_run_by_a_test():
  strings = _strings_in_tests() + RUN_HERE
  missing = [f'{doc}: {cmd}' for doc in DOCS for cmd in _commands(_read(doc))
             if not any(cmd in s for s in strings)]
  assert not missing, ('commands in ```sh fences that no test runs (add a test that runs them verbatim, or put '
                       'a command that cannot run here in a ```text fence with the reason):\n' + '\n'.join(missing))


def test_the_readme_commands_are_what_ci_runs():
  commands = _commands(_read('README.md'))
  assert len(commands) == 2, commands
  ci = _read('.ci/run')
  assert all(c in ci for c in commands)


def _brace_expand(path: str) -> list[str]:
  m = re.search(r'\{([^{}]*)\}', path)
  if not m:
    return [path]
  return list(itertools.chain.from_iterable(
      _brace_expand(path[:m.start()] + part + path[m.end():]) for part in m.group(1).split(',')))


_PATH = re.compile(r'(?<![\w./-])((?:vit_jax|tests|scripts|configs|docs)/[\w./{},*<>-]*\w[}]?)')
_LINK = re.compile(r'\]\(([^)#:]+)(?:#[^)]*)?\)')


def test_every_path_the_docs_name_exists():
  missing = []
  for doc in DOCS:
    text = _read(doc)
    for name in _PATH.findall(text):
      if any(c in name for c in '<>*'):
        continue  # A pattern (configs/<preset>.py), not a file.
      for path in _brace_expand(name.rstrip('.,')):
        if not os.path.exists(os.path.join(lib.REPO, path)):
          missing.append(f'{doc}: {path}')
    for link in _LINK.findall(text):
      if not os.path.exists(os.path.join(lib.REPO, os.path.dirname(doc), link)):
        missing.append(f'{doc}: link {link}')
  assert not missing, 'paths named in the docs that do not exist:\n' + '\n'.join(missing)


def test_every_config_key_has_a_meaning():
  docs = describe.key_docs()
  keys = describe.flatten(common.get_config())
  undocumented = sorted(k for k in keys if not docs.get(k))
  assert not undocumented, (f'keys without a trailing comment in vit_jax/configs/common.py: {undocumented}')
  assert set(docs) == set(keys)


def test_generated_tables_in_the_docs_are_current():
  assert describe.docs_block() in _read('docs/config.md'), (
      'docs/config.md is stale: replace its generated block with the output of python -m vit_jax.configs.describe')
  assert describe.presets_block(os.path.join(lib.REPO, 'configs')) in _read('docs/training.md'), (
      'docs/training.md is stale: replace its presets table with python -m vit_jax.configs.describe configs')


@pytest.mark.parametrize('preset', sorted(os.path.basename(p) for p in glob.glob(
    os.path.join(lib.REPO, 'configs', '[!_]*.py'))))
def test_preset_docstring_gives_command_hardware_time_and_expected(preset):
  fields = describe.preset_fields(os.path.join(lib.REPO, 'configs', preset))
  for key in describe.PRESET_FIELDS:
    assert fields.get(key), f'configs/{preset}: its docstring has no "{key}:" line'
  assert f'python -m vit_jax.main --config=configs/{preset}' in fields['Command'], fields['Command']


def test_print_config_lists_every_key_with_the_preset_value():
  out = subprocess.run([sys.executable] + shlex.split(PRINT_CONFIG_COMMAND)[1:], cwd=lib.REPO,
                       env=lib.env(), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  cells = [[c.strip() for c in re.split(r'(?<!\\)\|', l.strip()[1:-1])] for l in out.stdout.splitlines()
           if l.startswith('| `')]
  rows = {c[0].strip('`'): c[1:] for c in cells}
  assert set(rows) == set(describe.flatten(common.get_config()))
  default = lib.load_config('default')
  assert rows['batch'][:2] == ['`512`', f'`{default.batch}`'] and default.batch != 512
  assert rows['seed'][1] == ''  # The preset keeps the default: the column is left empty.
  assert rows['batch'][2] == describe.key_docs()['batch']


def _run_tool(command: str, subs: dict[str, str]) -> int:
  """A documented `python -m vit_jax.<tool> ...` command, in this process (paths substituted)."""
  for old, new in subs.items():
    command = command.replace(old, new)
  argv = shlex.split(command)
  assert argv[:2] == ['python', '-m']
  module = importlib.import_module(argv[2])
  return inference.run_cli(module.main, argv[3:])


@pytest.mark.slow
def test_documented_commands_run(tmp_path_factory, capsys):
  base = str(tmp_path_factory.getbasetemp())
  workdir = tiny_checkpoint.trained_workdir(base)  # A short run of the default, as README command 1's workdir.
  digit = os.path.join(base, 'digit.png')
  Image.fromarray(np.full((8, 8), 200, np.uint8)).save(digit)
  subs = {'/tmp/vit_default': workdir, 'digit.png': digit}
  for command in TOOL_COMMANDS:
    assert _run_tool(command, subs) == 0, command
  out = capsys.readouterr().out
  assert 'top-1' in out or 'top1' in out, out[-2000:]
  assert os.path.exists(os.path.join(workdir, 'model.npz'))
  assert os.path.exists(os.path.join(workdir, 'figures', 'attention_distance.json'))

  # Fine-tuning from the exported file (shortened: two steps).
  ft = FINETUNE_COMMAND.replace('/tmp/vit_default_ft', os.path.join(base, 'ft')).replace('/tmp/vit_default', workdir)
  short = ['--config.total_steps=2', '--config.warmup_steps=1', '--config.batch=32', '--config.eval_every=2',
           '--config.checkpoint_every=2', '--config.tensorboard=False']
  done = subprocess.run([sys.executable] + shlex.split(ft)[1:] + short, cwd=lib.REPO, env=lib.env(),
                        capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f'Initialised the params from {workdir}/model.npz.' in done.stdout
  assert done.stdout.strip().splitlines()[-1].startswith('Final test accuracy:')

  # The sweep of the default, shrunk to a tiny model and 2 steps a point, then its report; the SLURM dry run.
  sweep_dir = os.path.join(base, 'sweep')
  tiny = [f'--config.{k}={v}' for k, v in {**lib.TINY, 'total_steps': 2, 'warmup_steps': 1}.items()]
  run, report, slurm = SWEEP_COMMANDS
  assert _run_tool(run.replace('/tmp/vit_default_sweep', sweep_dir) + ' ' + ' '.join(tiny), {}) == 0
  assert _run_tool(report.replace('/tmp/vit_default_sweep', sweep_dir), {}) == 0
  table = capsys.readouterr().out
  assert table.count('| done |') == 4, table
  assert _run_tool(slurm, {}) == 0
  assert '#SBATCH --array=0-3' in capsys.readouterr().out
  assert not os.path.exists('/shared/ft_sweep')
