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
from easydict import EasyDict
from torch.nn.parallel import DistributedDataParallel

from config import ConfigError, add_config_args, load_config, parse_overrides, save_config
from dataloader.dataset import DatasetError, RGBXDataset
from dataloader.loader import build_train_loader
from dataloader.transforms import EvalTransform
from engine import distributed as du
from engine.amp import AMP_DTYPES, resolve_amp
from engine import run_dir as rd
from engine.rng import all_rng_states, resumable_rng_state, seed_everything, set_rng_state
from engine.evaluator import evaluate
from engine.logger import RunLogger
from engine.optim import build_optimizer, build_scheduler, load_optimizer_state
from engine.trainer import NonFiniteLossError, train_one_epoch
from models.builder import build_model
from models.teacher import check_teacher_checkpoint, load_teacher
from models.weight_layouts import CheckpointError, load_checkpoint, load_imagenet_encoder
from models.distill import feature_term_on, kl_term_on

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


def check_inputs(cfg, role, resume_path):
    """Files the run needs, checked before any work, with what to do about each."""
    if cfg.pretrained_model and not resume_path and not os.path.isfile(cfg.pretrained_model):
        raise FileNotFoundError(
            f"ImageNet encoder weights '{cfg.pretrained_model}' not found (config key pretrained_model). "
            f"Download the SegFormer mit_b*.pth files into pretrained/segformer/ (see pretrained/README.md), "
            f"or train from scratch with --no-pretrained.")
    if role == 'student' and (kl_term_on(cfg) or feature_term_on(cfg)):
        check_teacher_checkpoint(cfg)  # present, and of the configured size and kind


def resume_conflicts(saved_cfg, cfg):
    """Settings that shape the trained parameters or the optimizer state and differ from those of
    the run a checkpoint comes from (its weights load, but its optimizer state cannot)."""
    saved = EasyDict(saved_cfg)
    conflicts = [f'{key} {saved[key]!r} -> {cfg[key]!r}' for key in ('optimizer',) if saved[key] != cfg[key]]
    if feature_term_on(saved) != feature_term_on(cfg):
        conflicts.append('the feature term (distillation_beta, select) is '
                         + ('off' if feature_term_on(saved) else 'on') + ' now')
    elif feature_term_on(cfg):
        conflicts += [f'{key} {saved[key]!r} -> {cfg[key]!r}' for key in ('losses', 'mask_single')
                      if saved[key] != cfg[key]]
    return conflicts


def main(args, parser):
    """Trains and returns the (unwrapped) model of this process."""
    cfg = resolve_config(args, parser)
    if args.port and 'MASTER_PORT' not in os.environ:
        os.environ['MASTER_PORT'] = str(args.port)
    try:
        dist_info = du.init_distributed(args.device)
    except ValueError as e:
        parser.error(str(e))
    device, role = dist_info.device, args.mode
    run_dir = rd.run_dir(cfg.log_dir, role)
    logger = RunLogger(run_dir, enabled=dist_info.is_main)
    try:
        amp = resolve_amp(cfg.amp, device)
        amp_dtype = AMP_DTYPES[amp]
        resume_path = rd.resume_path(args.resume, run_dir, log=logger.info)
        check_inputs(cfg, role, resume_path)
        if resume_path is None:
            rd.refuse_overwrite(run_dir)
        # Same seed on every rank while the networks are built, so their initial weights agree.
        seed_everything(cfg.seed)
        loader = build_train_loader(cfg, dist_info)
        val_dataset = RGBXDataset(cfg, 'val', EvalTransform(cfg))
        model = build_model(cfg, role, distill=role == 'student' and feature_term_on(cfg))
        resume = None
        if resume_path:
            resume = rd.read_training_checkpoint(resume_path)
            conflicts = resume_conflicts(resume['config'], cfg)
            if conflicts:
                raise CheckpointError(f"--resume '{resume_path}': this run changes {', '.join(conflicts)}; "
                                      f"resume with the checkpoint's settings (its config.py)")
            try:
                load_checkpoint(model, resume)
            except CheckpointError as e:
                raise CheckpointError(f"--resume '{resume_path}' does not fit this config: {e}") from e
        elif cfg.pretrained_model:
            load_imagenet_encoder(model, cfg.pretrained_model)
        teacher = None
        if role == 'student' and (kl_term_on(cfg) or feature_term_on(cfg)):
            teacher = load_teacher(cfg).to(device)
    except (ConfigError, DatasetError, CheckpointError, FileNotFoundError, FileExistsError) as e:
        logger.close()
        du.cleanup()
        if dist_info.is_main:
            parser.exit(2, f'{parser.prog}: error: {e}\n')
        sys.exit(2)

    if dist_info.distributed and device.type == 'cuda':
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)

    start_epoch, best_miou = 1, 0.0
    if resume:
        load_optimizer_state(optimizer, resume['optimizer'])
        scheduler.load_state_dict(resume['scheduler'])
        if resume['scaler']:  # empty when the run did not use fp16
            scaler.load_state_dict(resume['scaler'])
        start_epoch, best_miou = resume['epoch'] + 1, resume['best_miou']
        rng = resumable_rng_state(resume['rng'], dist_info.rank, dist_info.world_size, device)
        if rng is not None:
            set_rng_state(rng, device)
        else:
            seed_everything(cfg.seed + dist_info.rank + 1000 * start_epoch)
            saved_on = 'GPU' if 'cuda' in resume['rng'][0] else 'CPU'
            logger.info(f"the checkpoint comes from {len(resume['rng'])} {saved_on} process(es), this "
                        f'run has {dist_info.world_size} on {device.type}: training randomness is '
                        f'reseeded, not continued')
        logger.info(f'resumed from {resume_path} (epoch {resume["epoch"]}, best mIoU {best_miou:.4f})')
    else:
        # Training randomness (dropout, drop-path, masks) differs between ranks.
        seed_everything(cfg.seed + dist_info.rank)

    train_model = model
    if dist_info.distributed:
        # Every parameter takes part in every step (unselected reconstruct heads get zero
        # gradients), so DDP needs no search for unused ones.
        train_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == 'cuda' else None)
    if cfg.compile:
        train_model = torch.compile(train_model)

    if dist_info.is_main:
        save_config(cfg, rd.run_file(run_dir, rd.CONFIG_FILE))
    logger.info(f'{role} {cfg.backbone} on {cfg.dataset_name}: {dist_info.world_size} process(es) on '
                f'{device.type}, global batch {cfg.batch_size}, {cfg.niters_per_epoch} iterations/epoch, '
                f'amp {amp}, run directory {run_dir}')
    if teacher is not None:
        logger.info(f'teacher {cfg.teacher_checkpoint}; alpha {cfg.distillation_alpha} '
                    f'(KL {"on" if kl_term_on(cfg) else "off"}, flag {cfg.distillation_flag}), '
                    f'beta {cfg.distillation_beta} ({cfg.mask_single}, {cfg.select} of {cfg.losses})')

    for epoch in range(start_epoch, cfg.nepochs + 1):
        try:
            means = train_one_epoch(train_model, teacher, loader, optimizer, scheduler, scaler, cfg,
                                    epoch, device, amp_dtype, logger, role)
        except NonFiniteLossError as e:
            logger.info(f'stopping: {e}; the last good checkpoint is kept')
            logger.close()
            du.cleanup()
            sys.exit(1)
        du.average_batchnorm_buffers(model)
        record = {'epoch': epoch, **{k: round(v, 8) for k, v in means.items()}}
        logger.info(f'epoch {epoch}/{cfg.nepochs} ' + ' '.join(f'{k}={v:.4f}' for k, v in means.items()))
        if epoch % cfg.eval_step == 0 or epoch == cfg.nepochs:
            metrics = evaluate(model, cfg, dist_info, role, mode=cfg.eval_mode, amp=amp, progress=False,
                               dataset=val_dataset)
            record['miou'] = metrics['miou']
            logger.scalars({'miou': metrics['miou'], 'pixel_acc': metrics['pixel_acc']}, epoch, 'val')
            logger.scalars({name: iou for name, iou in zip(cfg.class_names, metrics['iou'])
                            if iou == iou}, epoch, 'val_iou')
            logger.info(f'epoch {epoch}: validation mIoU {metrics["miou"]:.4f} '
                        f'(best {max(best_miou, metrics["miou"]):.4f})')
        logger.epoch_record(record)
        iteration = epoch * cfg.niters_per_epoch
        improved = record.get('miou', -1.0) > best_miou
        best_miou = max(best_miou, record.get('miou', best_miou))
        rng_states = all_rng_states(device)
        if dist_info.is_main:
            state = rd.training_state(role=role, model=model, optimizer=optimizer, scheduler=scheduler,
                                      scaler=scaler, cfg=cfg, epoch=epoch, iteration=iteration,
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
