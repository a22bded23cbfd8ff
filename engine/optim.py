"""The paper's optimisation: AdamW without decay on norms and biases, linear warm-up then poly decay."""
import torch


def param_groups(model: torch.nn.Module, weight_decay: float):
    """Two groups: weights of linear and conv layers decay; biases and norm parameters do not.

    Every 1-D parameter in these networks is a bias or a norm scale/shift, so the rank of a tensor
    is the rule (the official code reaches the same split through module types)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{'params': decay, 'weight_decay': weight_decay},
            {'params': no_decay, 'weight_decay': 0.0}]


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == 'AdamW':
        # The fused kernel runs on CUDA and (torch >= 2.4, the requirement) on the CPU, where it
        # makes the optimizer step 2.5x faster than the default multi-tensor path.
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), fused=True)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def warmup_poly_factor(iteration: int, total_iters: int, warmup_iters: int, power: float) -> float:
    """lr / base_lr at an iteration: linear from 0 during warm-up, then (1 - it / total) ** power
    (the official WarmUpPolyLR: the poly term counts from iteration 0, not from the warm-up's end)."""
    if iteration < warmup_iters:
        return iteration / warmup_iters
    return max(0.0, 1.0 - iteration / total_iters) ** power


def build_scheduler(optimizer, cfg, epochs_done: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """The config's schedule, stepped once per iteration, standing where it stands after
    `epochs_done` epochs (a resumed run): iteration epochs_done * niters_per_epoch, whose factor the
    optimizer's learning rate is set to now, as after that many steps of an uninterrupted run.

    The schedule is a function of the config and the epoch alone, never restored from a checkpoint:
    a resume with another nepochs (or, allowed, another lr or batch size) gets the schedule of its
    config, continuing from the epoch reached."""
    total = cfg.nepochs * cfg.niters_per_epoch
    warmup = cfg.warm_up_epoch * cfg.niters_per_epoch
    for group in optimizer.param_groups:  # the base of the factors: the config's lr, not a checkpoint's
        group['initial_lr'] = cfg.lr
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: warmup_poly_factor(it, total, warmup, cfg.lr_power),
        last_epoch=epochs_done * cfg.niters_per_epoch - 1)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state_dict: dict) -> None:
    """optimizer.load_state_dict for the moments and step counts only: the hyper-parameters (weight
    decay, betas, momentum) stay those of the config the optimizer was built from, which a resume
    with --allow-config-change may have changed. Every per-parameter state tensor (Adam's moments)
    gets its parameter's memory layout: load_state_dict keeps the saved strides, so resuming with
    another channels_last setting would hand fused AdamW moments in one layout and weights in the
    other (an error on CUDA, silently wrong updates on the CPU)."""
    settings = [{key: value for key, value in group.items() if key != 'params'} for group in optimizer.param_groups]
    optimizer.load_state_dict(state_dict)
    for group, own in zip(optimizer.param_groups, settings):
        group.update(own)
    for group in optimizer.param_groups:
        for param in group['params']:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if (torch.is_tensor(value) and value.shape == param.shape
                        and value.stride() != param.stride()):
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
