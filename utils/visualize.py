"""Colour visualisation of label maps.

The palette is the PASCAL VOC colour map that the CMX/PrimKD code uses for NYU Depth V2 and SUN-RGBD
(`get_class_colors`): entry i spreads the bits of i over the high bits of R, G and B, so the first
entries are far apart and every index below 2**24 has its own colour. It is indexed by the label
PNG convention of the datasets: 0 = unlabeled (black), 1..C = classes 0..C-1. (The official
evaluation colours prediction c with entry c, which paints the first class black; here black stays
reserved for unlabeled pixels, so ground truth and prediction images read the same way.)
"""
import cv2
import numpy as np
import torch

SEPARATOR_WIDTH = 15  # black bar between the panels of a side-by-side image, as the official tool
OVERLAY_ALPHA = 0.5   # weight of the palette colours over the photo
LEGEND_ROW = 24       # pixels per legend entry
LEGEND_WIDTH = 320
DEPTH_RANGE_PERCENTILES = (1, 99)  # the depth colour map spans these, so outliers do not flatten it


def label_colormap(num_entries: int) -> np.ndarray:
    """(num_entries, 3) uint8 RGB colours; entry 0 is black."""
    index = np.arange(num_entries, dtype=np.int64)
    colours = np.zeros((num_entries, 3), dtype=np.int64)
    for bit in range(8):
        for channel in range(3):
            colours[:, channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
    return colours.astype(np.uint8)


def colorize(label_png: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W) map in the label PNG convention (0 = unlabeled, 1..num_classes) -> (H, W, 3) uint8 RGB."""
    return label_colormap(num_classes + 1)[label_png]


def to_label_png(label: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """Class indices 0..C-1 (ignore_index for unlabeled) -> the dataset convention 0 = unlabeled,
    1..C = classes, uint8 when it fits, else uint16."""
    label = np.asarray(label).astype(np.int64)
    png = np.where(label == ignore_index, 0, label + 1)
    return png.astype(np.uint8 if png.max(initial=0) <= 255 else np.uint16)


def denormalize(image: torch.Tensor, mean, std, channel_order: str) -> np.ndarray:
    """A normalised (3, H, W) network input back to (H, W, 3) uint8 RGB for display."""
    mean = torch.as_tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32).view(3, 1, 1)
    pixels = ((image.detach().float().cpu() * std + mean) * 255).round().clamp(0, 255)
    pixels = pixels.to(torch.uint8).permute(1, 2, 0).numpy()
    return pixels[..., ::-1] if channel_order == 'bgr' else pixels


def hstack_panels(*panels: np.ndarray) -> np.ndarray:
    """(H, W_i, 3) uint8 images joined left to right with black bars between them."""
    bar = np.zeros((panels[0].shape[0], SEPARATOR_WIDTH, 3), dtype=np.uint8)
    pieces = []
    for panel in panels:
        pieces += [panel, bar]
    return np.concatenate(pieces[:-1], axis=1)


def overlay(rgb: np.ndarray, colour: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """(H, W, 3) uint8: the palette image `colour` blended over the photo `rgb` with weight alpha."""
    blended = (1 - alpha) * rgb.astype(np.float32) + alpha * colour.astype(np.float32)
    return np.rint(blended).astype(np.uint8)


def depth_colormap(depth_m: np.ndarray) -> np.ndarray:
    """(H, W) depth in metres -> (H, W, 3) uint8 RGB (turbo colour map, near = red, far = blue;
    holes, depth 0, black)."""
    valid = depth_m > 0
    image = np.zeros(depth_m.shape + (3,), dtype=np.uint8)
    if not valid.any():
        return image
    near, far = np.percentile(depth_m[valid], DEPTH_RANGE_PERCENTILES)
    nearness = np.clip((far - depth_m) / max(far - near, 1e-6), 0.0, 1.0)
    coloured = cv2.applyColorMap(np.rint(nearness * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    image[valid] = coloured[..., ::-1][valid]
    return image


def legend(classes, class_names, num_classes: int) -> np.ndarray:
    """(rows x LEGEND_ROW, LEGEND_WIDTH, 3) uint8 RGB: one row per class index in `classes`
    (0..C-1), its palette colour (colorize's, label PNG value index + 1) and its name."""
    colours = label_colormap(num_classes + 1)
    image = np.full((max(len(classes), 1) * LEGEND_ROW, LEGEND_WIDTH, 3), 255, dtype=np.uint8)
    for row, index in enumerate(classes):
        top = row * LEGEND_ROW
        image[top + 3:top + LEGEND_ROW - 3, 4:4 + 2 * LEGEND_ROW] = colours[index + 1]
        cv2.putText(image, f'{index + 1} {class_names[index]}', (12 + 2 * LEGEND_ROW, top + 17),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return image
