"""The frozen teacher that guides a PrimKD student: its checkpoint checked against the config's
teacher (teacher_backbone, teacher_modality, num_classes) before any work, and loaded frozen.

What a checkpoint holds is read from its keys and shapes (models.weight_layouts), not from any
metadata, so official and project checkpoints are checked alike: an RGB teacher is the single-branch
layout (e.g. the released nyu-rgb.pth, or a `--mode teacher` run), an RGB-X teacher the student's
dual-branch layout (e.g. a CMX baseline run; its reconstruct heads, if any, are ignored).
"""
from typing import Optional

from .builder import TEACHER_ARCHITECTURE, SegmentationModel, build_teacher, teacher_backbone
from .weight_layouts import CheckpointError, checkpoint_contents, load_checkpoint, read_checkpoint_file

TEACHER_HELP = ("get the released teacher (pretrained/README.md), or train one with --mode teacher "
                "and give it with --teacher PATH (it has the config's backbone: add --opts "
                "teacher_backbone=<that backbone> if teacher_backbone says otherwise); "
                "--distillation_alpha 0 --distillation_beta 0 trains the CMX baseline without a teacher")
KIND_TEXT = {'teacher': 'RGB teacher (single-branch)',
             'student': 'RGB-X model (CMX dual-branch, student layout)'}
MODALITY_OF_ARCHITECTURE = {mode: modality for modality, mode in TEACHER_ARCHITECTURE.items()}


def _configured_teacher(cfg) -> str:
    backbone = (cfg.teacher_backbone if cfg.teacher_backbone
                else f"None (the backbone, {cfg.backbone})")
    return f"teacher_backbone {backbone}, teacher_modality {cfg.teacher_modality}"


def check_teacher_checkpoint(cfg, path: Optional[str] = None) -> dict:
    """Reads the teacher checkpoint (`path`, default cfg.teacher_checkpoint) weights-only and checks
    its kind, MiT size and class count against the config; returns the raw checkpoint dict.
    Cheap (the file is memory-mapped and only shapes are read), so it can run before any work.
    Raises CheckpointError with one line naming the checkpoint's side, the config's and the
    --opts that would match."""
    path = path or cfg.teacher_checkpoint
    if not path:
        raise CheckpointError(f"no teacher checkpoint (config teacher_checkpoint is None): {TEACHER_HELP}")
    raw = read_checkpoint_file(path, 'teacher checkpoint', TEACHER_HELP, mmap=True)
    source = f"teacher checkpoint '{path}'"
    contents = checkpoint_contents(raw, source)
    if contents.mode is None:
        raise CheckpointError(f"{source} holds no MiT encoder (no backbone.* or encoder.* keys); "
                              f"expected a PrimKD/CMX segmentation checkpoint")
    fixes = []
    if contents.backbone and contents.backbone != teacher_backbone(cfg):
        fixes.append(f"teacher_backbone={contents.backbone}")
    if MODALITY_OF_ARCHITECTURE[contents.mode] != cfg.teacher_modality:
        fixes.append(f"teacher_modality={MODALITY_OF_ARCHITECTURE[contents.mode]}")
    if fixes or contents.backbone is None:
        kind = KIND_TEXT[contents.mode]
        what = (f"a {contents.backbone} {kind}" if contents.backbone
                else f"an {kind} of {contents.size_name()}")
        raise CheckpointError(f"{source} is {what}; the config says {_configured_teacher(cfg)}"
                              + (f" (--opts {' '.join(fixes)})" if fixes else ''))
    if contents.num_classes is not None and contents.num_classes != cfg.num_classes:
        raise CheckpointError(f"{source} predicts {contents.num_classes} classes; the config says "
                              f"num_classes={cfg.num_classes}: use a teacher of the same dataset")
    return raw


def load_teacher(cfg, path: Optional[str] = None) -> SegmentationModel:
    """The configured teacher (build_teacher) with the weights of `path` (default
    cfg.teacher_checkpoint), checked first (check_teacher_checkpoint), loaded strictly, in eval
    mode and without gradients. Call it as teacher(rgb, extra): `teacher.takes_extra` says
    whether it uses `extra`."""
    raw = check_teacher_checkpoint(cfg, path)
    teacher = build_teacher(cfg)
    load_checkpoint(teacher, raw, source=f"teacher checkpoint '{path or cfg.teacher_checkpoint}'")
    return teacher.eval().requires_grad_(False)
