"""One segmentation model for teacher and student: an encoder (single MiT or CMX dual MiT), the
SegFormer MLP decoder and, for a distilling student, the reconstruct heads.

A mode names an architecture: 'teacher' is the RGB-only single-branch model (what `--mode teacher`
trains), 'student' the CMX dual-branch RGB-X model. The teacher that guides a student is either
(config teacher_modality), with its own MiT size (teacher_backbone); `build_teacher` builds it."""
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.constants import MODES, STUDENT, TEACHER

from .decoders import MLPDecoder
from .distill import ReconstructHeads
from .encoders import DualMiTEncoder, MiTEncoder, mit_size

ENCODERS = {'teacher': MiTEncoder, 'student': DualMiTEncoder}
# The architecture of a guiding teacher of each teacher_modality.
TEACHER_ARCHITECTURE = {'rgb': TEACHER, 'rgbx': STUDENT}


class SegOutput(NamedTuple):
    logits: torch.Tensor                     # (B, num_classes, H, W), input size
    features: List[torch.Tensor]             # the four stage features (student: fused by the FFMs)
    reconstructions: Dict[str, torch.Tensor]  # {'loss1': ...} from the reconstruct heads, or {}


class SegmentationModel(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module,
                 distill_heads: Optional[ReconstructHeads] = None):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.distill_heads = distill_heads

    @property
    def takes_extra(self) -> bool:
        """Whether the model uses the extra modality. Every model can be called as
        model(rgb, extra); an RGB-only one ignores `extra`."""
        return self.encoder.takes_extra

    def forward(self, rgb: torch.Tensor, extra: Optional[torch.Tensor] = None) -> SegOutput:
        """Every model is called one way, model(rgb, extra): an RGB-only model leaves `extra` unused
        (callers pass what the batch has), an RGB-X model requires it."""
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise ValueError(f"model: rgb must be (B, 3, H, W), got {tuple(rgb.shape)}")
        if self.takes_extra:
            if extra is None:
                raise ValueError("this RGB-X model needs the extra modality: call model(rgb, extra)")
            if extra.shape != rgb.shape:
                raise ValueError(f"model: extra {tuple(extra.shape)} must have the shape of "
                                 f"rgb {tuple(rgb.shape)}")
            features = self.encoder(rgb, extra)
        else:
            features = self.encoder(rgb)
        logits = F.interpolate(self.decoder(features), size=rgb.shape[-2:], mode='bilinear',
                               align_corners=False)
        reconstructions = self.distill_heads(features) if self.distill_heads is not None else {}
        return SegOutput(logits, features, reconstructions)


def teacher_backbone(cfg) -> str:
    """The guiding teacher's MiT size: cfg.teacher_backbone, or the student's backbone if None."""
    return cfg.teacher_backbone or cfg.backbone


def _assemble(cfg, mode: str, backbone: str,
              head_widths: Optional[Sequence[int]] = None) -> SegmentationModel:
    """The `mode` architecture with a `backbone` encoder; reconstruct heads to `head_widths`
    (the teacher's stage widths) if given."""
    encoder = ENCODERS[mode](backbone, cfg.drop_path_rate)
    # The official teacher's decoder keeps BatchNorm eps 1e-5; the student's is re-initialised
    # with cfg.bn_eps (1e-3).
    bn_eps = cfg.teacher_bn_eps if mode == 'teacher' else cfg.bn_eps
    decoder = MLPDecoder(encoder.out_channels, cfg.num_classes, cfg.decoder_embed_dim,
                         bn_eps=bn_eps, bn_momentum=cfg.bn_momentum)
    heads = None
    if head_widths is not None:
        heads = ReconstructHeads(encoder.out_channels, head_widths, cfg.losses, cfg.mask_single,
                                 cfg.lambda_mask)
    return SegmentationModel(encoder, decoder, heads)


def build_model(cfg, mode: str, distill: bool = False) -> SegmentationModel:
    """mode 'teacher' (RGB only) or 'student' (RGB + extra), of cfg.backbone; `distill` adds the
    student's reconstruct heads for cfg.losses, of type cfg.mask_single, from the student's stage
    widths to those of the configured teacher (teacher_backbone)."""
    if mode not in MODES:
        raise ValueError(f"build_model: mode must be one of {MODES}, got {mode!r}")
    if distill and mode != 'student':
        raise ValueError("build_model: only the student has distillation heads (distill=True)")
    head_widths = mit_size(teacher_backbone(cfg)).embed_dims if distill else None
    return _assemble(cfg, mode, cfg.backbone, head_widths)


def build_teacher(cfg) -> SegmentationModel:
    """The teacher that guides the student, with random weights: the RGB-only model
    (teacher_modality 'rgb') or the dual-branch RGB-X model without heads ('rgbx'), of
    teacher_backbone. models.teacher.load_teacher fills it from a checkpoint."""
    return _assemble(cfg, TEACHER_ARCHITECTURE[cfg.teacher_modality], teacher_backbone(cfg))
