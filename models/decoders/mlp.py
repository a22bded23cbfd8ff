"""The SegFormer all-MLP decoder."""
from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def init_conv_kaiming(module: nn.Module) -> None:
    """The official decoder init (also used for the distillation heads, which live in the official
    decoder): conv weights kaiming-normal (fan_in, ReLU), BatchNorm 1 / 0; conv biases and Linear
    layers keep PyTorch's defaults."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode='fan_in', nonlinearity='relu')
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class LinearEmbed(nn.Module):
    """A per-position Linear layer: (B, C, H, W) -> (B, E, H, W)."""

    def __init__(self, in_channels: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_channels, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        x = self.proj(x.flatten(2).transpose(1, 2))
        return x.transpose(1, 2).reshape(batch, -1, height, width)


class MLPDecoder(nn.Module):
    """Embeds the four stage features to `embed_dim`, upsamples them to stride 4, fuses them with a
    1x1 conv + BN + ReLU and predicts class logits at stride 4."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, embed_dim: int,
                 dropout: float = 0.1, bn_eps: float = 1e-5, bn_momentum: float = 0.1):
        super().__init__()
        self.linear_c1 = LinearEmbed(in_channels[0], embed_dim)
        self.linear_c2 = LinearEmbed(in_channels[1], embed_dim)
        self.linear_c3 = LinearEmbed(in_channels[2], embed_dim)
        self.linear_c4 = LinearEmbed(in_channels[3], embed_dim)
        self.linear_fuse = nn.Sequential(
            nn.Conv2d(embed_dim * 4, embed_dim, kernel_size=1),
            nn.BatchNorm2d(embed_dim, eps=bn_eps, momentum=bn_momentum),
            nn.ReLU(inplace=True))
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, kernel_size=1)
        init_conv_kaiming(self)

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        c1, c2, c3, c4 = features
        size = c1.shape[-2:]

        def upsampled(x):
            return F.interpolate(x, size=size, mode='bilinear', align_corners=False)

        # The official concatenation order, deepest stage first: the fuse conv's weights rely on it.
        embedded = torch.cat([upsampled(self.linear_c4(c4)), upsampled(self.linear_c3(c3)),
                              upsampled(self.linear_c2(c2)), self.linear_c1(c1)], dim=1)
        return self.linear_pred(self.dropout(self.linear_fuse(embedded)))
