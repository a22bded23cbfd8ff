"""One training epoch of a teacher (cross-entropy) or a PrimKD student (CE + KL + feature term)."""
import math
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.distill import distillation_losses, stage_index

from . import distributed as du
from .amp import autocast


class NonFiniteLossError(RuntimeError):
    pass


def teacher_forward(teacher, rgb, amp_dtype):
    """The frozen teacher's output without autograd bookkeeping (models.distill turns the inference
    tensors into constants the student's backward can use)."""
    with torch.inference_mode(), autocast(rgb.device, amp_dtype):
        return teacher(rgb)


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


def train_one_epoch(model, teacher, loader, optimizer, scheduler, scaler, cfg, epoch, device,
                    amp_dtype, logger, role):
    """Runs one epoch of len(loader) iterations; returns the epoch means (over iterations and
    processes) of the logged terms.

    Raises NonFiniteLossError (before the optimizer step) if a loss term is NaN or infinite."""
    model.train()
    loader.set_epoch(epoch)
    niters = len(loader)
    sums = {}
    bar = tqdm(total=niters, desc=f'{role} epoch {epoch}/{cfg.nepochs}', dynamic_ncols=True,
               disable=not du.is_main_process(), leave=False)
    start = time.perf_counter()
    for idx, batch in enumerate(loader):
        rgb = batch['rgb'].to(device, non_blocking=True)
        label = batch['label'].to(device, non_blocking=True)
        extra = batch['extra'].to(device, non_blocking=True) if role == 'student' else None
        if cfg.channels_last:
            rgb = rgb.contiguous(memory_format=torch.channels_last)
            extra = extra.contiguous(memory_format=torch.channels_last) if extra is not None else None

        teacher_out = teacher_forward(teacher, rgb, amp_dtype) if teacher is not None else None
        with autocast(device, amp_dtype):
            out = model(rgb, extra) if role == 'student' else model(rgb)
            loss, terms = compute_losses(out, teacher_out, label, cfg)

        # One small all-reduce and one host sync per step: every rank sees the mean terms, so a
        # non-finite value on any rank stops all of them at the same step instead of hanging DDP.
        # The sync comes after the backward pass has been queued, so the GPU never waits for the
        # host between forward and backward; the check still precedes the optimizer step.
        names = list(terms)
        values = du.all_reduce_mean(torch.stack([terms[n].detach().float() for n in names]))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        step_terms = dict(zip(names, values.cpu().tolist()))
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
        images_per_s = (idx + 1) * rgb.shape[0] * du.get_world_size() / (time.perf_counter() - start)
        bar.set_postfix_str(' '.join(f'{n}={step_terms[n]:.3f}' for n in ('loss', 'ce', 'kl', 'feat')
                                     if n in step_terms) + f' lr={lr:.2e} img/s={images_per_s:.1f}')
        bar.update()
    bar.close()
    return {n: v / niters for n, v in sums.items()}
