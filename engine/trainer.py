"""The training loop: one epoch of a teacher (cross-entropy) or a PrimKD student (CE + KL + feature
term), and the steps that set a run up around it."""
import contextlib
import math
import time

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from models.distill import distillation_losses, stage_index
from models.weight_layouts import CheckpointError, load_checkpoint, load_imagenet_encoder

from . import distributed as du
from . import run_dir as rd
from .amp import autocast
from .evaluator import evaluate
from .optim import load_optimizer_state
from .rng import resumable_rng_state, seed_everything, set_rng_state


class NonFiniteLossError(RuntimeError):
    pass


def original_message(error: BaseException) -> str:
    """An error's message in one line, as it was raised. A DataLoader worker's exception arrives
    re-raised in the main process with the worker's whole traceback as its message, whose last line
    is 'module.Type: message'; other messages are taken up to their first line break."""
    text = str(error).strip()
    if 'Original Traceback' in text:
        return text.splitlines()[-1].split(f'{type(error).__name__}: ', 1)[-1]
    return text.splitlines()[0] if text else type(error).__name__


def teacher_forward(teacher, rgb, extra, amp_dtype):
    """The frozen teacher's output without autograd bookkeeping (models.distill turns the inference
    tensors into constants the student's backward can use)."""
    with torch.inference_mode(), autocast(rgb.device, amp_dtype):
        return teacher(rgb, extra)


def compute_losses(student_out, teacher_out, label, cfg):
    """The loss and its named terms. Without a teacher it is the cross-entropy alone."""
    terms = {'ce': F.cross_entropy(student_out.logits.float(), label, ignore_index=cfg.background)}
    loss = terms['ce']
    if teacher_out is not None:
        terms.update(distillation_losses(student_out, teacher_out, cfg))
        loss = loss + terms['kl'] + terms['feat']
        # The selected stage as one indicator per stage: their means over steps and processes are
        # the fractions of selections, where a mean stage index would mean nothing.
        selected = terms.pop('feat_stage')
        for name in cfg.losses:
            terms[f'selected_{name}'] = (selected == stage_index(name)).float()
    terms['loss'] = loss
    return loss, terms


def batch_to_device(batch: dict, device, channels_last: bool):
    """(rgb, extra or None, label) of a loader batch on `device`, images in the configured layout."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    rgb, extra = (batch[k].to(device, non_blocking=True).contiguous(memory_format=layout) if k in batch
                  else None for k in ('rgb', 'extra'))
    return rgb, extra, batch['label'].to(device, non_blocking=True)


def gradient_sync(model, sync: bool):
    """DDP's gradient all-reduce only on the last micro-batch of a step (a no-op context otherwise)."""
    return contextlib.nullcontext() if sync or not hasattr(model, 'no_sync') else model.no_sync()


def train_one_epoch(model, teacher, loader, optimizer, scheduler, scaler, cfg, epoch, device,
                    amp_dtype, logger):
    """Runs one epoch: len(loader) micro-batches, loader.accumulation of them per optimizer step;
    returns the epoch means (over steps and processes) of the logged terms.

    Raises NonFiniteLossError (before the optimizer step) if a loss term is NaN or infinite."""
    model.train()
    loader.set_epoch(epoch)
    accumulation = loader.accumulation
    niters = len(loader) // accumulation       # optimizer steps
    sums = {}
    bar = tqdm(total=niters, desc=f'epoch {epoch}/{cfg.nepochs}', dynamic_ncols=True,
               disable=not du.is_main_process(), leave=False)
    start, images = time.perf_counter(), 0
    micro_batches = iter(loader)
    for idx in range(niters):
        optimizer.zero_grad(set_to_none=True)
        step_values = 0
        for micro in range(accumulation):
            rgb, extra, label = batch_to_device(next(micro_batches), device, cfg.channels_last)
            teacher_out = teacher_forward(teacher, rgb, extra, amp_dtype) if teacher is not None else None
            with gradient_sync(model, sync=micro == accumulation - 1):
                with autocast(device, amp_dtype):
                    out = model(rgb, extra)
                    loss, terms = compute_losses(out, teacher_out, label, cfg)
                # The mean over the step's micro-batches: the gradient of the global batch.
                scaler.scale(loss / accumulation).backward()
            names = list(terms)
            step_values = step_values + torch.stack([terms[n].detach().float() for n in names]) / accumulation
            images += rgb.shape[0]

        # One small all-reduce and one host sync per step: every rank sees the mean terms, so a
        # non-finite value on any rank stops all of them at the same step instead of hanging DDP.
        # The sync comes after the backward passes have been queued, so the GPU never waits for the
        # host between forward and backward; the check still precedes the optimizer step.
        step_terms = dict(zip(names, du.all_reduce_mean(step_values).cpu().tolist()))
        iteration = (epoch - 1) * niters + idx
        bad = {n: v for n, v in step_terms.items() if not math.isfinite(v)}
        if bad:
            raise NonFiniteLossError(
                f'non-finite loss at epoch {epoch}, iteration {idx} (global step {iteration}): '
                + ', '.join(f'{n}={v}' for n, v in step_terms.items()))
        scaler.step(optimizer)
        scaler.update()
        lr = optimizer.param_groups[0]['lr']
        scheduler.step()

        for n, v in step_terms.items():
            sums[n] = sums.get(n, 0.0) + v
        logger.scalars({**step_terms, 'lr': lr}, iteration, 'train')
        images_per_s = images * du.get_world_size() / (time.perf_counter() - start)
        bar.set_postfix_str(' '.join(f'{n}={step_terms[n]:.3f}' for n in ('loss', 'ce', 'kl', 'feat')
                                     if n in step_terms) + f' lr={lr:.2e} img/s={images_per_s:.1f}')
        bar.update()
    bar.close()
    return {n: v / niters for n, v in sums.items()}


# Setting a run up around the epoch loop (train.py calls these in order).

def load_start_weights(model, cfg, mode, resume_path, allow_config_change=False, log=print):
    """The run's starting weights: a training checkpoint of this mode to resume (returned, for the
    optimizer state) that passes the resume policy (engine/run_dir.py), or the ImageNet encoders
    named by cfg.pretrained_model (None returned)."""
    if resume_path is None:
        if cfg.pretrained_model:
            load_imagenet_encoder(model, cfg.pretrained_model)
        return None
    resume = rd.read_resume_checkpoint(resume_path, cfg, mode, allow_config_change, log)
    try:
        load_checkpoint(model, resume)
    except CheckpointError as e:
        raise CheckpointError(f"--resume '{resume_path}' does not fit this config: {e}") from e
    return resume


def prepare_model(model, cfg, dist_info):
    """The model on the run's device: SyncBatchNorm across GPUs, the configured memory layout."""
    if dist_info.distributed and dist_info.device.type == 'cuda':
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(dist_info.device)
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def restore_training_state(resume, optimizer, scaler, cfg, dist_info, logger):
    """Continues a checkpoint's optimizer, scaler and randomness; returns (first epoch to run, best
    validation mIoU so far). The learning-rate schedule is built for that epoch (build_scheduler)."""
    try:
        load_optimizer_state(optimizer, resume['optimizer'])
    except ValueError as e:  # parameter groups of other sizes: a model changed with --allow-config-change
        raise CheckpointError(f"the checkpoint's optimizer state does not fit this model: {e}") from e
    if resume['scaler']:  # empty when the run did not use fp16
        scaler.load_state_dict(resume['scaler'])
    start_epoch = resume['epoch'] + 1
    rng = resumable_rng_state(resume['rng'], dist_info.rank, dist_info.world_size, dist_info.device)
    if rng is not None:
        set_rng_state(rng, dist_info.device)
    else:
        seed_everything(cfg.seed + dist_info.rank + 1000 * start_epoch)
        saved_on = 'GPU' if 'cuda' in resume['rng'][0] else 'CPU'
        logger.info(f"the checkpoint comes from {len(resume['rng'])} {saved_on} process(es), this "
                    f'run has {dist_info.world_size} on {dist_info.device.type}: training randomness is '
                    f'reseeded, not continued')
    return start_epoch, resume['best_miou']


def wrap_for_training(model, cfg, dist_info):
    """DDP across processes, then torch.compile if asked (compile around DDP, as torch advises)."""
    if dist_info.distributed:
        # Every parameter takes part in every step (unselected reconstruct heads get zero
        # gradients), so DDP needs no search for unused ones. SyncBatchNorm keeps the buffers equal
        # on every rank, so DDP need not broadcast them before each forward.
        model = DistributedDataParallel(
            model, device_ids=[dist_info.device.index] if dist_info.device.type == 'cuda' else None,
            broadcast_buffers=not du.uses_sync_batchnorm(model))
    return torch.compile(model) if cfg.compile else model


def validate(model, cfg, dist_info, dataset, amp, epoch, best_miou, logger) -> float:
    """The epoch's validation mIoU, logged with the per-class IoU."""
    metrics = evaluate(model, cfg, dist_info, dataset, amp=amp, progress=False)
    logger.scalars({'miou': metrics['miou'], 'pixel_acc': metrics['pixel_acc']}, epoch, 'val')
    logger.scalars({name: iou for name, iou in zip(cfg.class_names, metrics['iou']) if iou == iou},
                   epoch, 'val_iou')
    logger.info(f'epoch {epoch}: validation mIoU {metrics["miou"]:.4f} '
                f'(best {max(best_miou, metrics["miou"]):.4f})')
    return metrics['miou']
