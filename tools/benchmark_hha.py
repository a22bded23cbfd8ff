"""Times utils.hha.depth_to_hha on one CPU core (median over runs, after warm-up).

    python tools/benchmark_hha.py --runs 50 --json benchmarks/hha_cpu.json

By default the input is the real 480x640 NYU frame of the shared fixtures.
"""
import os

# Single-threaded numerics: these must be set before numpy (and its BLAS) is imported.
for _variable in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS'):
    os.environ[_variable] = '1'

import argparse  # noqa: E402
import sys  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from config import REPO_ROOT  # noqa: E402
from utils.benchmarking import cpu_info, provenance, save_report, summary_ms, timed_runs  # noqa: E402
from utils.hha import NYU_CAMERA, depth_to_hha  # noqa: E402
from utils.io import check_output_file  # noqa: E402

FIXTURE_DIR = os.path.join(REPO_ROOT, '..', 'shared', 'fixtures', 'nyu_hha')


def get_args_parser():
    parser = argparse.ArgumentParser(description='HHA encoding speed on one CPU core')
    parser.add_argument('--depth', default=os.path.join(FIXTURE_DIR, 'depth.png'),
                        help='16-bit depth PNG (default: the NYU fixture frame)')
    parser.add_argument('--raw', default=None,
                        help='optional raw depth PNG: its zeros become the missing mask')
    parser.add_argument('--depth-scale', type=float, default=10000.0,
                        help='PNG value / depth-scale = metres (the NYU fixture: 10000)')
    parser.add_argument('--runs', type=int, default=30, help='timed runs')
    parser.add_argument('--warmup', type=int, default=3, help='untimed runs first')
    parser.add_argument('--json', metavar='OUT',
                        help='also write the results to this JSON file (the committed figures: '
                             'benchmarks/hha_cpu.json)')
    return parser


def read_depth(path):
    depth = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if depth is None or depth.dtype != np.uint16 or depth.ndim != 2:
        sys.exit(f'error: {path}: expected a readable 16-bit single-channel depth PNG')
    return depth


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        sys.exit(f'error: --runs must be >= 1 and --warmup >= 0, got {args.runs} and {args.warmup}')
    if args.json:
        try:
            check_output_file(args.json)
        except OSError as e:
            sys.exit(f'error: --json {args.json}: {e}')
    cv2.setNumThreads(1)
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})

    depth_m = read_depth(args.depth) / args.depth_scale
    missing = read_depth(args.raw) == 0 if args.raw else None
    figures = summary_ms(timed_runs(lambda: depth_to_hha(depth_m, missing, NYU_CAMERA), args.runs, args.warmup))
    median_ms = figures['ms_median']
    result = {
        **provenance('tools/benchmark_hha.py', argv),
        'function': 'utils.hha.depth_to_hha',
        'input': {'depth': os.path.relpath(args.depth, REPO_ROOT), 'height': depth_m.shape[0],
                  'width': depth_m.shape[1], 'missing_mask': bool(args.raw)},
        'threads': 1, 'cpu_core': core, 'runs': args.runs, 'warmup': args.warmup,
        'median_ms': round(median_ms, 2), 'min_ms': round(figures['ms_min'], 2),
        'max_ms': round(figures['ms_max'], 2), 'frames_per_s': round(1000.0 / median_ms, 2),
        'device': cpu_info()['name'], 'numpy': np.__version__, 'opencv': cv2.__version__,
    }
    rows = [('frame', f'{depth_m.shape[0]}x{depth_m.shape[1]}'),
            ('ms/frame (median)', f'{median_ms:.1f}'),
            ('ms/frame (min / max)', f'{figures["ms_min"]:.1f} / {figures["ms_max"]:.1f}'),
            ('frames/s', f'{1000.0 / median_ms:.1f}'),
            ('runs (warm-up)', f'{args.runs} ({args.warmup})'),
            ('device', f'{result["device"]}, 1 core (#{core}), 1 thread'),
            ('python / numpy / opencv', f'{result["python"]} / {result["numpy"]} / {result["opencv"]}'),
            ('date', result['date'])]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f'{name:<{width}}  {value}')

    save_report(args.json, result)


if __name__ == '__main__':
    main()
