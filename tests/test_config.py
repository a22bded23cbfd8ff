import argparse
import glob
import os
import subprocess
import sys

import pytest

from config import (REPO_ROOT, ConfigError, add_config_args, config_from_args, config_to_text, load_config,
                    parse_overrides)

CONFIGS = sorted(glob.glob(os.path.join(REPO_ROOT, 'config', '*.py')))
RUN_CONFIGS = [p for p in CONFIGS if os.path.basename(p) not in ('__init__.py', '__main__.py', 'base.py')]


def test_there_are_the_five_run_configs():
    names = {os.path.basename(p) for p in RUN_CONFIGS}
    assert {'nyu_b2.py', 'nyu_b4.py', 'sun_b2.py', 'sun_b4.py', 'demo.py'} <= names


@pytest.mark.parametrize('path', RUN_CONFIGS, ids=os.path.basename)
def test_every_config_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    assert len(cfg.class_names) == cfg.num_classes
    assert cfg.niters_per_epoch == cfg.num_train_imgs // cfg.batch_size + 1
    assert os.path.isabs(cfg.dataset_path) and os.path.isabs(cfg.log_dir)
    saved = tmp_path / 'config.py'
    saved.write_text(config_to_text(cfg))
    assert load_config(str(saved)) == cfg


def test_official_values():
    nyu = load_config(os.path.join(REPO_ROOT, 'config/nyu_b4.py'))
    assert (nyu.backbone, nyu.lr, nyu.batch_size, nyu.nepochs, nyu.warm_up_epoch) == ('mit_b4', 6e-5, 4, 500, 10)
    assert nyu.niters_per_epoch == 795 // 4 + 1
    assert nyu.channel_order == 'bgr' and nyu.bn_eps == 1e-3 and nyu.eval_crop_size == [480, 640]
    assert nyu.train_scale_array == [0.5, 0.75, 1, 1.25, 1.5, 1.75]
    sun = load_config(os.path.join(REPO_ROOT, 'config/sun_b2.py'))
    assert (sun.backbone, sun.num_classes, sun.num_train_imgs, sun.num_eval_imgs) == ('mit_b2', 37, 5285, 5050)


def _write(tmp_path, body):
    path = tmp_path / 'cfg.py'
    path.write_text('from config.base import base_config\nconfig = base_config()\n' + body)
    return str(path)


def test_unknown_key_in_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="'bakcbone'"):
        load_config(_write(tmp_path, "config.bakcbone = 'mit_b2'\n"))


def test_wrong_type_in_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="'batch_size'.*expected int"):
        load_config(_write(tmp_path, "config.batch_size = '4'\n"))


@pytest.mark.parametrize('override, key', [
    ('lr=-1e-4', 'lr'),
    ('eval_crop_size=[0,640]', 'eval_crop_size'),
    ('backbone=resnet50', 'backbone'),
    ('select=mean', 'select'),
    ('losses=["loss5"]', 'losses'),
    ('lambda_mask=1.5', 'lambda_mask'),
])
def test_out_of_range_values_are_named(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(os.path.join(REPO_ROOT, 'config/nyu_b2.py'), [override])


def test_overrides_are_parsed_and_type_checked():
    cfg = load_config(os.path.join(REPO_ROOT, 'config/nyu_b2.py'),
                      ['lr=1e-4', 'backbone=mit_b0', 'eval_scale_array=[0.75,1,1.25]', 'eval_flip=True',
                       'batch_size=8', 'teacher_checkpoint=None'])
    assert cfg.lr == 1e-4 and cfg.backbone == 'mit_b0' and cfg.eval_flip is True
    assert cfg.eval_scale_array == [0.75, 1, 1.25] and cfg.teacher_checkpoint is None
    assert cfg.niters_per_epoch == 795 // 8 + 1
    assert isinstance(load_config(os.path.join(REPO_ROOT, 'config/nyu_b2.py'), ['lr=1']).lr, float)
    with pytest.raises(ConfigError, match="'eval_flip'.*expected bool"):
        load_config(os.path.join(REPO_ROOT, 'config/nyu_b2.py'), ['eval_flip=1'])
    with pytest.raises(ConfigError, match="'nepochs'"):
        load_config(os.path.join(REPO_ROOT, 'config/nyu_b2.py'), ['nepochs=abc'])
    with pytest.raises(ConfigError, match="unknown.*'lrr'"):
        load_config(os.path.join(REPO_ROOT, 'config/nyu_b2.py'), ['lrr=1'])
    with pytest.raises(ConfigError, match='key=value'):
        parse_overrides(['lr'])


@pytest.mark.integration
def test_print_command_shows_resolved_config_and_clean_errors():
    ok = subprocess.run([sys.executable, '-m', 'config', 'config/demo.py', '--opts', 'lr=0.5'],
                        cwd=REPO_ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and "'lr': 0.5" in ok.stdout
    bad = subprocess.run([sys.executable, '-m', 'config', 'config/demo.py', '--opts', 'lr=-1'],
                         cwd=REPO_ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "'lr'" in bad.stderr and 'Traceback' not in bad.stderr


@pytest.mark.parametrize('body, line, error', [
    ("config.lr = 1e-4 +\n", 3, 'SyntaxError: invalid syntax'),
    ("\nconfig.lr = learning_rate\n", 4, "NameError: name 'learning_rate' is not defined"),
])
def test_a_config_file_with_an_error_is_one_line_naming_file_and_line(tmp_path, capsys, body, line, error):
    path = _write(tmp_path, body)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == f"config file '{path}', line {line}: {error}"
    parser = add_config_args(argparse.ArgumentParser(prog='train.py'))
    with pytest.raises(SystemExit) as stop:
        config_from_args(parser.parse_args(['--config', path]), parser)
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"train.py: error: config file '{path}', line {line}: {error}\n"
