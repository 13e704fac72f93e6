"""Config parsing and validation: typos fail loudly, before anything compiles."""
import subprocess
import sys

import pytest

from bigvis import config as config_lib
from tests import helpers


def test_parse_arg_types_and_flags():
  arg = config_lib.parse_arg('variant=S/16,runlocal,steps=7', variant='B/16', runlocal=False,
                             steps=1)
  assert (arg.variant, arg.runlocal, arg.steps) == ('S/16', True, 7)
  with pytest.raises(ValueError, match="Unknown config arg 'varaint'"):
    config_lib.parse_arg('varaint=S/16', variant='B/16')
  with pytest.raises(ValueError, match='not a boolean'):
    config_lib.parse_arg('runlocal=ture', runlocal=False)
  with pytest.raises(ValueError, match='not a int'):
    config_lib.parse_arg('steps=1.5', steps=1)


def test_typo_in_config_names_the_key_and_suggests():
  c = helpers.tiny_config('/nonexistent')
  c.totl_steps = 5
  with pytest.raises(config_lib.ConfigError, match=r"'totl_steps'.*did you mean 'total_steps'"):
    config_lib.validate(c)


def test_nested_typo_and_task_typo():
  c = helpers.tiny_config('/nonexistent')
  c.optimizer.weight_dacay = 0.1
  with pytest.raises(config_lib.ConfigError, match=r"optimizer\.'weight_dacay'"):
    config_lib.validate(c)
  c = helpers.tiny_config('/nonexistent')
  c.tasks.labels.wieght = 2.0
  with pytest.raises(config_lib.ConfigError, match=r"tasks\.labels\.'wieght'"):
    config_lib.validate(c)


def test_bad_values():
  c = helpers.tiny_config('/nonexistent')
  c.tasks.labels.loss = 'xent'
  with pytest.raises(config_lib.ConfigError, match='does not fit head'):
    config_lib.validate(c)
  c = helpers.tiny_config('/nonexistent')
  c.grad_accum_steps = 3
  with pytest.raises(config_lib.ConfigError, match='not divisible'):
    config_lib.validate(c)
  c = helpers.tiny_config('/nonexistent')
  c.input.fraction = 0.0
  with pytest.raises(config_lib.ConfigError, match=r'input.fraction must be in \(0, 1\]'):
    config_lib.validate(c)
  c.input.fraction, c.input.data_dir, c.input.split = 0.5, '', ''
  c.input.sources.a = config_lib.source('/a')
  with pytest.raises(config_lib.ConfigError, match='applies to one corpus'):
    config_lib.validate(c)


def test_pretrain_config_variants_validate():
  from bigvis.configs import finetune, pretrain  # configs/ is installed as bigvis.configs
  assert finetune.pretrain is pretrain
  for arg in ('', 'runlocal', 'variant=S/16,data=shapes', 'variant=resnet50,runlocal',
              'data=openclipart,labels=vocab',
              'variant=resnext50_32x4d'):
    config_lib.validate(pretrain.get_config(arg))


def test_typo_inside_a_config_file_fails_from_the_cli(tmp_path):
  """ml_collections rejects unknown --config.x flags itself; a typo inside the file is ours."""
  path = tmp_path / 'typo.py'
  path.write_text('from bigvis import config as config_lib\n'
                  'def get_config(arg=None):\n'
                  '  c = config_lib.defaults()\n'
                  '  c.tasks.y = config_lib.task("classifier", "y", 2)\n'
                  '  c.totl_steps = 3\n'
                  '  return c\n')
  result = subprocess.run(
      [sys.executable, '-m', 'bigvis.train', '--config', str(path), '--workdir', str(tmp_path / 'w')],
      capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "'totl_steps' (did you mean 'total_steps'?)" in result.stderr
  assert 'Traceback' not in result.stderr and not (tmp_path / 'w' / 'checkpoints').exists()


@pytest.mark.parametrize('override', ['--config.totl_steps=3', '--config.model.varient=S/16'])
def test_cli_typo_fails_before_compiling(tmp_path, override):
  """Both a typo'd override and the process exit within seconds with a message naming the key."""
  result = subprocess.run(
      [sys.executable, '-m', 'bigvis.train', '--config', 'configs/pretrain.py:runlocal',
       '--workdir', str(tmp_path / 'w'), override],
      capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  key = override.split('.')[-1].split('=')[0]
  assert key in result.stderr
  assert not (tmp_path / 'w' / 'checkpoints').exists()
