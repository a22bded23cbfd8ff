"""What a run needs, decided once from the config and the mode: the one place that says whether
there is a teacher, whether the student carries reconstruct heads, and whether the data loader
reads the extra modality. Training, evaluation and the benchmark build their models and datasets
through it."""
import os
from dataclasses import dataclass

import torch

from dataloader.dataset import RGBXDataset
from models.builder import build_model, build_teacher
from models.distill import feature_term_on, kl_term_on
from models.teacher import check_teacher_checkpoint, load_teacher
from utils.constants import MODES

from . import run_dir as rd


@dataclass(frozen=True)
class RunSpec:
    mode: str           # 'teacher': the RGB-only model with cross-entropy; 'student': the RGB-X model
    teacher: bool       # a frozen teacher guides the run (a student with the KL or the feature term)
    heads: bool         # the student carries reconstruct heads (the feature term is on)
    extra: bool         # the data has the extra modality (HHA or depth)

    @classmethod
    def from_config(cls, cfg, mode: str) -> 'RunSpec':
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        student = mode == 'student'
        return cls(mode=mode, teacher=student and (kl_term_on(cfg) or feature_term_on(cfg)),
                   heads=student and feature_term_on(cfg), extra=student)

    @classmethod
    def for_evaluation(cls, mode: str) -> 'RunSpec':
        """Evaluating a trained model: no teacher, no reconstruct heads (they are training-only)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        return cls(mode=mode, teacher=False, heads=False, extra=mode == 'student')

    def check_inputs(self, cfg, resuming: bool, config_path: str) -> None:
        """The files the run needs, checked before any work, each with what to do about it."""
        if cfg.pretrained_model and not resuming and not os.path.isfile(cfg.pretrained_model):
            raise FileNotFoundError(
                f"ImageNet encoder weights '{cfg.pretrained_model}' not found (config key pretrained_model). "
                f"Download the SegFormer mit_b*.pth files into pretrained/segformer/ (see pretrained/README.md), "
                f"or train from scratch with --no-pretrained.")
        if self.teacher and not os.path.isfile(self.teacher_checkpoint(cfg)):
            raise FileNotFoundError(
                f"teacher checkpoint '{cfg.teacher_checkpoint}' not found (config key teacher_checkpoint, "
                f"or --teacher PATH: a checkpoint file or a teacher's run directory). Get the released "
                f"teacher (pretrained/README.md) or train one with "
                f"`bash train.sh {config_path} --mode teacher`; "
                f"--distillation_alpha 0 --distillation_beta 0 trains the CMX baseline without a teacher.")
        if self.teacher:
            check_teacher_checkpoint(cfg, self.teacher_checkpoint(cfg))  # of the configured size and kind

    @staticmethod
    def teacher_checkpoint(cfg) -> str:
        """The teacher's checkpoint file: cfg.teacher_checkpoint itself, or for a teacher's run
        directory (or the log_dir above it) its last checkpoint: the trained teacher, never one
        selected on the validation split, which is the test split of NYU and SUN-RGBD."""
        path = str(cfg.teacher_checkpoint or '')
        if os.path.isdir(path):
            for directory in (path, rd.run_dir(path, 'teacher')):
                if os.path.isfile(rd.checkpoint_path(directory, rd.LAST)):
                    return rd.checkpoint_path(directory, rd.LAST)
        return path

    def build_model(self, cfg):
        """The model the run trains or evaluates, with random weights."""
        return build_model(cfg, self.mode, distill=self.heads)

    def build_teacher(self, cfg, device: torch.device, load: bool = True):
        """The frozen teacher of the configured backbone and modality on `device` (with the weights of
        cfg.teacher_checkpoint unless `load` is False), or None for a run without one."""
        if not self.teacher:
            return None
        if load:
            return load_teacher(cfg, self.teacher_checkpoint(cfg)).to(device)
        return build_teacher(cfg).eval().requires_grad_(False).to(device)

    def dataset(self, cfg, split: str, transform=None) -> RGBXDataset:
        """A split of the config's dataset, with the extra modality only where the run uses it."""
        return RGBXDataset(cfg, split, transform, with_extra=self.extra)
