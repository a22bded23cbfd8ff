"""PrimKD distillation: the student's reconstruct heads and the two distillation loss terms.

The model only produces `reconstructions` from the heads; the losses are computed here, on the
input-size logits, every pixel (ignored ones included) counting:

    kl   = alpha * logit_loss(student logits, teacher logits)
    feat = beta * select_k MSE(reconstruction_k, teacher_features[k - 1])   for the heads' stages

`distillation_logit_loss` chooses the logit term (LOGIT_LOSSES; tau = distillation_tau, or the
loss's default temperature when that is None):

    kl    PrimKD's (the default): mean over pixels of KL(teacher || student) over classes
          (distillation_flag 1; KL(student || teacher) for flag 0); with distillation_kl_confidence
          c > 0 (not in the paper) a pixel whose teacher's top class probability is below c adds 0
          (the mean still divides by every pixel)
    kd    Hinton et al. 2015: tau^2 * the same KL between the softmaxes at temperature tau
          (the flag chooses the direction as for kl)
    cwd   channel-wise distillation (Shu et al., ICCV 2021): for each image and class channel, the
          softmax over the pixels at temperature tau; tau^2 * KL(teacher || student) of those
          spatial distributions, averaged over images and channels
    dist  DIST (Huang et al., NeurIPS 2022): with y = softmax(logits / tau) over classes,
          tau^2 * (inter + intra), inter = 1 - mean over pixels of the Pearson correlation of the
          student's and teacher's class vectors, intra = 1 - mean over classes of the Pearson
          correlation of their per-class maps over all pixels of the batch

`select` 'max' keeps the largest per-stage MSE (PrimKD's dynamic choice), 'min' the smallest,
anything else no feature term. The cross-entropy is the trainer's.
"""
import dataclasses
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.constants import STAGE_LOSSES

from .decoders.mlp import init_conv_kaiming


@dataclasses.dataclass(frozen=True)
class LogitLoss:
    """A logit distillation loss and the settings its paper uses for semantic segmentation."""
    tau: float           # default temperature
    weight: float        # the paper's loss weight (distillation_alpha in an ablation variant)
    source: str


LOGIT_LOSSES = {
    'kl': LogitLoss(1.0, 1.0, 'PrimKD (Hao et al., ACM MM 2024)'),
    # Hinton et al. give no single temperature; 4 is the one CWD uses for logits.
    'kd': LogitLoss(4.0, 1.0, 'Hinton et al. 2015, tau^2-scaled'),
    'cwd': LogitLoss(4.0, 3.0, 'Shu et al., ICCV 2021 (logits: tau 4, weight 3)'),
    'dist': LogitLoss(1.0, 1.0, 'Huang et al., NeurIPS 2022 (segmentation: tau 1, beta = gamma = 1)'),
}


def logit_temperature(cfg) -> float:
    """distillation_tau, or the chosen logit loss's default temperature when it is None."""
    if cfg.distillation_tau is not None:
        return cfg.distillation_tau
    return LOGIT_LOSSES[cfg.distillation_logit_loss].tau


def kl_term_on(cfg) -> bool:
    """The KL term is used: switched on (distillation_single) with a non-zero weight."""
    return cfg.distillation_single == 1 and cfg.distillation_alpha != 0


def feature_term_on(cfg) -> bool:
    """The feature term is used: a positive weight and a max/min stage selection. Only then does the
    student get reconstruct heads."""
    return cfg.distillation_beta > 0 and cfg.select in ('max', 'min')


def stage_index(loss_name: str) -> int:
    """'loss1' -> 0: the stage feature a head reconstructs."""
    return STAGE_LOSSES.index(loss_name)


class HintHead(nn.Module):
    """`hint`: a 1x1 conv from the student's fused feature to the teacher's feature."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.align = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.align(x)


class MaskedHintHead(nn.Module):
    """`mask_hint` (masked generative distillation): 1x1 conv, then a random spatial mask keeping
    each position with probability `keep_prob` (one draw per sample and position, shared by the
    channels), then 3x3 conv, ReLU, 3x3 conv. The mask is part of the task (regenerate the teacher's
    feature from a partial one), so it applies in eval mode too, as in the official code. The 1x1 conv
    maps to the teacher's width, so the mask and the generation work at that width."""

    def __init__(self, in_channels: int, out_channels: int, keep_prob: float):
        super().__init__()
        self.keep_prob = keep_prob
        self.align = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.generate = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        aligned = self.align(x)
        batch, _, height, width = aligned.shape
        keep = torch.rand(batch, 1, height, width, device=aligned.device) < self.keep_prob
        return self.generate(aligned * keep.to(aligned.dtype))


HEAD_TYPES = {'hint': HintHead, 'mask_hint': MaskedHintHead}


class ReconstructHeads(nn.ModuleDict):
    """One head per stage named in `losses` ('loss1' -> stage 1, i.e. features[0]), from the
    student's stage width `in_channels[k]` to the teacher's `out_channels[k]`."""

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int],
                 losses: Sequence[str], head_type: str, keep_prob: float):
        if head_type not in HEAD_TYPES:
            raise ValueError(f"unknown reconstruct head type {head_type!r} (mask_single); "
                             f"expected one of {sorted(HEAD_TYPES)}")
        unknown = [name for name in losses if name not in STAGE_LOSSES]
        if unknown or not losses:
            raise ValueError(f"losses must be a non-empty list of names from {STAGE_LOSSES}, "
                             f"got {list(losses)}")
        heads = {}
        for name in losses:
            widths = in_channels[stage_index(name)], out_channels[stage_index(name)]
            heads[name] = (HintHead(*widths) if head_type == 'hint'
                           else MaskedHintHead(*widths, keep_prob))
        super().__init__(heads)
        init_conv_kaiming(self)

    def forward(self, features: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {name: head(features[stage_index(name)]) for name, head in self.items()}


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor, keep: Optional[torch.Tensor] = None
                  ) -> torch.Tensor:
    """KL(p || q) over the class dimension 1, averaged over every other position (in float32, as
    low-precision logits lose the small probabilities). Positions where the boolean `keep` is False
    add 0 to the mean."""
    log_p = F.log_softmax(p_logits.float(), dim=1)
    log_q = F.log_softmax(q_logits.float(), dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    return (kl if keep is None else kl * keep).mean()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float, flag: int = 1
            ) -> torch.Tensor:
    """Hinton's KD per pixel: tau^2 * KL between the class softmaxes at temperature tau (flag 1:
    KL(teacher || student)); the tau^2 keeps the gradient's scale independent of tau."""
    student, teacher = student_logits.float() / tau, teacher_logits.float() / tau
    pair = (teacher, student) if flag == 1 else (student, teacher)
    return tau ** 2 * kl_divergence(*pair)


def cwd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Channel-wise distillation: each (image, channel) map as a distribution over its pixels."""
    batch, channels = student_logits.shape[:2]
    student = student_logits.float().reshape(batch * channels, -1, 1) / tau
    teacher = teacher_logits.float().reshape(batch * channels, -1, 1) / tau
    # kl_divergence reduces over dim 1 (here the pixels) and averages over the (image, channel) rows
    return tau ** 2 * kl_divergence(teacher, student)


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of `a` with the same row of `b`."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float,
              inter_weight: float = 1.0, intra_weight: float = 1.0) -> torch.Tensor:
    """DIST: the inter-class (per pixel, over classes) and intra-class (per class, over all pixels)
    relations of the class probabilities, matched by Pearson correlation."""
    classes = student_logits.shape[1]
    student = F.softmax(student_logits.float() / tau, dim=1).movedim(1, -1).reshape(-1, classes)
    teacher = F.softmax(teacher_logits.float() / tau, dim=1).movedim(1, -1).reshape(-1, classes)
    inter = 1 - _pearson_rows(student, teacher).mean()
    intra = 1 - _pearson_rows(student.T, teacher.T).mean()
    return tau ** 2 * (inter_weight * inter + intra_weight * intra)


def logit_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, cfg) -> torch.Tensor:
    """The configured logit distillation loss, unweighted (see the module's docstring)."""
    name, tau = cfg.distillation_logit_loss, logit_temperature(cfg)
    if name == 'kl':
        keep = confident_pixels(teacher_logits, cfg.distillation_kl_confidence)
        if cfg.distillation_flag == 1:
            return kl_divergence(teacher_logits, student_logits, keep)
        return kl_divergence(student_logits, teacher_logits, keep)
    if name == 'kd':
        return kd_loss(student_logits, teacher_logits, tau, cfg.distillation_flag)
    if name == 'cwd':
        return cwd_loss(student_logits, teacher_logits, tau)
    return dist_loss(student_logits, teacher_logits, tau)


def describe_logit_loss(cfg) -> str:
    """The logit term as train.log names it."""
    name = cfg.distillation_logit_loss
    if name == 'kl':
        text = f'KL, flag {cfg.distillation_flag}'
        if cfg.distillation_kl_confidence:
            text += f', only where the teacher is >= {cfg.distillation_kl_confidence:g} sure'
        return text
    text = f'{name}, tau {logit_temperature(cfg):g}'
    if name == 'kd':
        text += f', flag {cfg.distillation_flag}'
    if name == 'dist':
        text += ', inter 1, intra 1'
    return text + f'; {LOGIT_LOSSES[name].source}'


def confident_pixels(teacher_logits: torch.Tensor, threshold: float) -> Optional[torch.Tensor]:
    """Where the teacher's top class probability reaches `threshold`; None (every pixel) for 0."""
    if threshold == 0:
        return None
    return F.softmax(teacher_logits.float(), dim=1).amax(dim=1) >= threshold


def _target(tensor: torch.Tensor) -> torch.Tensor:
    """The teacher side as a constant. Tensors made under torch.inference_mode cannot be saved for
    backward, so those are copied into normal tensors."""
    tensor = tensor.detach()
    return tensor.clone() if tensor.is_inference() else tensor


def distillation_losses(student_out, teacher_out, cfg) -> Dict[str, torch.Tensor]:
    """The distillation terms from the student's and teacher's SegOutput.

    Returns scalar tensors: 'kl' (the logit term, whichever loss, times distillation_alpha),
    'feat' (beta times the selected stage MSE), 'feat_loss1'.. (raw per-stage MSE, detached, for
    logging) and 'feat_stage' (the selected stage's 0-based feature index, -1 when none). The teacher side never receives gradients.
    """
    student_logits = student_out.logits
    teacher_logits = _target(teacher_out.logits)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"distillation: student logits {tuple(student_logits.shape)} and teacher "
                         f"logits {tuple(teacher_logits.shape)} differ; both models must see the "
                         f"same input and have the same num_classes")
    device = student_logits.device
    losses = {}

    if kl_term_on(cfg):
        losses['kl'] = cfg.distillation_alpha * logit_loss(student_logits, teacher_logits, cfg)
    else:
        losses['kl'] = torch.zeros((), device=device)

    names = [name for name in STAGE_LOSSES if name in student_out.reconstructions]
    stage_mse = []
    for name in names:
        reconstruction = student_out.reconstructions[name]
        target = _target(teacher_out.features[stage_index(name)])
        if reconstruction.shape != target.shape:
            raise ValueError(f"distillation {name}: student reconstruction "
                             f"{tuple(reconstruction.shape)} vs teacher stage feature "
                             f"{tuple(target.shape)}; the student's heads must be built for this "
                             f"teacher (config teacher_backbone)")
        mse = F.mse_loss(reconstruction.float(), target.float())
        stage_mse.append(mse)
        losses[f'feat_{name}'] = mse.detach()

    if not stage_mse or cfg.select not in ('max', 'min'):
        # Every head stays in the graph (zero gradient), as DistributedDataParallel needs.
        losses['feat'] = sum(stage_mse) * 0.0 if stage_mse else torch.zeros((), device=device)
        losses['feat_stage'] = torch.tensor(-1, device=device)
        return losses
    stacked = torch.stack(stage_mse)
    chosen = stacked.detach().argmax() if cfg.select == 'max' else stacked.detach().argmin()
    # A one-hot weighting rather than indexing: the gradient reaches only the chosen stage, yet
    # every head stays in the graph, and nothing waits for the GPU to pick the stage.
    selection = F.one_hot(chosen, len(names)).to(stacked.dtype)
    losses['feat'] = cfg.distillation_beta * (stacked * selection).sum()
    stages = torch.tensor([stage_index(name) for name in names], device=device)
    losses['feat_stage'] = stages.index_select(0, chosen.view(1))[0]  # a 0-d index would sync
    return losses
