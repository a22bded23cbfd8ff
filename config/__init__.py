"""Loading, overriding, checking and saving configs.

A config file is Python that builds an EasyDict named `config`, starting from `base_config()` (or
from another config file's function) and setting only what differs. Every script chooses one with
`--config PATH` and overrides keys with `--opts key=value ...` (values are Python literals; a bare
word is a string). Unknown keys, wrong types and impossible values are errors that name the key.
"""
import argparse
import ast
import os
import pprint
import runpy
import traceback

from easydict import EasyDict

from utils.constants import (AMP_CHOICES, BACKBONES, EVAL_MODES, LOGIT_LOSS_NAMES, RECONSTRUCT_HEADS,
                             SELECT_CHOICES, STAGE_LOSSES, SYNTHETIC_PRESETS, TEACHER_MODALITIES)
from utils.io import atomic_write

from .base import NULLABLE, PATH_KEYS, base_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ConfigError(ValueError):
    """A config key is unknown or its value is of the wrong type or out of range."""


def _positive(v):
    return v > 0


def _non_negative(v):
    return v >= 0


def _unit(v):
    return 0 <= v <= 1


def _positive_list(v):
    return len(v) > 0 and all(isinstance(x, (int, float)) and x > 0 for x in v)


def _one_of(*choices):
    return (lambda v: v in choices), f'one of {choices}'


# key -> (predicate, what the value must be)
CHECKS = {
    'lr': (_positive, 'a positive number'),
    'lr_power': (_positive, 'a positive number'),
    'weight_decay': (_non_negative, 'a number >= 0'),
    'momentum': (_unit, 'a number in [0, 1]'),
    'batch_size': (_positive, 'a positive integer'),
    'micro_batch_size': (_positive, 'a positive integer'),
    'nepochs': (_positive, 'a positive integer'),
    'niters_per_epoch': (_positive, 'a positive integer'),
    'warm_up_epoch': (_non_negative, 'an integer >= 0'),
    'num_workers': (_non_negative, 'an integer >= 0'),
    'num_classes': (_positive, 'a positive integer'),
    'num_train_imgs': (_positive, 'a positive integer'),
    'num_eval_imgs': (_positive, 'a positive integer'),
    'image_height': (_positive, 'a positive integer'),
    'image_width': (_positive, 'a positive integer'),
    'decoder_embed_dim': (_positive, 'a positive integer'),
    'drop_path_rate': (lambda v: 0 <= v < 1, 'a number in [0, 1)'),
    'bn_eps': (_positive, 'a positive number'),
    'teacher_bn_eps': (_positive, 'a positive number'),
    'bn_momentum': (_unit, 'a number in [0, 1]'),
    'distillation_alpha': (_non_negative, 'a number >= 0'),
    'distillation_beta': (_non_negative, 'a number >= 0'),
    'distillation_kl_confidence': (lambda v: 0 <= v < 1, 'a number in [0, 1)'),
    'distillation_logit_loss': _one_of(*LOGIT_LOSS_NAMES),
    'distillation_tau': (_positive, 'a positive number'),
    'lambda_mask': (_unit, 'a number in [0, 1]'),
    'eval_stride_rate': (lambda v: 0 < v <= 1, 'a number in (0, 1]'),
    'eval_step': (_positive, 'a positive integer'),
    'eval_max_batch': (_positive, 'a positive integer'),
    'checkpoint_step': (_positive, 'a positive integer'),
    'dist_timeout_minutes': (_positive, 'a positive number'),
    'checkpoint_start_epoch': (_non_negative, 'an integer >= 0'),
    'background': (lambda v: 0 <= v <= 255, 'an integer in [0, 255]'),
    'eval_crop_size': (lambda v: len(v) == 2 and all(isinstance(x, int) and x > 0 for x in v),
                       'two positive integers [height, width]'),
    'train_scale_array': (_positive_list, 'a non-empty list of positive numbers'),
    'eval_scale_array': (_positive_list, 'a non-empty list of positive numbers'),
    'norm_mean': (lambda v: len(v) == 3, 'three numbers'),
    'norm_std': (lambda v: len(v) == 3 and all(x > 0 for x in v), 'three positive numbers'),
    'losses': (lambda v: len(v) > 0 and len(set(v)) == len(v) and set(v) <= set(STAGE_LOSSES),
               f'a non-empty list of distinct names from {STAGE_LOSSES}'),
    'backbone': _one_of(*BACKBONES),
    'teacher_backbone': _one_of(*BACKBONES),
    'teacher_modality': _one_of(*TEACHER_MODALITIES),
    'optimizer': _one_of('AdamW', 'SGDM'),
    'select': _one_of(*SELECT_CHOICES),
    'mask_single': _one_of(*RECONSTRUCT_HEADS),
    'distillation_flag': _one_of(0, 1),
    'distillation_single': _one_of(0, 1),
    'channel_order': _one_of('bgr', 'rgb'),
    'amp': _one_of(*AMP_CHOICES),
    'eval_mode': _one_of(*EVAL_MODES),
    'synthetic_preset': _one_of(*SYNTHETIC_PRESETS),
}


def _expected_type(key, default):
    if default is None:
        return NULLABLE[key]
    return type(default)


def _check_type(key, value, expected, source):
    if value is None and key in NULLABLE:
        return value
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is list and isinstance(value, tuple):
        value = list(value)
    if expected is int and isinstance(value, bool):
        ok = False
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ConfigError(f"config key '{key}' ({source}): expected {expected.__name__}, "
                          f"got {type(value).__name__} {value!r}")
    return value


def check_config(cfg, source='config'):
    """Checks keys, types and ranges in place; returns cfg. Raises ConfigError naming the key."""
    defaults = base_config()
    unknown = sorted(set(cfg) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown} ({source}); "
                          f"known keys are listed in config/base.py")
    for key, default in defaults.items():
        if key not in cfg:
            cfg[key] = default
        cfg[key] = _check_type(key, cfg[key], _expected_type(key, default), source)
        value = cfg[key]
        if value is not None and key in CHECKS:
            predicate, what = CHECKS[key]
            if not predicate(value):
                raise ConfigError(f"config key '{key}' ({source}): expected {what}, got {value!r}")
    if cfg.distillation_logit_loss == 'kl' and cfg.distillation_tau is not None:
        raise ConfigError(f"config key 'distillation_tau' ({source}): the 'kl' logit loss is the paper's, "
                          f"at temperature 1; set distillation_logit_loss kd for a temperature")
    if cfg.distillation_logit_loss != 'kl' and cfg.distillation_kl_confidence:
        raise ConfigError(f"config key 'distillation_kl_confidence' ({source}): applies to the 'kl' logit "
                          f"loss only, not {cfg.distillation_logit_loss!r}")
    if len(cfg.class_names) != cfg.num_classes:
        raise ConfigError(f"config key 'class_names' ({source}): {len(cfg.class_names)} names "
                          f"for num_classes={cfg.num_classes}")
    return cfg


def parse_overrides(items):
    """['lr=1e-4', 'backbone=mit_b2'] -> {'lr': 1e-4, 'backbone': 'mit_b2'}."""
    overrides = {}
    for item in items or []:
        key, sep, text = item.partition('=')
        if not sep or not key:
            raise ConfigError(f"--opts expects key=value, got {item!r}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text  # a bare word such as mit_b2
        overrides[key.strip()] = value
    return overrides


def _resolve_paths(cfg):
    for key in PATH_KEYS:
        if cfg[key] is not None and not os.path.isabs(cfg[key]):
            cfg[key] = os.path.normpath(os.path.join(REPO_ROOT, cfg[key]))
    if cfg.log_dir is None:
        cfg.log_dir = os.path.join(REPO_ROOT, 'log', f'{cfg.dataset_name}_{cfg.backbone}')


def _error_line(error: BaseException, path: str):
    """The line of the config file (or of a file it runs) where `error` arose: a syntax error's own
    line, else the deepest frame of the traceback that is in `path`."""
    if isinstance(error, SyntaxError) and error.filename:
        return error.filename, error.lineno
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if os.path.abspath(f.filename) == os.path.abspath(path)]
    return (path, frames[-1].lineno) if frames else (path, None)


def _run_config_file(path):
    """The namespace the config file leaves; any error in it (it is Python) is a ConfigError
    naming the file, the line and the error."""
    try:
        return runpy.run_path(path)
    except Exception as e:  # the file is Python: whatever it raises is its error
        filename, line = _error_line(e, path)
        where = f"config file '{filename}'" + (f', line {line}' if line else '')
        message = e.msg if isinstance(e, SyntaxError) else str(e)
        raise ConfigError(f'{where}: {type(e).__name__}: {message}') from None


def load_config(path, overrides=None):
    """Runs the config file at `path`, applies `overrides` (a dict or a list of 'key=value'),
    checks the result and fills in derived values. Returns an EasyDict."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file '{path}' does not exist (configs are in {REPO_ROOT}/config)")
    namespace = _run_config_file(path)
    if not isinstance(namespace.get('config'), dict):
        raise ConfigError(f"config file '{path}' must define an EasyDict named 'config'")
    cfg = EasyDict(namespace['config'])
    check_config(cfg, source=path)
    if isinstance(overrides, (list, tuple)):
        overrides = parse_overrides(overrides)
    if overrides:
        unknown = sorted(set(overrides) - set(cfg))
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown} (--opts); "
                              f"known keys are listed in config/base.py")
        cfg.update(overrides)
        check_config(cfg, source='--opts')
    derive_niters_per_epoch(cfg)
    _resolve_paths(cfg)
    return cfg


def derive_niters_per_epoch(cfg):
    """niters_per_epoch None -> num_train_imgs // batch_size + 1, as the official code. While
    num_train_imgs is None too, both wait for the training split to be read at the start of a run
    (dataloader.dataset.resolve_split_sizes)."""
    if cfg.niters_per_epoch is None and cfg.num_train_imgs is not None:
        cfg.niters_per_epoch = cfg.num_train_imgs // cfg.batch_size + 1


def config_to_text(cfg):
    """The resolved config as Python source that load_config accepts back."""
    body = pprint.pformat(dict(cfg), sort_dicts=True, width=100)
    return ('# Resolved config, written by the PrimKD framework.\n'
            'from easydict import EasyDict\n\n'
            f'config = EasyDict({body})\n')


def save_config(cfg, path):
    atomic_write(path, config_to_text(cfg))


def add_config_args(parser, default='config/nyu_b4.py'):
    """The two arguments every script uses to choose and override a config."""
    parser.add_argument('-c', '--config', default=default, help='config file (default: %(default)s)')
    parser.add_argument('--opts', nargs='+', default=[], metavar='KEY=VALUE',
                        help='override config keys, values as Python literals, e.g. lr=1e-4')
    return parser


def config_error_exit(parser, error: ConfigError):
    """Ends a script with one line for a bad config (no usage text: the command line parsed)."""
    parser.exit(2, f'{parser.prog}: error: {error}\n')


def config_from_args(args, parser):
    """load_config for a script: a bad config ends the script with one line naming the key."""
    try:
        return load_config(args.config, args.opts)
    except ConfigError as e:
        config_error_exit(parser, e)


def main(argv=None):
    parser = add_config_args(argparse.ArgumentParser(
        prog='python -m config', description='Print a resolved config.'))
    parser.add_argument('path', nargs='?', help='config file (same as --config)')
    args = parser.parse_args(argv)
    args.config = args.path or args.config
    print(config_to_text(config_from_args(args, parser)), end='')
