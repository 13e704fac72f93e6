"""bigvis is an installed package: its tools and configs import from any folder, with no sys.path
edits, and the console scripts pyproject.toml declares exist and run."""
import ast
import glob
import os
import subprocess
import sys
import tomllib

from tests import helpers

_TOOLS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(helpers.REPO, 'tools', '*.py'))
                if not p.endswith('__init__.py'))  # one console script each


def test_no_module_edits_sys_path():
  files = [p for d in ('bigvis', 'tools', 'configs') for p in
           glob.glob(os.path.join(helpers.REPO, d, '**', '*.py'), recursive=True)]
  offenders = [p for p in files for node in ast.walk(ast.parse(open(p).read()))
               if isinstance(node, ast.Attribute) and node.attr == 'path'
               and isinstance(node.value, ast.Name) and node.value.id == 'sys']
  assert not offenders, offenders


def test_tools_and_configs_import_from_another_folder(tmp_path):
  code = ('import importlib\n'
          f'for name in {_TOOLS!r}:\n'
          '  assert callable(importlib.import_module("bigvis.tools." + name).main), name\n'
          'from bigvis.configs import finetune, pretrain\n'
          'print(finetune.get_config("runlocal").model.variant)\n')
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  out = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True,
                       text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ['Ti/16']


def test_console_scripts_cover_every_tool_and_run(tmp_path):
  with open(os.path.join(helpers.REPO, 'pyproject.toml'), 'rb') as f:
    scripts = tomllib.load(f)['project']['scripts']
  assert {v.split(':')[0] for v in scripts.values()} == (
      {f'bigvis.tools.{t}' for t in _TOOLS} | {'bigvis.train'})
  exe = os.path.join(os.path.dirname(sys.executable), 'bigvis-make-synthetic')
  subprocess.run([exe, '--out', str(tmp_path / 'shapes'), '--num_records', '8',
                  '--image_size', '16'], cwd=tmp_path, check=True, capture_output=True)
  assert any(n.startswith('train-') for n in os.listdir(tmp_path / 'shapes'))
