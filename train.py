"""Train a PrimKD RGB teacher (--mode teacher) or RGB-D student (--mode student, the default).

One process on a CPU or GPU, or several under torchrun (NCCL on GPUs, gloo on CPUs); `bash train.sh`
starts the right one. The official PrimKD command line works unchanged:

    train.py --port=29516 --distillation_alpha=1.0 --distillation_beta=0.1 --distillation_flag=1 \
        --lambda_mask=0.75 --select="max" --mask_single="hint"
"""
import argparse
import os
import sys

import torch

from config import ConfigError, add_config_args, load_config, parse_overrides, save_config
from dataloader.dataset import DatasetError
from dataloader.loader import build_train_loader
from dataloader.transforms import EvalTransform
from engine import distributed as du
from engine import run_dir as rd
from engine.amp import AMP_DTYPES, resolve_amp
from engine.logger import RunLogger
from engine.optim import build_optimizer, build_scheduler
from engine.rng import all_rng_states, seed_everything
from engine.run_spec import RunSpec
from engine.trainer import (NonFiniteLossError, load_start_weights, prepare_model, restore_training_state,
                            train_one_epoch, validate, wrap_for_training)
from models.builder import teacher_backbone
from models.distill import kl_term_on
from models.weight_layouts import CheckpointError

# Official flags -> config keys. Their defaults live in the config (the paper's command line).
DISTILLATION_FLAGS = ('distillation_alpha', 'distillation_beta', 'distillation_flag',
                      'distillation_single', 'lambda_mask', 'select', 'mask_single', 'losses')


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_config_args(parser)
    parser.add_argument('--mode', choices=('teacher', 'student'), default='student',
                        help='teacher: RGB-only SegFormer with cross-entropy; student: PrimKD (default)')
    parser.add_argument('--teacher', metavar='PATH', help="teacher checkpoint (default: config's teacher_checkpoint)")
    parser.add_argument('--resume', metavar='auto|PATH',
                        help='auto: the newest good checkpoint of the run directory; or a checkpoint file')
    parser.add_argument('--amp', choices=('auto', 'bf16', 'fp16', 'none'),
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
    group.add_argument('--mask_single', choices=('hint', 'mask_hint'), help='reconstruct head type')
    group.add_argument('--losses', nargs='+', help='stages for the feature term, e.g. loss1 loss2 loss3 loss4')
    group.add_argument('--port', help='sets MASTER_PORT (as the official launcher); torchrun uses its own')
    group.add_argument('--local_rank', '--local-rank', type=int, help=argparse.SUPPRESS)
    group.add_argument('-d', '--devices', help='accepted for compatibility; choose GPUs with CUDA_VISIBLE_DEVICES')
    return parser


def resolve_config(args, parser):
    """The config file, then --opts, then the explicit flags; any bad value ends with one line."""
    try:
        overrides = parse_overrides(args.opts)
        for key in DISTILLATION_FLAGS:
            if getattr(args, key) is not None:
                overrides[key] = getattr(args, key)
        if args.select is not None and args.select not in ('max', 'min'):
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
        parser.error(str(e))


def describe_run(cfg, spec, dist_info, loader, amp, run_dir) -> str:
    """The first lines of train.log: what runs where, and the teacher's settings."""
    text = (f'{spec.mode} {cfg.backbone} on {cfg.dataset_name}: {dist_info.world_size} process(es) on '
            f'{dist_info.device.type}, global batch {cfg.batch_size} (per process {loader.accumulation} '
            f'micro-batch(es) of {loader.loader.batch_size}), {cfg.niters_per_epoch} optimizer steps/epoch, '
            f'amp {amp}, run directory {run_dir}')
    if spec.teacher:
        text += (f'\nteacher {RunSpec.teacher_checkpoint(cfg)} ({teacher_backbone(cfg)}, {cfg.teacher_modality}); '
                 f'alpha {cfg.distillation_alpha} '
                 f'(KL {"on" if kl_term_on(cfg) else "off"}, flag {cfg.distillation_flag}), '
                 f'beta {cfg.distillation_beta} ({cfg.mask_single}, {cfg.select} of {cfg.losses})')
    return text


def main(args, parser):
    """Trains and returns the (unwrapped) model of this process."""
    cfg = resolve_config(args, parser)
    if args.port and 'MASTER_PORT' not in os.environ:
        os.environ['MASTER_PORT'] = str(args.port)
    try:
        dist_info = du.init_distributed(args.device)
    except ValueError as e:
        parser.error(str(e))
    device, spec = dist_info.device, RunSpec.from_config(cfg, args.mode)
    run_dir = rd.run_dir(cfg.log_dir, spec.mode)
    logger = RunLogger(run_dir, enabled=dist_info.is_main)
    try:
        amp = resolve_amp(cfg.amp, device)
        resume_path = rd.resume_path(args.resume, run_dir, log=logger.info)
        spec.check_inputs(cfg, resuming=resume_path is not None, config_path=args.config)
        if resume_path is None:
            rd.refuse_overwrite(run_dir)
        seed_everything(cfg.seed)  # the same on every rank while the networks are built: equal weights
        loader = build_train_loader(cfg, dist_info, spec.dataset(cfg, 'train'))
        val_dataset = spec.dataset(cfg, 'val', EvalTransform(cfg))
        model = spec.build_model(cfg)
        resume = load_start_weights(model, cfg, resume_path)
        teacher = spec.build_teacher(cfg, device)
    except (ConfigError, DatasetError, CheckpointError, FileNotFoundError, FileExistsError) as e:
        logger.close()
        du.cleanup()
        if dist_info.is_main:
            parser.exit(2, f'{parser.prog}: error: {e}\n')
        sys.exit(2)

    model = prepare_model(model, cfg, dist_info)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=AMP_DTYPES[amp] is torch.float16)
    start_epoch, best_miou = 1, 0.0
    if resume:
        start_epoch, best_miou = restore_training_state(resume, optimizer, scheduler, scaler, cfg, dist_info,
                                                        logger)
        logger.info(f'resumed from {resume_path} (epoch {resume["epoch"]}, best mIoU {best_miou:.4f})')
    else:
        seed_everything(cfg.seed + dist_info.rank)  # training randomness (drop-path, masks) differs by rank
    train_model = wrap_for_training(model, cfg, dist_info)
    if dist_info.is_main:
        save_config(cfg, rd.run_file(run_dir, rd.CONFIG_FILE))
    logger.info(describe_run(cfg, spec, dist_info, loader, amp, run_dir))

    for epoch in range(start_epoch, cfg.nepochs + 1):
        try:
            means = train_one_epoch(train_model, teacher, loader, optimizer, scheduler, scaler, cfg, epoch,
                                    device, AMP_DTYPES[amp], logger)
        except NonFiniteLossError as e:
            logger.info(f'stopping: {e}; the last good checkpoint is kept')
            logger.close()
            du.cleanup()
            sys.exit(1)
        du.average_batchnorm_buffers(model)
        record = {'epoch': epoch, **{k: round(v, 8) for k, v in means.items()}}
        logger.info(f'epoch {epoch}/{cfg.nepochs} ' + ' '.join(f'{k}={v:.4f}' for k, v in means.items()))
        if epoch % cfg.eval_step == 0 or epoch == cfg.nepochs:
            record['miou'] = validate(model, cfg, dist_info, val_dataset, amp, epoch, best_miou, logger)
        logger.epoch_record(record)
        improved = record.get('miou', -1.0) > best_miou
        best_miou = max(best_miou, record.get('miou', best_miou))
        rng_states = all_rng_states(device)
        if dist_info.is_main:
            state = rd.training_state(role=spec.mode, model=model, optimizer=optimizer, scheduler=scheduler,
                                      scaler=scaler, cfg=cfg, epoch=epoch, iteration=epoch * cfg.niters_per_epoch,
                                      best_miou=best_miou, rng_states=rng_states)
            rd.save_checkpoints(run_dir, state, rd.checkpoints_to_write(epoch, improved, cfg))
        du.barrier()
        if args.stop_after_epoch is not None and epoch >= args.stop_after_epoch:
            logger.info(f'stopping after epoch {epoch} as asked (--stop-after-epoch)')
            break
    logger.info(f'done: best validation mIoU {best_miou:.4f}; checkpoints in {run_dir}')
    logger.close()
    du.cleanup()
    return model


if __name__ == '__main__':
    parser = get_args_parser()
    main(parser.parse_args(), parser)
