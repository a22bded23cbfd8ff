"""The demo (tools/demo.py): three runs on their last checkpoints, printed as three rows, the
PrimKD - baseline difference and a sentence that follows the measured numbers."""
import json
import os
import re
import subprocess
import sys

import pytest

from config import REPO_ROOT, load_config
from engine import ablation as ablate
from tools import demo
from dataloader.synthetic_rooms import make_synthetic_dataset
from helpers import DEMO_CONFIG, tiny_opts


def test_the_sentence_follows_the_numbers():
    # teacher far below the baseline, PrimKD below it: depth matters, the teacher pulls the student down
    said = demo.what_the_data_favours(teacher=40.0, baseline=65.0, primkd=54.0)
    assert 'Depth matters' in said and '25.0 points above the RGB teacher' in said and '11.0 points below' in said
    said = demo.what_the_data_favours(teacher=60.0, baseline=65.0, primkd=66.5)
    assert 'Distillation helps' in said and '1.5 points above' in said
    said = demo.what_the_data_favours(teacher=66.0, baseline=65.0, primkd=64.0)
    assert 'RGB alone does about as well' in said and '+1.0 points against' in said and '1.0 points below' in said


@pytest.mark.integration
def test_a_shortened_demo_prints_three_rows_and_the_difference(tmp_path):
    dataset = str(tmp_path / 'Synthetic')
    make_synthetic_dataset(dataset, num_train=8, num_test=4, height=64, width=64, seed=3)
    log_dir = str(tmp_path / 'demo')
    seed = load_config(DEMO_CONFIG).seed
    proc = subprocess.run([sys.executable, 'tools/demo.py', '--config', DEMO_CONFIG,
                           '--opts', *tiny_opts(dataset, log_dir, nepochs=1)],
                          cwd=REPO_ROOT, env=dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO_ROOT),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = {}
    for variant, name, modality in demo.ROWS:
        # Each run was evaluated on its last checkpoint, in its own cell of the demo's log_dir.
        with open(os.path.join(log_dir, variant, f'seed{seed}', ablate.CELL_RESULT)) as f:
            result = json.load(f)
        assert os.path.basename(result['checkpoint']) == 'last.pth'
        row = re.search(rf'^{name} +{modality} +([\d.]+)% +([\d.]+)%$', proc.stdout, re.MULTILINE)
        assert row, f'no row for {name}:\n{proc.stdout[-2000:]}'
        assert float(row.group(1)) == pytest.approx(100 * result['miou'], abs=0.05)
        assert float(row.group(2)) == pytest.approx(100 * result['pixel_acc'], abs=0.05)
        figures[variant] = 100 * result['miou']
    difference = re.search(r'^PrimKD - baseline = ([+-][\d.]+) mIoU$', proc.stdout, re.MULTILINE)
    assert difference and float(difference.group(1)) == pytest.approx(figures['primkd'] - figures['cmx'], abs=0.05)
    sentence = demo.what_the_data_favours(figures['rgb_teacher'], figures['cmx'], figures['primkd'])
    assert sentence in proc.stdout
