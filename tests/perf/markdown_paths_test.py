"""Every `tests/...` and `scripts/...` path that a Markdown file of the repository names exists.

A command in the docs that names a moved test (the first GPU command once ran `tests/lowering_test.py` after it had
moved to `tests/perf/`) would fail on the one device run that needed it.
"""
import os
import re
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A repo-relative path: not preceded by a path character (so `/work/shared/...` and `a/tests/x` do not count).
PATH = re.compile(r'(?<![\w./-])((?:tests|scripts)(?:/\w[\w.-]*)+)')


def named_paths(text: str) -> set:
  """The `tests/...` and `scripts/...` paths in a Markdown text (a trailing '.' of a sentence dropped)."""
  return {m.group(1).rstrip('.') for m in PATH.finditer(text)}


def test_named_paths_are_found_in_text():
  text = 'Run `tests/perf/lowering_test.py`, then scripts/gpu_first_run.sh. Not /work/shared/tests/x.py nor tests/.'
  assert named_paths(text) == {'tests/perf/lowering_test.py', 'scripts/gpu_first_run.sh'}


def test_every_tests_and_scripts_path_named_in_markdown_exists():
  files = subprocess.run(['git', 'ls-files', '*.md'], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.split()
  assert 'docs/performance.md' in files
  missing = [(f, p) for f in files for p in sorted(named_paths(open(os.path.join(REPO, f)).read()))
             if not os.path.exists(os.path.join(REPO, p))]
  assert not missing, missing
