"""The demo: synthetic RGB-D rooms, an RGB teacher, a PrimKD student, and both evaluated.

`bash train.sh config/demo.py` runs this. Each step is the project's own command line, so the demo
shows exactly what a user would run by hand. Running it again continues the runs (--resume auto).
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from config import add_config_args, config_from_args  # noqa: E402
from tools.synthetic_rooms import make_synthetic_dataset  # noqa: E402


def run(command):
    """Runs one step; if it fails, its own error message is the demo's last word."""
    print('>> ' + ' '.join(command), flush=True)
    status = subprocess.run(command).returncode
    if status:
        sys.exit(status)


def main():
    parser = add_config_args(argparse.ArgumentParser(description=__doc__.split('\n')[0]),
                             default='config/demo.py')
    args, train_args = parser.parse_known_args()
    cfg = config_from_args(args, parser)
    opts = ['--opts', *args.opts] if args.opts else []
    start = time.perf_counter()
    if not os.path.isfile(os.path.join(cfg.dataset_path, cfg.train_source)):
        print(f'>> generating {cfg.num_train_imgs} + {cfg.num_eval_imgs} synthetic scenes in {cfg.dataset_path}')
        make_synthetic_dataset(cfg.dataset_path, num_train=cfg.num_train_imgs, num_test=cfg.num_eval_imgs,
                               height=cfg.image_height, width=cfg.image_width, seed=cfg.seed)
    python = sys.executable
    results = {}
    teacher = os.path.join(cfg.log_dir, 'teacher', 'best.pth')  # follows --opts log_dir=...
    for role in ('teacher', 'student'):
        run([python, 'train.py', '--config', args.config, '--mode', role, '--resume', 'auto',
             *(['--teacher', teacher] if role == 'student' else []), *opts, *train_args])
        out = os.path.join(cfg.log_dir, role, 'eval_best.json')
        run([python, 'val.py', '--config', args.config, '--mode', role,
             '-e', os.path.join(cfg.log_dir, role, 'best.pth'), '--json', out, '--overwrite', *opts])
        with open(out) as f:
            results[role] = json.load(f)

    chance = 1.0 / cfg.num_classes
    rows = [('teacher', 'RGB', results['teacher']), ('student (PrimKD)', 'RGB-D', results['student'])]
    print(f'\nDemo results on {cfg.dataset_name} ({cfg.num_eval_imgs} test scenes, {cfg.backbone}), '
          f'{time.perf_counter() - start:.0f} s in all')
    print(f'{"model":<18}{"input":<8}{"mIoU":>8}{"pixel acc":>11}')
    for name, modality, metrics in rows:
        print(f'{name:<18}{modality:<8}{100 * metrics["miou"]:>7.1f}%{100 * metrics["pixel_acc"]:>10.1f}%')
    print(f'(chance level: mIoU about {100 * chance:.1f}% for {cfg.num_classes} classes)')


if __name__ == '__main__':
    main()
