"""Encoders: the RGB-only MiT encoder of the teacher and the CMX dual encoder of the student."""
from .dual_mit import DualMiTEncoder
from .mit import MIT_SIZES, MiTEncoder, MiTSize, mit_size

__all__ = ['DualMiTEncoder', 'MIT_SIZES', 'MiTEncoder', 'MiTSize', 'mit_size']
