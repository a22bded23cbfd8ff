"""Per-image confusion matrices of a cell's last checkpoint, for the bootstrap over the test images.

They are computed once, in this process, with the evaluation val.py runs (the cell's saved config,
its eval_mode, scales and flip), and kept in the cell folder."""
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


def image_hists(cell) -> numpy.ndarray:
    """The cell's per-image confusion matrices of its last checkpoint (cached in its folder)."""
    path = os.path.join(cell.folder, IMAGE_HISTS)
    if os.path.isfile(path):
        return numpy.load(path)
    run = rd.run_dir(cell.folder, cell.mode)
    cfg = load_config(rd.run_file(run, rd.CONFIG_FILE))
    spec = RunSpec.for_evaluation(cell.mode)
    model = spec.build_model(cfg)
    load_checkpoint(model, rd.checkpoint_path(run, rd.LAST), mmap=True)
    dataset = spec.dataset(cfg, 'val', EvalTransform(cfg))
    single = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device('cpu'))
    metrics = evaluate(model, cfg, single, dataset, progress=False, per_image=True)
    hists = metrics['image_hists'].numpy()
    numpy.save(path, hists)
    return hists
