"""Writes the synthetic RGB-D rooms of the demo (tools/synthetic_rooms.py) in the official layout.

    python tools/make_synthetic.py --out datasets/Synthetic --num-train 200 --num-test 50
"""
import argparse
import os
import sys
import time

from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.synthetic_rooms import make_synthetic_dataset  # noqa: E402


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='datasets/Synthetic',
                        help='output folder (default: %(default)s)')
    parser.add_argument('--num-train', type=int, default=200,
                        help='training scenes (default: %(default)s)')
    parser.add_argument('--num-test', type=int, default=50, help='test scenes (default: %(default)s)')
    parser.add_argument('--height', type=int, default=120, help='image height (default: %(default)s)')
    parser.add_argument('--width', type=int, default=160, help='image width (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0,
                        help='scene i is drawn from (seed, i) (default: %(default)s)')
    parser.add_argument('--workers', type=int, default=None, help='processes (default: all CPUs)')
    return parser


def main(args):
    if args.num_train < 1 or args.num_test < 1:
        sys.exit(f'--num-train and --num-test must be at least 1, '
                 f'got {args.num_train} and {args.num_test}')
    if args.height < 16 or args.width < 16:
        sys.exit(f'--height and --width must be at least 16, got {args.height} and {args.width}')
    if args.workers is not None and args.workers < 1:
        sys.exit(f'--workers must be at least 1, got {args.workers}')
    start = time.time()
    make_synthetic_dataset(args.out, args.num_train, args.num_test, args.height, args.width,
                           args.seed, workers=args.workers,
                           progress=lambda finished, total: tqdm(finished, total=total, desc='scenes'))
    print(f'wrote {args.num_train} training and {args.num_test} test scenes to {args.out} '
          f'in {time.time() - start:.1f} s')


if __name__ == '__main__':
    main(get_args_parser().parse_args())
