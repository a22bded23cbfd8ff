"""Train a PrimKD RGB teacher (--mode teacher) or RGB-D student (--mode student, the default).

One process on a CPU or GPU, or several under torchrun (NCCL on GPUs, gloo on CPUs); `bash train.sh`
starts the right one. The official PrimKD command line works unchanged:

    train.py --port=29516 --distillation_alpha=1.0 --distillation_beta=0.1 --distillation_flag=1 \
        --lambda_mask=0.75 --select="max" --mask_single="hint"
"""
import errno
import os
import re
import sys
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from config import ConfigError, save_config
from dataloader.dataset import DatasetError, resolve_split_sizes
from dataloader.loader import build_train_loader
from dataloader.transforms import EvalTransform
from engine import distributed as du
from engine import run_dir as rd
from engine.amp import AMP_DTYPES, resolve_amp
from engine.cli import resolve_train_config, train_args_parser
from engine.logger import RunLogger
from engine.optim import build_optimizer, build_scheduler
from engine.rng import all_rng_states, seed_everything
from engine.run_spec import RunSpec
from engine.trainer import (NonFiniteLossError, load_start_weights, original_message, prepare_model,
                            restore_training_state, train_one_epoch, validate, wrap_for_training)
from models.builder import teacher_backbone
from models.distill import describe_logit_loss, kl_term_on
from models.weight_layouts import CheckpointError

def describe_run(cfg, spec, dist_info, loader, amp, run_dir) -> str:
    """The first lines of train.log: what runs where, and the teacher's settings."""
    text = (f'{spec.mode} {cfg.backbone} on {cfg.dataset_name}: {dist_info.world_size} process(es) on '
            f'{dist_info.device.type}, global batch {cfg.batch_size} (per process {loader.accumulation} '
            f'micro-batch(es) of {loader.loader.batch_size}), {cfg.niters_per_epoch} optimizer steps/epoch, '
            f'amp {amp}, run directory {run_dir}')
    if spec.teacher:
        text += (f'\nteacher {RunSpec.teacher_checkpoint(cfg)} ({teacher_backbone(cfg)}, {cfg.teacher_modality}); '
                 f'alpha {cfg.distillation_alpha} (logit term {"on" if kl_term_on(cfg) else "off"}: '
                 f'{describe_logit_loss(cfg)}), '
                 f'beta {cfg.distillation_beta} ({cfg.mask_single}, {cfg.select} of {cfg.losses})')
    return text


# What start-up checks raise: each ends the run with one line, before any training.
START_ERRORS = (ConfigError, DatasetError, CheckpointError, OSError, rd.RunDirBusy)


@dataclass
class Run:
    """A started run: what the epoch loop needs."""
    cfg: object
    spec: RunSpec
    dist_info: du.DistInfo
    run_dir: str
    logger: RunLogger
    amp: str
    loader: object
    val_dataset: object
    model: torch.nn.Module
    teacher: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    start_epoch: int
    best_miou: float
    epoch: int = 0


def start_run(args, cfg, spec, dist_info, run_dir, logger) -> Run:
    """Everything before the first epoch (checks, data, models, the state to resume); raises one of
    START_ERRORS. On the main process it ends by starting the run directory's files."""
    device = dist_info.device
    amp = resolve_amp(cfg.amp, device)
    resume_path = rd.resume_path(args.resume, run_dir, log=logger.info)
    spec.check_inputs(cfg, resuming=resume_path is not None, config_path=args.config)
    if resume_path is None:
        rd.refuse_overwrite(run_dir)
    resolve_split_sizes(cfg)  # before the loader and the scheduler, which read them
    seed_everything(cfg.seed)  # the same on every rank while the networks are built: equal weights
    loader = build_train_loader(cfg, dist_info, spec.dataset(cfg, 'train'))
    val_dataset = spec.dataset(cfg, 'val', EvalTransform(cfg))
    model = spec.build_model(cfg)
    resume = load_start_weights(model, cfg, spec.mode, resume_path, args.allow_config_change, log=logger.info)
    teacher = spec.build_teacher(cfg, device)

    model = prepare_model(model, cfg, dist_info)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=AMP_DTYPES[amp] is torch.float16)
    start_epoch, best_miou = 1, 0.0
    if resume:
        start_epoch, best_miou = restore_training_state(resume, optimizer, scaler, cfg, dist_info, logger)
        logger.info(f'resumed from {resume_path} (epoch {resume["epoch"]}, best mIoU {best_miou:.4f})')
    else:
        seed_everything(cfg.seed + dist_info.rank)  # training randomness (drop-path, masks) differs by rank
    scheduler = build_scheduler(optimizer, cfg, epochs_done=start_epoch - 1)
    if resume:
        logger.info(f'learning-rate schedule of {cfg.nepochs} epochs x {cfg.niters_per_epoch} iterations, '
                    f'continuing at iteration {scheduler.last_epoch}: lr {optimizer.param_groups[0]["lr"]:.4g}')
    if dist_info.is_main:
        save_config(cfg, rd.run_file(run_dir, rd.CONFIG_FILE))
        logger.open_files()
    return Run(cfg=cfg, spec=spec, dist_info=dist_info, run_dir=run_dir, logger=logger, amp=amp, loader=loader,
               val_dataset=val_dataset, model=model, teacher=teacher, optimizer=optimizer, scheduler=scheduler,
               scaler=scaler, start_epoch=start_epoch, best_miou=best_miou)


def refuse_start(parser, dist_info, error, main_ok):
    """Ends every process of a run that did not start, with exit status 2: the main process's
    message, or another process's own when the main process had none."""
    if error is not None and (dist_info.is_main or main_ok):
        where = '' if dist_info.is_main else f'process {dist_info.rank}: '
        parser.exit(2, f'{parser.prog}: error: {where}{error}\n')
    if dist_info.is_main:
        parser.exit(2, f'{parser.prog}: error: another process could not start (see its message)\n')
    sys.exit(2)


def train_epochs(run: Run, stop_after_epoch=None) -> None:
    """The epoch loop: train, validate, record, save."""
    cfg, dist_info, logger = run.cfg, run.dist_info, run.logger
    train_model = wrap_for_training(run.model, cfg, dist_info)
    logger.info(describe_run(cfg, run.spec, dist_info, run.loader, run.amp, run.run_dir))
    if du.is_dist():
        logger.info(du.describe_group(run.model))
    best_miou = run.best_miou
    for epoch in range(run.start_epoch, cfg.nepochs + 1):
        run.epoch = epoch
        started = time.perf_counter()
        means = train_one_epoch(train_model, run.teacher, run.loader, run.optimizer, run.scheduler, run.scaler,
                                cfg, epoch, dist_info.device, AMP_DTYPES[run.amp], logger)
        du.average_batchnorm_buffers(run.model)
        record = {'epoch': epoch, **{k: round(v, 8) for k, v in means.items()}}
        logger.info(f'epoch {epoch}/{cfg.nepochs} ' + ' '.join(f'{k}={v:.4f}' for k, v in means.items()))
        if epoch % cfg.eval_step == 0 or epoch == cfg.nepochs:
            record['miou'] = validate(run.model, cfg, dist_info, run.val_dataset, run.amp, epoch, best_miou, logger)
        record['seconds'] = round(time.perf_counter() - started, 2)   # training and evaluation: a grid's time left
        logger.epoch_record(record)
        improved = record.get('miou', -1.0) > best_miou
        best_miou = max(best_miou, record.get('miou', best_miou))
        save_epoch(run, epoch, improved, best_miou)
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            logger.info(f'stopping after epoch {epoch} as asked (--stop-after-epoch)')
            break
    logger.info(f'done: best validation mIoU {best_miou:.4f}; checkpoints in {run.run_dir}')


def save_epoch(run: Run, epoch: int, improved: bool, best_miou: float) -> None:
    """The epoch's checkpoints, written by the main process; every process stops if it could not."""
    rng_states = all_rng_states(run.dist_info.device)
    error = None
    if run.dist_info.is_main:
        state = rd.training_state(mode=run.spec.mode, model=run.model, optimizer=run.optimizer, scaler=run.scaler,
                                  cfg=run.cfg, epoch=epoch, iteration=epoch * run.cfg.niters_per_epoch,
                                  best_miou=best_miou, rng_states=rng_states)
        try:
            rd.save_checkpoints(run.run_dir, state, rd.checkpoints_to_write(epoch, improved, run.cfg))
        except rd.CheckpointSaveError as e:
            error = e
    if not du.agree(error is None, run.dist_info.device)[0]:
        if error is not None:
            raise error
        sys.exit(1)  # the main process says why


# OSErrors that come from the machine, not from the code: a full disk or quota, a file system gone
# read-only or failing.
ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)


def reason_to_stop(error: BaseException, run, cfg) -> tuple:
    """(one line saying why, whether every process meets it at the same time) for an error that ends
    a run, or None for one that is a bug (it keeps its traceback)."""
    where = f'epoch {run.epoch}' if run is not None and run.epoch else 'start-up'
    if isinstance(error, NonFiniteLossError):
        return str(error), True
    if (isinstance(error, (DatasetError, rd.CheckpointSaveError))  # a data file became unreadable, a save failed
            or (isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS)):
        return f'{where}: {original_message(error)}', False
    if du.lost_peer(error):
        detail = re.sub(r'^\[[^\]]*\]\s*', '', original_message(error))  # without gloo's source location
        return (f'{where}: no answer from another process within dist_timeout_minutes={cfg.dist_timeout_minutes} '
                f'(one stopped, hung or lost): {detail}'), False
    return None


def stop(prog, dist_info, logger, run_dir, reason: str, every_process_meets_it: bool):
    """Ends a run that cannot go on (exit status 1) with one line saying why and where it can
    continue from, from the process that met the problem (the main one if all did)."""
    text = f'{reason}; {rd.last_good_checkpoint(run_dir)}'
    if dist_info.is_main:
        logger.error(text)
    elif not every_process_meets_it:
        tqdm.write(f'{prog}: error: process {dist_info.rank}: {text}', file=sys.stderr)
    sys.exit(1)


def main(args, parser):
    """Trains and returns the (unwrapped) model of this process."""
    cfg = resolve_train_config(args, parser)
    if args.port and 'MASTER_PORT' not in os.environ:
        os.environ['MASTER_PORT'] = str(args.port)
    try:
        dist_info = du.init_distributed(args.device, cfg.dist_timeout_minutes)
    except ValueError as e:
        parser.error(str(e))
    spec = RunSpec.from_config(cfg, args.mode)
    run_dir = rd.run_dir(cfg.log_dir, spec.mode)
    logger = RunLogger(run_dir, enabled=dist_info.is_main, prog=parser.prog)
    lock = run = error = None
    try:
        try:
            if dist_info.is_main:
                lock = rd.RunLock(run_dir, log=logger.info)
                rd.remove_dead_temporaries(run_dir, log=logger.info)
            run = start_run(args, cfg, spec, dist_info, run_dir, logger)
        except START_ERRORS as e:
            error = e
        everyone_ok, main_ok = du.agree(error is None, dist_info.device)
        if not everyone_ok:
            logger.close()  # before the lock goes, so that the folder it may remove is empty
            refuse_start(parser, dist_info, error, main_ok)
        train_epochs(run, args.stop_after_epoch)
        return run.model
    except (NonFiniteLossError, DatasetError, OSError, RuntimeError) as e:
        reason = reason_to_stop(e, run, cfg)
        if reason is None:
            raise
        stop(parser.prog, dist_info, logger, run_dir, *reason)
    finally:
        logger.close()
        if lock is not None:
            lock.release()
        du.cleanup()


if __name__ == '__main__':
    parser = train_args_parser()
    main(parser.parse_args(), parser)
