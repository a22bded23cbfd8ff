"""engine/run_dir.py: file names, saving with hard links, what a fresh run refuses, the resume policy,
the lock, leftovers of killed saves and metrics.jsonl."""
import errno
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from easydict import EasyDict

from engine import run_dir as rd
from helpers import locked_by_another_process


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


# The resume policy

SAVED = {'nepochs': 3, 'batch_size': 4, 'lr': 6e-5, 'optimizer': 'AdamW', 'eval_step': 25, 'num_workers': 16,
         'gone_key': 1}


def resume_cfg(**changes):
    cfg = EasyDict({k: v for k, v in SAVED.items() if k != 'gone_key'}, new_key=True)
    cfg.update(changes)
    return cfg


def test_resume_applies_the_keys_that_may_change_and_says_so():
    messages = []
    rd.check_resume_config(SAVED, resume_cfg(nepochs=5, eval_step=1, num_workers=0), epoch=3,
                           allow_change=False, source='--resume x', log=messages.append)
    assert 'resuming with changed settings: eval_step 25 -> 1, nepochs 3 -> 5, num_workers 16 -> 0' in messages
    # Keys only one side has (another version of the project) are logged, not compared.
    assert any('new_key' in m for m in messages) and any('gone_key' in m for m in messages)


def test_resume_refuses_other_changes_naming_each_key_with_both_values():
    with pytest.raises(rd.CheckpointError) as error:
        rd.check_resume_config(SAVED, resume_cfg(lr=1e-4, batch_size=8, nepochs=5), epoch=3, allow_change=False,
                               source='--resume x', log=print)
    message = str(error.value)
    assert 'batch_size 4 -> 8, lr 6e-05 -> 0.0001' in message and '--allow-config-change' in message
    assert 'nepochs 3' not in message and len(message.splitlines()) == 1
    messages = []
    rd.check_resume_config(SAVED, resume_cfg(lr=1e-4, batch_size=8), epoch=3, allow_change=True,
                           source='--resume x', log=messages.append)
    assert 'resuming with changed settings (--allow-config-change): batch_size 4 -> 8, lr 6e-05 -> 0.0001' in messages


@pytest.mark.parametrize('changes, needle', [({'optimizer': 'SGDM'}, "optimizer 'AdamW' -> 'SGDM'"),
                                             ({'nepochs': 2}, 'trained 3 epochs, more than nepochs=2')])
def test_resume_refuses_what_no_flag_allows(changes, needle):
    with pytest.raises(rd.CheckpointError, match=needle):
        rd.check_resume_config(SAVED, resume_cfg(**changes), epoch=3, allow_change=True, source='x', log=print)


def test_a_restarted_process_resumes_from_the_newest_checkpoint(tmp_path, monkeypatch):
    rd.atomic_save({'format': rd.CHECKPOINT_FORMAT, 'optimizer': {}, 'epoch': 2, 'iteration': 4},
                   rd.checkpoint_path(str(tmp_path), rd.LAST))
    assert rd.resume_path(None, str(tmp_path)) is None
    monkeypatch.setenv('TORCHELASTIC_RESTART_COUNT', '1')
    messages = []
    assert rd.resume_path(None, str(tmp_path), log=messages.append) == rd.checkpoint_path(str(tmp_path), rd.LAST)
    assert any('torchrun restart 1' in m for m in messages)
    assert rd.resume_path(None, str(tmp_path / 'empty')) is None   # nothing saved yet: a fresh start


# The lock, temporaries, metrics and saving

def test_a_second_run_in_a_locked_run_directory_is_refused(tmp_path):
    directory = str(tmp_path / 'student')
    holder, release = locked_by_another_process(directory)
    try:
        with pytest.raises(rd.RunDirBusy) as error:
            rd.RunLock(directory)
        assert f'pid {holder.pid} on host {socket.gethostname()}' in str(error.value)
        assert 'in use by another run' in str(error.value)
    finally:
        release.set()
        holder.join(60)
    assert not os.path.exists(directory)   # the holder created it and removed it, empty, at its end
    rd.RunLock(directory).release()


def test_the_lock_of_a_dead_process_is_taken_over_and_the_folder_of_a_refused_run_removed(tmp_path):
    directory = str(tmp_path / 'student')
    holder, release = locked_by_another_process(directory, die=True)
    release.set()
    holder.join(60)
    assert os.path.exists(rd.run_file(directory, rd.LOCK_FILE))
    messages = []
    lock = rd.RunLock(directory, log=messages.append)
    assert any('taking over the lock' in m and f'pid {holder.pid}' in m for m in messages)
    lock.release()
    assert os.path.isdir(directory)   # this run did not create it
    fresh = tmp_path / 'fresh' / 'student'
    rd.RunLock(str(fresh)).release()
    assert not fresh.exists()           # created and left empty: removed


def test_a_lock_file_of_another_host_is_refused(tmp_path):
    tmp_path.joinpath(rd.LOCK_FILE).write_text(json.dumps({'pid': 1, 'host': 'elsewhere', 'started': 'x'}))
    with pytest.raises(rd.RunDirBusy, match=r'another host \(pid 1 on host elsewhere.*delete'):
        rd.RunLock(str(tmp_path))
    assert tmp_path.joinpath(rd.LOCK_FILE).exists()


@pytest.mark.integration
def test_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True,
                          text=True).stdout.strip()
    for name in (f'.last.pth.tmp-{dead}', f'.best.pth.link-{dead}', f'.last.pth.tmp-{os.getpid()}', 'x.tmp-1'):
        (tmp_path / name).write_bytes(b'')
    messages = []
    rd.remove_dead_temporaries(str(tmp_path), log=messages.append)
    assert sorted(os.listdir(tmp_path)) == [f'.last.pth.tmp-{os.getpid()}', 'x.tmp-1']   # a live writer's stays
    assert len(messages) == 2


def test_an_epoch_run_again_replaces_its_line_of_metrics(tmp_path):
    for epoch in (1, 2, 3):
        rd.record_epoch(str(tmp_path), {'epoch': epoch, 'loss': epoch})
    with open(tmp_path / rd.METRICS_FILE, 'a') as f:
        f.write('{"epoch": 4, "lo')   # torn by a kill
    rd.record_epoch(str(tmp_path), {'epoch': 2, 'loss': 20})   # resumed from epoch 1
    lines = (tmp_path / rd.METRICS_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{'epoch': 1, 'loss': 1}, {'epoch': 2, 'loss': 20}]


def test_a_full_disk_names_the_checkpoint_and_keeps_the_previous_one(tmp_path, monkeypatch):
    rd.save_checkpoints(str(tmp_path), {'epoch': 1}, [rd.LAST])

    def full_disk(obj, f, *args, **kwargs):
        f.write(b'part of a checkpoint')
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(torch, 'save', full_disk)
    last = rd.checkpoint_path(str(tmp_path), rd.LAST)
    with pytest.raises(rd.CheckpointSaveError) as error:
        rd.save_checkpoints(str(tmp_path), {'epoch': 2}, [rd.LAST, rd.BEST])
    assert str(error.value) == f"cannot write checkpoint '{last}': No space left on device"
    monkeypatch.undo()
    assert torch.load(last)['epoch'] == 1 and os.listdir(tmp_path) == ['last.pth']


def test_checkpoint_mode_reads_the_old_role_field_too():
    from engine.run_dir import checkpoint_mode
    assert checkpoint_mode({'mode': 'teacher'}) == 'teacher'
    assert checkpoint_mode({'role': 'teacher'}) == 'teacher'   # written before role was renamed mode
    assert checkpoint_mode({}, default='student') == 'student'
