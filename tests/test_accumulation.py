"""Gradient accumulation: one process with A micro-batches per step trains exactly as A processes do,
and a global batch that cannot be split says what would work."""
import os
import subprocess
import sys

import pytest
import torch
from easydict import EasyDict

from config import REPO_ROOT, load_config
from dataloader.loader import EpochSampler, micro_batching
from engine.rng import seed_everything
from models.builder import build_model
from dataloader.synthetic_rooms import make_synthetic_dataset
from helpers import DEMO_CONFIG, free_port, tiny_opts


def steps_of(sampler, micro_batch, accumulation):
    """The sampler's items grouped as [step][micro-batch] -> list of items."""
    items = list(sampler)
    size = micro_batch * accumulation
    return [[items[s + m * micro_batch:s + (m + 1) * micro_batch] for m in range(accumulation)]
            for s in range(0, len(items), size)]


def test_one_process_accumulating_sees_the_batches_of_several():
    two_ranks = [steps_of(EpochSampler(24, seed=3, rank=r, world_size=2, micro_batch=3), 3, 1) for r in (0, 1)]
    accumulating = steps_of(EpochSampler(24, seed=3, micro_batch=3, accumulation=2), 3, 2)
    assert len(accumulating) == len(two_ranks[0]) == 4
    for step, micro_batches in enumerate(accumulating):
        assert micro_batches == [two_ranks[0][step][0], two_ranks[1][step][0]]
    # Without accumulation the order is the plain one: positions r, r + W, ...
    plain = list(EpochSampler(24, seed=3, rank=1, world_size=2, micro_batch=3))
    assert plain == [pair for step in two_ranks[1] for pair in step[0]]


def test_micro_batching_and_what_it_names_when_the_batch_cannot_be_split():
    assert micro_batching(EasyDict(batch_size=4, micro_batch_size=None), 2) == (2, 1)
    assert micro_batching(EasyDict(batch_size=4, micro_batch_size=1), 1) == (1, 4)
    with pytest.raises(ValueError, match=r'4 cannot be split evenly over 8 processes; use 1, 2, 4 of them'):
        micro_batching(EasyDict(batch_size=4, micro_batch_size=None), 8)
    with pytest.raises(ValueError, match=r"'micro_batch_size' 3 .* use one of 1, 2, 4"):
        micro_batching(EasyDict(batch_size=8, micro_batch_size=3), 2)


DRIVER = '''
import json, os, sys
import torch
torch.nn.Dropout2d.forward = lambda self, x: x   # dropout draws differ by process; compare the arithmetic
import train
from engine.cli import train_args_parser
parser = train_args_parser()
model = train.main(parser.parse_args(sys.argv[1:]), parser)
if os.environ.get('RANK', '0') == '0':
    torch.save({name: p.detach() for name, p in model.named_parameters()}, os.environ['PARAMETERS_OUT'])
'''


@pytest.mark.integration
def test_two_processes_equal_one_process_with_two_micro_batches(tmp_path):
    dataset = str(tmp_path / 'Synthetic')
    make_synthetic_dataset(dataset, num_train=8, num_test=4, height=64, width=64, seed=5)
    driver = tmp_path / 'driver.py'
    driver.write_text(DRIVER)
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': REPO_ROOT}

    def train(name, launcher, **opts):
        out = str(tmp_path / f'{name}.pt')
        proc = subprocess.run([*launcher, str(driver), '--config', DEMO_CONFIG, '--mode', 'teacher', '--device',
                               'cpu', '--opts', *tiny_opts(dataset, str(tmp_path / name), nepochs=2,
                                                             batch_size=4, eval_step=10, **opts)],
                              cwd=REPO_ROOT, env={**env, 'PARAMETERS_OUT': out}, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return torch.load(out, weights_only=True), proc.stdout

    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={free_port()}']
    two_processes, _ = train('ddp', torchrun)
    accumulated, log = train('accumulated', [sys.executable], micro_batch_size=2)
    assert '(per process 2 micro-batch(es) of 2), 2 optimizer steps/epoch' in log
    assert two_processes.keys() == accumulated.keys()
    for name, value in two_processes.items():
        torch.testing.assert_close(accumulated[name], value, rtol=1e-4, atol=1e-5, msg=name)
    # The runs really moved the weights away from where train.py starts them (seed_everything(seed)).
    seed_everything(load_config(DEMO_CONFIG).seed)
    initial = dict(build_model(load_config(DEMO_CONFIG, ['decoder_embed_dim=32', "backbone='mit_b0'"]),
                               'teacher').named_parameters())
    assert initial.keys() == accumulated.keys()
    assert any(not torch.allclose(initial[name], value) for name, value in accumulated.items())
