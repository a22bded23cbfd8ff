"""PrimKD models: `build_model(cfg, role, distill)` for the RGB teacher and the RGB-X student."""
from .builder import SegmentationModel, SegOutput, build_model

__all__ = ['SegmentationModel', 'SegOutput', 'build_model']
