"""Decoders: the SegFormer all-MLP decoder."""
from .mlp import MLPDecoder

__all__ = ['MLPDecoder']
