"""engine/run_dir.py: file names, saving with hard links, and what a fresh run refuses."""
import os

import pytest
import torch
from easydict import EasyDict

from engine import run_dir as rd


def test_names():
    assert rd.run_dir('log/x', 'student') == os.path.join('log/x', 'student')
    assert rd.checkpoint_path('d', rd.LAST) == os.path.join('d', 'last.pth')
    assert rd.checkpoint_path('d', rd.BEST) == os.path.join('d', 'best.pth')
    assert rd.checkpoint_path('d', 7) == rd.checkpoint_path('d', '7') == os.path.join('d', 'epoch-7.pth')
    assert rd.checkpoint_name(rd.checkpoint_path('d', 7)) == 'epoch-7'
    with pytest.raises(ValueError, match='unknown checkpoint'):
        rd.checkpoint_path('d', 'newest')


def test_which_checkpoints_an_epoch_writes():
    cfg = EasyDict(checkpoint_start_epoch=10, checkpoint_step=5)
    assert rd.checkpoints_to_write(5, improved=False, cfg=cfg) == [rd.LAST]
    assert rd.checkpoints_to_write(10, improved=True, cfg=cfg) == [rd.LAST, rd.BEST, 10]
    assert rd.checkpoints_to_write(12, improved=False, cfg=cfg) == [rd.LAST]


def test_best_and_epoch_files_are_hard_links_of_the_saved_checkpoint(tmp_path):
    rd.save_checkpoints(str(tmp_path), {'epoch': 1, 'weights': torch.ones(4)}, [rd.LAST, rd.BEST, 1])
    last, best, epoch = (os.stat(rd.checkpoint_path(str(tmp_path), which)) for which in (rd.LAST, rd.BEST, 1))
    assert last.st_ino == best.st_ino == epoch.st_ino and last.st_nlink == 3
    # The next epoch replaces last.pth by rename: the other names keep the earlier state.
    rd.save_checkpoints(str(tmp_path), {'epoch': 2, 'weights': torch.zeros(4)}, [rd.LAST])
    assert torch.load(rd.checkpoint_path(str(tmp_path), rd.BEST))['epoch'] == 1
    assert torch.load(rd.checkpoint_path(str(tmp_path), rd.LAST))['epoch'] == 2
    assert os.stat(rd.checkpoint_path(str(tmp_path), rd.BEST)).st_nlink == 2
    assert sorted(os.listdir(tmp_path)) == ['best.pth', 'epoch-1.pth', 'last.pth']   # no temporary left


def test_a_copy_where_the_file_system_has_no_hard_links(tmp_path, monkeypatch):
    def no_links(source, target):
        raise OSError(1, 'Operation not permitted')

    monkeypatch.setattr(os, 'link', no_links)
    rd.save_checkpoints(str(tmp_path), {'epoch': 3}, [rd.LAST, rd.BEST])
    last, best = (rd.checkpoint_path(str(tmp_path), which) for which in (rd.LAST, rd.BEST))
    assert os.stat(last).st_ino != os.stat(best).st_ino
    assert open(last, 'rb').read() == open(best, 'rb').read()
    assert sorted(os.listdir(tmp_path)) == ['best.pth', 'last.pth']


def test_a_fresh_run_never_overwrites_checkpoints(tmp_path):
    rd.refuse_overwrite(str(tmp_path))      # empty: fine
    rd.save_checkpoints(str(tmp_path), {'epoch': 1}, [rd.LAST])
    with pytest.raises(FileExistsError, match='--resume auto'):
        rd.refuse_overwrite(str(tmp_path))


def test_a_newer_checkpoint_version_is_refused(tmp_path):
    path = rd.checkpoint_path(str(tmp_path), rd.LAST)
    rd.atomic_save({'format': rd.CHECKPOINT_FORMAT, 'version': rd.CHECKPOINT_VERSION + 1, 'optimizer': {}}, path)
    with pytest.raises(ValueError, match='version'):
        rd.read_training_checkpoint(path)
