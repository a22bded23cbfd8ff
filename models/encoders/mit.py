"""Mix Transformer (MiT, the SegFormer encoder) branches built from timm's PVT-v2.

timm's PyramidVisionTransformerV2 with MLP ratio 4 in every stage is the MiT encoder: same
overlapping patch embeddings, spatial-reduction attention, Mix-FFN and LayerNorms (eps 1e-6 in the
blocks and after each stage, 1e-5 in the patch embeddings and on the reduced keys/values), and the
same weight init. Only the parameter names differ; `models.weight_layouts` maps them.
"""
import math
from dataclasses import dataclass
from typing import List, Tuple

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models.pvt_v2 import PyramidVisionTransformerV2

from utils.constants import NUM_STAGES


@dataclass(frozen=True)
class MiTSize:
    embed_dims: Tuple[int, int, int, int]
    num_heads: Tuple[int, int, int, int]
    depths: Tuple[int, int, int, int]
    sr_ratios: Tuple[int, int, int, int]

    def describe(self) -> str:
        return (f"depths {'-'.join(map(str, self.depths))}, "
                f"widths {'-'.join(map(str, self.embed_dims))}")


_WIDE = (64, 128, 320, 512)
_HEADS = (1, 2, 5, 8)
_SR = (8, 4, 2, 1)

# The SegFormer sizes. mit_b1 is B1 here (the official CMX/PrimKD builder maps it to B0 by mistake).
MIT_SIZES = {
    'mit_b0': MiTSize((32, 64, 160, 256), _HEADS, (2, 2, 2, 2), _SR),
    'mit_b1': MiTSize(_WIDE, _HEADS, (2, 2, 2, 2), _SR),
    'mit_b2': MiTSize(_WIDE, _HEADS, (3, 4, 6, 3), _SR),
    'mit_b3': MiTSize(_WIDE, _HEADS, (3, 4, 18, 3), _SR),
    'mit_b4': MiTSize(_WIDE, _HEADS, (3, 8, 27, 3), _SR),
    'mit_b5': MiTSize(_WIDE, _HEADS, (3, 6, 40, 3), _SR),
}


def mit_size(backbone: str) -> MiTSize:
    if backbone not in MIT_SIZES:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {sorted(MIT_SIZES)}")
    return MIT_SIZES[backbone]


def create_mit_branch(size: MiTSize, drop_path_rate: float) -> PyramidVisionTransformerV2:
    """One MiT encoder without classifier. Stochastic depth grows linearly from 0 to
    `drop_path_rate` over all blocks (timm's rule, the same as SegFormer's)."""
    return PyramidVisionTransformerV2(
        num_classes=0, global_pool='', depths=size.depths, embed_dims=size.embed_dims,
        num_heads=size.num_heads, sr_ratios=size.sr_ratios, mlp_ratios=(4, 4, 4, 4),
        qkv_bias=True, drop_path_rate=drop_path_rate)


def forward_stage(branch: PyramidVisionTransformerV2, index: int, x: torch.Tensor) -> torch.Tensor:
    """Runs stage `index` of a branch on the image (index 0) or on the previous stage's output.
    Returns (B, C, H, W) at stride 4 * 2**index."""
    if index == 0:
        x = branch.patch_embed(x)  # timm keeps the first patch embedding outside the stages
    return branch.stages[index](x)


def init_mit_weights(module: nn.Module) -> None:
    """The SegFormer/CMX init rule, applied with `module.apply`: Linear trunc-normal(std .02) with
    zero bias, Conv2d normal(0, sqrt(2 / fan_out)) with zero bias, LayerNorm 1 / 0."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        kernel_h, kernel_w = module.kernel_size
        fan_out = kernel_h * kernel_w * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class MiTEncoder(nn.Module):
    """RGB-only encoder of the teacher: the four stage outputs of one MiT branch."""
    takes_extra = False

    def __init__(self, backbone: str, drop_path_rate: float = 0.0):
        super().__init__()
        self.size = mit_size(backbone)
        self.out_channels = self.size.embed_dims
        self.rgb = create_mit_branch(self.size, drop_path_rate)

    def forward(self, rgb: torch.Tensor) -> List[torch.Tensor]:
        features = []
        x = rgb
        for index in range(NUM_STAGES):
            x = forward_stage(self.rgb, index, x)
            features.append(x)
        return features
