"""PrimKD models: `build_model(cfg, mode, distill)` for the RGB teacher and the RGB-X student, and
`build_teacher` / `load_teacher` for the frozen teacher that guides a student."""
from .builder import SegmentationModel, SegOutput, build_model, build_teacher, teacher_backbone
from .teacher import check_teacher_checkpoint, load_teacher

__all__ = ['SegmentationModel', 'SegOutput', 'build_model', 'build_teacher',
           'check_teacher_checkpoint', 'load_teacher', 'teacher_backbone']
