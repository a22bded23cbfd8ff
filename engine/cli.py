"""The command line of training (train.py), as a library: tools that resolve a run's config exactly as
train.py does (the ablation grid) use it without importing the script."""
import argparse
import os

from config import ConfigError, add_config_args, config_error_exit, load_config, parse_overrides
from utils.constants import AMP_CHOICES, FEATURE_SELECTS, MODES, RECONSTRUCT_HEADS, STUDENT

# Official flags -> config keys. Their defaults live in the config (the paper's command line).
DISTILLATION_FLAGS = ('distillation_alpha', 'distillation_beta', 'distillation_flag',
                      'distillation_single', 'lambda_mask', 'select', 'mask_single', 'losses')


def train_args_parser():
    """train.py's command line: the project's flags and the official PrimKD ones."""
    parser = argparse.ArgumentParser(
        description='Train a PrimKD RGB teacher (--mode teacher) or RGB-D student (--mode student, the default).')
    add_config_args(parser)
    parser.add_argument('--mode', choices=MODES, default=STUDENT,
                        help='teacher: RGB-only SegFormer with cross-entropy; student: PrimKD (default)')
    parser.add_argument('--teacher', metavar='PATH', help="teacher checkpoint (default: config's teacher_checkpoint)")
    parser.add_argument('--resume', metavar='auto|PATH',
                        help='auto: the newest good checkpoint of the run directory; or a checkpoint file')
    parser.add_argument('--allow-config-change', action='store_true',
                        help='resume with settings other than the checkpoint\'s beyond those a resume may change '
                             '(nepochs, eval_*, ...; README.md "When something goes wrong")')
    parser.add_argument('--amp', choices=AMP_CHOICES,
                        help="mixed precision (default: config's amp: bf16 on GPUs that support it, none on CPU)")
    parser.add_argument('--compile', action='store_true', help='torch.compile the student')
    parser.add_argument('--no-pretrained', action='store_true', help='start the encoders from random weights')
    parser.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    parser.add_argument('--stop-after-epoch', type=int, metavar='N',
                        help='end this process after epoch N, as if interrupted (resume with --resume auto)')
    group = parser.add_argument_group('official PrimKD flags (override the config)')
    group.add_argument('--distillation_alpha', type=float, help='weight of the KL term (paper: 1.0)')
    group.add_argument('--distillation_beta', type=float, help='weight of the feature term (paper: 0.1)')
    group.add_argument('--distillation_flag', type=int, choices=(0, 1),
                       help='1: KL(teacher || student) (paper), 0: KL(student || teacher)')
    group.add_argument('--distillation_single', type=int, choices=(0, 1), help='1: use the KL term')
    group.add_argument('--lambda_mask', type=float, help='mask_hint: probability of keeping a position')
    group.add_argument('--select', help="'max' (paper), 'min', anything else: no feature term")
    group.add_argument('--mask_single', choices=RECONSTRUCT_HEADS, help='reconstruct head type')
    group.add_argument('--losses', nargs='+', help='stages for the feature term, e.g. loss1 loss2 loss3 loss4')
    group.add_argument('--port', help='sets MASTER_PORT (as the official launcher); torchrun uses its own')
    group.add_argument('--local_rank', '--local-rank', type=int, help=argparse.SUPPRESS)
    group.add_argument('-d', '--devices', help='accepted for compatibility; choose GPUs with CUDA_VISIBLE_DEVICES')
    return parser


def resolve_train_config(args, parser):
    """The config file, then --opts, then the explicit flags; any bad value ends with one line."""
    try:
        overrides = parse_overrides(args.opts)
        for key in DISTILLATION_FLAGS:
            if getattr(args, key) is not None:
                overrides[key] = getattr(args, key)
        if args.select is not None and args.select not in FEATURE_SELECTS:
            overrides['select'] = 'none'
        if args.amp is not None:
            overrides['amp'] = args.amp
        if args.compile:
            overrides['compile'] = True
        if args.no_pretrained:
            overrides['pretrained_model'] = None
        if args.teacher is not None:
            overrides['teacher_checkpoint'] = os.path.abspath(args.teacher)
        return load_config(args.config, overrides)
    except ConfigError as e:
        config_error_exit(parser, e)
