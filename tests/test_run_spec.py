"""engine/run_spec.py: what a run needs, decided once from the config and the mode."""
import os
import shutil

import pytest
import torch

import train
from config import load_config
from dataloader.dataset import DatasetError
from dataloader.synthetic_rooms import make_synthetic_dataset
from engine.cli import train_args_parser
from engine.run_spec import RunSpec
from helpers import DEMO_CONFIG, read_metrics, tiny_opts


@pytest.mark.parametrize('flags, teacher, heads', [
    ([], True, True),                                              # the paper: KL + feature term
    (['distillation_alpha=0', 'distillation_beta=0'], False, False),   # the CMX baseline
    (['distillation_beta=0'], True, False),                        # KL term only
    (['distillation_alpha=0'], True, True),                        # feature term only
    (['select="none"'], True, False),                              # no stage selected: no feature term
    (['distillation_single=0', 'distillation_beta=0'], False, False),  # KL switched off, no feature term
])
def test_student_needs(flags, teacher, heads):
    spec = RunSpec.from_config(load_config(DEMO_CONFIG, flags), 'student')
    assert (spec.teacher, spec.heads, spec.extra) == (teacher, heads, True)


def test_teacher_and_evaluation_need_nothing_else():
    cfg = load_config(DEMO_CONFIG)
    assert RunSpec.from_config(cfg, 'teacher') == RunSpec('teacher', teacher=False, heads=False, extra=False)
    assert RunSpec.for_evaluation('student') == RunSpec('student', teacher=False, heads=False, extra=True)
    assert RunSpec.for_evaluation('teacher').extra is False
    with pytest.raises(ValueError, match='mode'):
        RunSpec.from_config(cfg, 'rgbd')


def test_the_spec_builds_heads_and_teacher_as_it_says():
    cfg = load_config(DEMO_CONFIG, ['decoder_embed_dim=32'])
    spec = RunSpec.from_config(cfg, 'student')
    assert spec.build_model(cfg).distill_heads is not None
    teacher = spec.build_teacher(cfg, torch.device('cpu'), load=False)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    baseline = RunSpec.from_config(load_config(DEMO_CONFIG, ['distillation_alpha=0', 'distillation_beta=0']),
                                   'student')
    assert baseline.build_model(cfg).distill_heads is None
    assert baseline.build_teacher(cfg, torch.device('cpu')) is None


@pytest.fixture(scope='module')
def rgb_only_dataset(tmp_path_factory):
    """A synthetic dataset whose HHA folder does not exist at all."""
    root = str(tmp_path_factory.mktemp('data') / 'Synthetic')
    make_synthetic_dataset(root, num_train=8, num_test=4, height=64, width=64, seed=3)
    shutil.rmtree(os.path.join(root, 'HHA'))
    return root


def test_teacher_data_never_touches_the_extra_modality(rgb_only_dataset):
    cfg = load_config(DEMO_CONFIG, [f'dataset_path={rgb_only_dataset!r}', 'num_train_imgs=8'])
    item = RunSpec.from_config(cfg, 'teacher').dataset(cfg, 'train')[0]
    assert set(item) == {'rgb', 'label', 'name'}
    with pytest.raises(DatasetError, match=r'HHA/0000\.png: does not exist'):
        RunSpec.from_config(cfg, 'student').dataset(cfg, 'train')


def test_a_teacher_trains_on_a_dataset_without_hha(rgb_only_dataset, tmp_path):
    parser = train_args_parser()
    train.main(parser.parse_args(['--config', DEMO_CONFIG, '--mode', 'teacher', '--device', 'cpu',
                                  '--opts', *tiny_opts(rgb_only_dataset, str(tmp_path), nepochs=1)]), parser)
    assert [record['epoch'] for record in read_metrics(str(tmp_path / 'teacher'))] == [1]
