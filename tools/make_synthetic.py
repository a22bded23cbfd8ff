"""Writes the synthetic RGB-D rooms of the demo (dataloader/synthetic_rooms.py) in the official layout.

    python tools/make_synthetic.py --out datasets/Synthetic --num-train 200 --num-test 50 --seed 12345
    python tools/make_synthetic.py --out datasets/SyntheticNYULike --preset nyu_like --seed 12345

--preset chooses the balance between colour and depth; --panel-cue, --crate-cue, --depth-noise and
--hole-rate change single settings of it.
"""
import argparse
import dataclasses
import sys
import time

from tqdm import tqdm

from dataloader.synthetic_rooms import CRATE_CUES, PANEL_CUES, PRESETS, make_synthetic_dataset


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
    parser.add_argument('--overwrite', action='store_true',
                        help='replace the dataset in an --out that already holds files (its RGB/, Depth/, '
                             'HHA/, Label/ and split files are removed first; other files stay)')
    style = parser.add_argument_group('scene style (the preset, then single settings)')
    style.add_argument('--preset', choices=sorted(PRESETS), default='depth_decisive',
                       help='default: %(default)s')
    style.add_argument('--panel-cue', choices=PANEL_CUES, help='what tells a panel from a poster')
    style.add_argument('--crate-cue', choices=CRATE_CUES, help='what tells a crate from a box')
    style.add_argument('--depth-noise', type=float,
                       help='standard deviation of the depth noise, relative to the depth')
    style.add_argument('--hole-rate', type=float,
                       help='largest share of an image that random blobs of missing depth cover')
    return parser


def scene_style(args):
    """The preset with the settings given on the command line replaced (ValueError if out of range)."""
    overrides = {name: getattr(args, name) for name in ('panel_cue', 'crate_cue', 'depth_noise', 'hole_rate')
                 if getattr(args, name) is not None}
    return dataclasses.replace(PRESETS[args.preset], **overrides)


def main(args):
    if args.num_train < 1 or args.num_test < 1:
        sys.exit(f'--num-train and --num-test must be at least 1, '
                 f'got {args.num_train} and {args.num_test}')
    if args.height < 16 or args.width < 16:
        sys.exit(f'--height and --width must be at least 16, got {args.height} and {args.width}')
    if args.workers is not None and args.workers < 1:
        sys.exit(f'--workers must be at least 1, got {args.workers}')
    try:
        style = scene_style(args)
    except ValueError as error:
        sys.exit(f'make_synthetic.py: {error}')
    start = time.time()
    try:
        make_synthetic_dataset(args.out, args.num_train, args.num_test, args.height, args.width,
                               args.seed, style, workers=args.workers, overwrite=args.overwrite,
                               progress=lambda finished, total: tqdm(finished, total=total, desc='scenes'))
    except FileExistsError as error:
        sys.exit(f'make_synthetic.py: {error}; pass --overwrite to replace the dataset there')
    print(f'wrote {args.num_train} training and {args.num_test} test scenes ({style}) to {args.out} '
          f'in {time.time() - start:.1f} s')


if __name__ == '__main__':
    main(get_args_parser().parse_args())
