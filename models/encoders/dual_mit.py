"""The CMX dual-branch encoder of the student: an RGB and an extra-modality MiT branch, joined after
every stage by a Feature Rectify Module (its outputs feed both branches' next stage) and a Feature
Fusion Module (its output is the stage feature given to the decoder).

Stochastic depth follows the linear rule in both branches; CMX's code gives every stage-2 block of a
branch the same rate, a slip not copied here (it only matters in training, and no weights depend on
it)."""
from typing import List

import torch
import torch.nn as nn

from utils.constants import NUM_STAGES

from .fusion import FeatureFusionModule, FeatureRectifyModule
from .mit import create_mit_branch, forward_stage, init_mit_weights, mit_size


class DualMiTEncoder(nn.Module):
    takes_extra = True

    def __init__(self, backbone: str, drop_path_rate: float = 0.0):
        super().__init__()
        self.size = mit_size(backbone)
        self.out_channels = self.size.embed_dims
        self.rgb = create_mit_branch(self.size, drop_path_rate)
        self.extra = create_mit_branch(self.size, drop_path_rate)
        self.rectify = nn.ModuleList(
            FeatureRectifyModule(dim) for dim in self.size.embed_dims)
        self.fuse = nn.ModuleList(
            FeatureFusionModule(dim, heads)
            for dim, heads in zip(self.size.embed_dims, self.size.num_heads))
        # CMX initialises the whole dual transformer, FRMs and FFMs included, with the MiT rule.
        self.rectify.apply(init_mit_weights)
        self.fuse.apply(init_mit_weights)

    def forward(self, rgb: torch.Tensor, extra: torch.Tensor) -> List[torch.Tensor]:
        fused_features = []
        for index in range(NUM_STAGES):
            rgb = forward_stage(self.rgb, index, rgb)
            extra = forward_stage(self.extra, index, extra)
            rgb, extra = self.rectify[index](rgb, extra)
            fused_features.append(self.fuse[index](rgb, extra))
        return fused_features
