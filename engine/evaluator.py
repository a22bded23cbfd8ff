"""Evaluation of a segmentation model on the validation split: sliding-window or whole-image
inference, multi-scale and flip averaging, one confusion matrix summed over processes.

Inference of one image (as the official evaluator, with its deviations listed):

* Sliding window (official `scale_process_rgbX`): an image that fits the crop in either direction is
  run once, zero-padded (after normalisation) to at least the crop size with the padding split
  evenly (the odd pixel at the bottom / right), and the padding is cut off the logits. Otherwise
  windows of the crop size start every ceil(crop * stride_rate) pixels along each axis, the last
  one moved back to end at the border (ceil((size - crop) / stride) + 1 windows per axis); the
  windows of an image go through the network in batches of at most `max_batch` (config key
  eval_max_batch, which bounds the memory of multi-scale + flip), and each pixel gets the mean of the
  logits of the windows covering it. The official code sums exp(logits) without dividing by the
  count, and swaps the height and width of crop and stride when placing windows (harmless only for
  square crops); neither is reproduced.
* Multi-scale and flip: the input is resized (bilinear) to each scale, the logits of it and of its
  horizontal mirror (flipped back) are turned into softmax probabilities, resized (bilinear) to the
  original size and averaged; the prediction is the arg-max. The official code adds
  exp(logits + flipped logits) over scales, which has the same arg-max for one scale without flip
  (the released single-scale figures) and differs slightly otherwise.

With several processes (torchrun), process r evaluates images r, r + world_size, ...; each image is
counted once, and the confusion matrices are summed with one all-reduce at the end.
"""
import math
import os
import time
from typing import Optional

import cv2
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from utils.metrics import confusion_matrix, segmentation_metrics
from utils.modules import unwrap_model
from utils.visualize import colorize, denormalize, hstack_panels, to_label_png

from .amp import AMP_DTYPES, autocast, resolve_amp
from .distributed import DistInfo, all_reduce_sum

def run_network(model, rgb: torch.Tensor, extra, max_batch: Optional[int] = None) -> torch.Tensor:
    """Float32 logits of a batch, run `max_batch` images at a time (all at once for None); `extra`
    is None where the data has no extra modality. In eval mode the split does not change the result."""
    step = max_batch or rgb.shape[0]
    logits = []
    for start in range(0, rgb.shape[0], step):
        chunk = slice(start, start + step)
        out = model(rgb[chunk], None if extra is None else extra[chunk])
        logits.append(out.logits.float())
    return torch.cat(logits) if len(logits) > 1 else logits[0]


def window_starts(size: int, crop: int, stride: int) -> list:
    """Start offsets of the windows along one axis: every `stride` pixels, the last one moved back
    so that it ends at `size`."""
    count = math.ceil((size - crop) / stride) + 1
    return [min(i * stride, size - crop) for i in range(count)]


def _pad_to(image: torch.Tensor, height: int, width: int):
    """Zero padding to at least (height, width), split evenly (the odd pixel at the bottom/right)."""
    pad_h = max(height - image.shape[-2], 0)
    pad_w = max(width - image.shape[-1], 0)
    top, left = pad_h // 2, pad_w // 2
    return F.pad(image, (left, pad_w - left, top, pad_h - top)), (top, left)


def sliding_window_logits(model, rgb: torch.Tensor, extra, crop_size, stride_rate: float,
                          max_batch: Optional[int] = None):
    """(N, K, H, W) logits of (N, 3, H, W) inputs stitched from crop-size windows (see module doc)."""
    height, width = rgb.shape[-2:]
    crop_h, crop_w = crop_size
    if height <= crop_h or width <= crop_w:
        padded_rgb, (top, left) = _pad_to(rgb, crop_h, crop_w)
        padded_extra = None if extra is None else _pad_to(extra, crop_h, crop_w)[0]
        logits = run_network(model, padded_rgb, padded_extra, max_batch)
        return logits[..., top:top + height, left:left + width]

    windows = [(y, x)
               for y in window_starts(height, crop_h, math.ceil(crop_h * stride_rate))
               for x in window_starts(width, crop_w, math.ceil(crop_w * stride_rate))]

    def cut(image):
        return torch.cat([image[..., y:y + crop_h, x:x + crop_w] for y, x in windows])

    logits = run_network(model, cut(rgb), None if extra is None else cut(extra), max_batch)
    batch = rgb.shape[0]
    summed = logits.new_zeros(batch, logits.shape[1], height, width)
    count = logits.new_zeros(1, 1, height, width)
    for i, (y, x) in enumerate(windows):
        summed[..., y:y + crop_h, x:x + crop_w] += logits[i * batch:(i + 1) * batch]
        count[..., y:y + crop_h, x:x + crop_w] += 1
    return summed / count


def predict_probabilities(model, rgb: torch.Tensor, extra, *, eval_mode: str, scales, flip: bool,
                          crop_size, stride_rate: float, max_batch: Optional[int] = None) -> torch.Tensor:
    """(N, K, H, W) softmax probabilities averaged over scales and flips (see module doc)."""
    if eval_mode not in ('sliding', 'whole'):
        raise ValueError(f"eval_mode must be 'sliding' or 'whole', got {eval_mode!r}")
    batch, _, height, width = rgb.shape
    views = 2 if flip else 1

    def prepare(image, size):
        if image is None:
            return None
        if size != (height, width):
            image = F.interpolate(image, size=size, mode='bilinear', align_corners=False)
        return torch.cat([image, image.flip(-1)]) if flip else image

    total = 0
    for scale in scales:
        size = (round(height * scale), round(width * scale))
        scaled_rgb, scaled_extra = prepare(rgb, size), prepare(extra, size)
        if eval_mode == 'sliding':
            logits = sliding_window_logits(model, scaled_rgb, scaled_extra, crop_size, stride_rate,
                                           max_batch)
        else:
            logits = run_network(model, scaled_rgb, scaled_extra, max_batch)
        if flip:
            logits = torch.cat([logits[:batch], logits[batch:].flip(-1)])
        probabilities = logits.softmax(dim=1)
        if size != (height, width):
            probabilities = F.interpolate(probabilities, size=(height, width), mode='bilinear',
                                          align_corners=False)
        total = total + probabilities.reshape(views, batch, *probabilities.shape[1:]).sum(dim=0)
    return total / (len(scales) * views)


PREDICTION_FOLDERS = ('pred', 'color')   # the sub-folders of a save_path that hold predictions


def saved_predictions(save_path: str) -> list:
    """The prediction files a save_path holds already."""
    return [name for folder in PREDICTION_FOLDERS if os.path.isdir(os.path.join(save_path, folder))
            for name in os.listdir(os.path.join(save_path, folder))]


def _save_prediction(save_path: str, name: str, pred, item: dict, cfg, with_inputs: bool):
    """DIR/pred/NAME.png in the label PNG convention (pred + 1; 0 = unlabeled) and DIR/color/NAME.png
    (optionally input | prediction | ground truth)."""
    pred_png = to_label_png(pred.cpu().numpy(), cfg.background)
    colour = colorize(pred_png, cfg.num_classes)
    if with_inputs:
        rgb = denormalize(item['rgb'][0], cfg.norm_mean, cfg.norm_std, cfg.channel_order)
        truth = colorize(to_label_png(item['label'][0].numpy(), cfg.background), cfg.num_classes)
        colour = hstack_panels(rgb, colour, truth)
    for folder, image in zip(PREDICTION_FOLDERS, (pred_png, colour[..., ::-1])):  # cv2 writes BGR
        path = os.path.join(save_path, folder, name + '.png')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not cv2.imwrite(path, image):
            raise OSError(f"could not write '{path}'")


def evaluate(model, cfg, dist_info: DistInfo, dataset, *, eval_mode=None, scales=None, flip=None,
             save_path=None, amp='none', progress=True, side_by_side=False, per_image=False) -> dict:
    """Metrics of `model` on `dataset` (an RGBXDataset-like sequence of items; the model gets the
    items' 'extra' where they have one).

    eval_mode / scales / flip default to cfg.eval_mode / eval_scale_array / eval_flip. The model may be in
    train mode, wrapped in DDP or compiled: it is evaluated in eval mode and its mode restored.
    Every process must call this. Returns segmentation_metrics(hist) plus 'hist' (CPU int64),
    'num_images' (all processes) and 'seconds'; with `per_image` (one process only) also
    'image_hists', one confusion matrix per image in dataset order, for resampling the test images."""
    if per_image and dist_info.distributed:
        raise ValueError('per-image confusion matrices are collected by one process only')
    eval_mode = cfg.eval_mode if eval_mode is None else eval_mode
    scales = list(cfg.eval_scale_array if scales is None else scales)
    flip = cfg.eval_flip if flip is None else flip
    device = dist_info.device
    dtype = AMP_DTYPES[resolve_amp(amp, device)]
    # Evaluation needs no gradient synchronisation, and compiled graphs would be rebuilt for every
    # new window or scale size: run the plain network.
    network = unwrap_model(model)
    was_training = network.training
    network.eval()

    shard = Subset(dataset, range(dist_info.rank, len(dataset), dist_info.world_size))
    # A generator of its own: every DataLoader iterator draws a base seed, which from the global
    # generator would shift the training randomness of the epochs after a validation.
    loader = DataLoader(shard, batch_size=1, shuffle=False, num_workers=cfg.num_workers,
                        pin_memory=device.type == 'cuda', generator=torch.Generator())
    hist = torch.zeros(cfg.num_classes, cfg.num_classes, dtype=torch.int64, device=device)
    image_hists = []
    bar = tqdm(total=len(shard), unit='img', dynamic_ncols=True, leave=False,
               desc=f'eval (rank 0 of {dist_info.world_size})' if dist_info.distributed
               else 'eval', disable=not (progress and dist_info.is_main))
    start = time.perf_counter()
    try:
        with torch.inference_mode(), autocast(device, dtype):
            for item in loader:
                rgb = item['rgb'].to(device, non_blocking=True)
                extra = item['extra'].to(device, non_blocking=True) if 'extra' in item else None
                label = item['label'].to(device, non_blocking=True)
                probabilities = predict_probabilities(
                    network, rgb, extra, eval_mode=eval_mode, scales=scales, flip=flip,
                    crop_size=cfg.eval_crop_size, stride_rate=cfg.eval_stride_rate,
                    max_batch=cfg.eval_max_batch)
                pred = probabilities.argmax(dim=1)
                image_hist = confusion_matrix(pred, label, cfg.num_classes, cfg.background)
                hist += image_hist
                if per_image:
                    image_hists.append(image_hist.cpu())
                if save_path is not None:
                    _save_prediction(save_path, item['name'][0], pred[0], item, cfg, side_by_side)
                bar.update()
    finally:
        bar.close()
        network.train(was_training)
    hist = all_reduce_sum(hist)
    metrics = segmentation_metrics(hist)
    metrics.update(hist=hist.cpu(), num_images=len(dataset), seconds=time.perf_counter() - start)
    if per_image:
        metrics['image_hists'] = torch.stack(image_hists)
    return metrics
