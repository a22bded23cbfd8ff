"""Helpers shared by the tests: a free port for torchrun, a tiny run config, a metrics reader,
a run directory locked by another process."""
import json
import multiprocessing
import os
import socket

from config import REPO_ROOT
from engine import run_dir as rd

DEMO_CONFIG = os.path.join(REPO_ROOT, 'config', 'demo.py')


def free_port():
    """A TCP port nobody listens on now (torchrun's --master_port=0 is not reliable)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def tiny_opts(dataset, log_dir, **extra):
    """--opts for a run of a few seconds on the tiny synthetic dataset."""
    opts = {'dataset_path': dataset, 'log_dir': log_dir, 'num_train_imgs': 8, 'num_eval_imgs': 4,
            'image_height': 64, 'image_width': 64, 'eval_crop_size': [64, 64], 'backbone': 'mit_b0',
            'decoder_embed_dim': 32, 'batch_size': 2, 'niters_per_epoch': 2, 'nepochs': 3,
            'warm_up_epoch': 1, 'num_workers': 0, 'eval_step': 1, 'eval_mode': 'whole',
            'train_scale_array': [0.75, 1.0, 1.25]}
    opts.update(extra)
    return [f'{k}={v!r}' for k, v in opts.items()]


def read_metrics(run_dir):
    with open(rd.run_file(run_dir, rd.METRICS_FILE)) as f:
        return [json.loads(line) for line in f]


def _hold_lock(directory, ready, release, die):
    lock = rd.RunLock(directory)
    ready.set()
    release.wait(60)
    if die:
        os._exit(0)   # killed: the lock file stays behind
    lock.release()


def locked_by_another_process(directory, die=False):
    """A forked process that holds the run directory's lock (POSIX locks are per process) until the
    returned event is set; then it releases it, or with `die` ends without releasing it."""
    context = multiprocessing.get_context('fork')
    ready, release = context.Event(), context.Event()
    process = context.Process(target=_hold_lock, args=(directory, ready, release, die))
    process.start()
    assert ready.wait(60)
    return process, release
