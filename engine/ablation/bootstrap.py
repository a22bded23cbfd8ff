"""A finished cell's last checkpoint loaded again in this process, as val.py evaluates it (the cell's
saved config, its eval_mode, scales and flip), and its per-image confusion matrices for the bootstrap
over the test images, computed once and kept in the cell folder."""
import os

import numpy
import torch

from config import load_config
from dataloader.transforms import EvalTransform
from engine import run_dir as rd
from engine.distributed import DistInfo
from engine.evaluator import evaluate
from engine.run_spec import RunSpec
from models.weight_layouts import load_checkpoint

IMAGE_HISTS = 'image_hists.npy'   # in a cell folder: (images, classes, classes) int64


SINGLE_CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device('cpu'))


def load_cell(cell):
    """(model of the cell's last checkpoint, the cell's saved config, its test split) as val.py
    evaluates them."""
    run = rd.run_dir(cell.folder, cell.mode)
    cfg = load_config(rd.run_file(run, rd.CONFIG_FILE))
    spec = RunSpec.for_evaluation(cell.mode)
    model = spec.build_model(cfg)
    load_checkpoint(model, rd.checkpoint_path(run, rd.LAST), mmap=True)
    return model, cfg, spec.dataset(cfg, 'val', EvalTransform(cfg))


def image_hists(cell) -> numpy.ndarray:
    """The cell's per-image confusion matrices of its last checkpoint (cached in its folder)."""
    path = os.path.join(cell.folder, IMAGE_HISTS)
    if os.path.isfile(path):
        return numpy.load(path)
    model, cfg, dataset = load_cell(cell)
    metrics = evaluate(model, cfg, SINGLE_CPU, dataset, progress=False, per_image=True)
    hists = metrics['image_hists'].numpy()
    numpy.save(path, hists)
    return hists
