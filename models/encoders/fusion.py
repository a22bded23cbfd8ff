"""The two CMX cross-modal modules (Zhang et al., "CMX", IEEE T-ITS 2023).

Feature Rectify Module (FRM): each modality is corrected with channel and spatial weights computed
from both; its two outputs feed the next stage of the two branches.
Feature Fusion Module (FFM): efficient cross-attention between the modalities, then a channel
embedding that merges them into one feature map for the decoder.

Sub-module names follow CMX (`channel_proj1` acts on RGB, `...2` on the extra modality) so that the
released weights map one to one.
"""
from typing import Tuple

import torch
import torch.nn as nn

Pair = Tuple[torch.Tensor, torch.Tensor]


class ChannelWeights(nn.Module):
    """Per-channel gates (B, C) for both modalities from the avg- and max-pooled concatenation."""

    def __init__(self, dim: int, reduction: int = 1):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(
            nn.Linear(dim * 4, dim * 4 // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(dim * 4 // reduction, dim * 2),
            nn.Sigmoid())

    def forward(self, rgb: torch.Tensor, extra: torch.Tensor) -> Pair:
        both = torch.cat((rgb, extra), dim=1)
        pooled = torch.cat((both.mean(dim=(2, 3)), both.amax(dim=(2, 3))), dim=1)
        weights = self.mlp(pooled).view(-1, 2, self.dim, 1, 1)
        return weights[:, 0], weights[:, 1]


class SpatialWeights(nn.Module):
    """Per-position gates (B, 1, H, W) for both modalities from 1x1 convs on the concatenation."""

    def __init__(self, dim: int, reduction: int = 1):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(dim * 2, dim // reduction, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim // reduction, 2, kernel_size=1),
            nn.Sigmoid())

    def forward(self, rgb: torch.Tensor, extra: torch.Tensor) -> Pair:
        weights = self.mlp(torch.cat((rgb, extra), dim=1))
        return weights[:, 0:1], weights[:, 1:2]


class FeatureRectifyModule(nn.Module):
    """Each modality plus the other one weighted by the gates computed for it:
    rgb' = rgb + lambda_c * cw_extra * extra + lambda_s * sw_extra * extra (and symmetrically)."""

    def __init__(self, dim: int, reduction: int = 1, lambda_c: float = 0.5, lambda_s: float = 0.5):
        super().__init__()
        self.lambda_c = lambda_c
        self.lambda_s = lambda_s
        self.channel_weights = ChannelWeights(dim, reduction)
        self.spatial_weights = SpatialWeights(dim, reduction)

    def forward(self, rgb: torch.Tensor, extra: torch.Tensor) -> Pair:
        channel_rgb, channel_extra = self.channel_weights(rgb, extra)
        spatial_rgb, spatial_extra = self.spatial_weights(rgb, extra)
        rectified_rgb = (rgb + self.lambda_c * channel_extra * extra
                         + self.lambda_s * spatial_extra * extra)
        rectified_extra = (extra + self.lambda_c * channel_rgb * rgb
                           + self.lambda_s * spatial_rgb * rgb)
        return rectified_rgb, rectified_extra


class CrossAttention(nn.Module):
    """Efficient cross-attention: each modality's keys and values form a (d x d) global context per
    head, softmax-normalised over keys; the other modality's tokens query it."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"CrossAttention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.kv1 = nn.Linear(dim, dim * 2, bias=False)
        self.kv2 = nn.Linear(dim, dim * 2, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        return x.reshape(batch, tokens, self.num_heads, dim // self.num_heads).transpose(1, 2)

    def _context(self, kv: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        keys, values = kv(x).chunk(2, dim=-1)
        context = (self._heads(keys).transpose(-2, -1) @ self._heads(values)) * self.scale
        return context.softmax(dim=-2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, tokens, _ = x.shape
        return x.transpose(1, 2).reshape(batch, tokens, -1)

    def forward(self, rgb: torch.Tensor, extra: torch.Tensor) -> Pair:
        context_rgb = self._context(self.kv1, rgb)
        context_extra = self._context(self.kv2, extra)
        return (self._merge(self._heads(rgb) @ context_extra),
                self._merge(self._heads(extra) @ context_rgb))


class CrossPath(nn.Module):
    """Token-level exchange (B, N, C): half of each projection goes through the cross-attention, the
    other half is kept; both are projected back, added to the input and normalised."""

    def __init__(self, dim: int, num_heads: int, reduction: int = 1):
        super().__init__()
        hidden = dim // reduction
        self.channel_proj1 = nn.Linear(dim, hidden * 2)
        self.channel_proj2 = nn.Linear(dim, hidden * 2)
        self.act1 = nn.ReLU(inplace=True)
        self.act2 = nn.ReLU(inplace=True)
        self.cross_attn = CrossAttention(hidden, num_heads)
        self.end_proj1 = nn.Linear(hidden * 2, dim)
        self.end_proj2 = nn.Linear(hidden * 2, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, rgb: torch.Tensor, extra: torch.Tensor) -> Pair:
        kept_rgb, query_rgb = self.act1(self.channel_proj1(rgb)).chunk(2, dim=-1)
        kept_extra, query_extra = self.act2(self.channel_proj2(extra)).chunk(2, dim=-1)
        attended_rgb, attended_extra = self.cross_attn(query_rgb, query_extra)
        rgb = self.norm1(rgb + self.end_proj1(torch.cat((kept_rgb, attended_rgb), dim=-1)))
        extra = self.norm2(extra + self.end_proj2(torch.cat((kept_extra, attended_extra), dim=-1)))
        return rgb, extra


class ChannelEmbed(nn.Module):
    """Merges the concatenated modalities (B, 2C, H, W) into C channels: a 1x1 residual plus
    1x1 -> depthwise 3x3 -> ReLU -> 1x1 -> BN, then BN of the sum."""

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 1):
        super().__init__()
        hidden = out_channels // reduction
        self.residual = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.channel_embed = nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size=1),
            nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, kernel_size=1),
            nn.BatchNorm2d(out_channels))
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.residual(x) + self.channel_embed(x))


class FeatureFusionModule(nn.Module):
    """(B, C, H, W) x 2 -> fused (B, C, H, W)."""

    def __init__(self, dim: int, num_heads: int, reduction: int = 1):
        super().__init__()
        self.cross = CrossPath(dim, num_heads, reduction)
        self.channel_emb = ChannelEmbed(dim * 2, dim, reduction)

    def forward(self, rgb: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = rgb.shape
        rgb, extra = self.cross(rgb.flatten(2).transpose(1, 2), extra.flatten(2).transpose(1, 2))
        merged = torch.cat((rgb, extra), dim=-1).transpose(1, 2)
        return self.channel_emb(merged.reshape(batch, 2 * channels, height, width))
