"""One segmentation model for teacher and student: an encoder (single MiT or CMX dual MiT), the
SegFormer MLP decoder and, for a distilling student, the reconstruct heads."""
from typing import Dict, List, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .decoders import MLPDecoder
from .distill import ReconstructHeads
from .encoders import DualMiTEncoder, MiTEncoder

ROLES = ('teacher', 'student')
ENCODERS = {'teacher': MiTEncoder, 'student': DualMiTEncoder}


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

    def forward(self, rgb: torch.Tensor, extra: Optional[torch.Tensor] = None) -> SegOutput:
        """Every model is called one way, model(rgb, extra): an RGB-only model leaves `extra` unused
        (callers pass what the batch has), an RGB-X model requires it."""
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise ValueError(f"model: rgb must be (B, 3, H, W), got {tuple(rgb.shape)}")
        if self.encoder.takes_extra:
            if extra is None:
                raise ValueError("the student needs the extra modality: call model(rgb, extra)")
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


def build_model(cfg, role: str, distill: bool = False) -> SegmentationModel:
    """role 'teacher' (RGB only) or 'student' (RGB + extra); `distill` adds the student's
    reconstruct heads for cfg.losses, of type cfg.mask_single."""
    if role not in ROLES:
        raise ValueError(f"build_model: role must be one of {ROLES}, got {role!r}")
    if distill and role != 'student':
        raise ValueError("build_model: only the student has distillation heads (distill=True)")
    encoder = ENCODERS[role](cfg.backbone, cfg.drop_path_rate)
    # The official teacher's decoder keeps BatchNorm eps 1e-5; the student's is re-initialised
    # with cfg.bn_eps (1e-3).
    bn_eps = cfg.teacher_bn_eps if role == 'teacher' else cfg.bn_eps
    decoder = MLPDecoder(encoder.out_channels, cfg.num_classes, cfg.decoder_embed_dim,
                         bn_eps=bn_eps, bn_momentum=cfg.bn_momentum)
    heads = None
    if distill:
        heads = ReconstructHeads(encoder.out_channels, cfg.losses, cfg.mask_single,
                                 cfg.lambda_mask)
    return SegmentationModel(encoder, decoder, heads)
