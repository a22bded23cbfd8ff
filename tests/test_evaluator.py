"""engine.evaluator with tiny hand-made networks: sliding-window placement and averaging, flip and
multi-scale averaging (checked against direct computations, multi-scale against OpenCV resizing),
and evaluate() on an in-memory dataset (confusion matrix, train mode restored, saved images)."""
import os
from typing import NamedTuple

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
from easydict import EasyDict

from engine.distributed import DistInfo
from engine.evaluator import (evaluate, predict_probabilities, sliding_window_logits,
                              window_starts)
from utils.metrics import confusion_matrix
from utils.modules import unwrap_model

NUM_CLASSES = 5


class Out(NamedTuple):
    logits: torch.Tensor


class Pointwise(nn.Module):
    """Logits from 1x1 convolutions of rgb (and extra): every output pixel depends on its own input
    pixel only."""

    def __init__(self, num_classes=NUM_CLASSES, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.rgb = nn.Conv2d(3, num_classes, 1)
        self.extra = nn.Conv2d(3, num_classes, 1, bias=False)

    def forward(self, rgb, extra=None):
        logits = self.rgb(rgb)
        return Out(logits if extra is None else logits + self.extra(extra))


class Probe(nn.Module):
    """Non-local: channel 0 is the mean of the input's channel 0 over the whole window, channels 1
    and 2 the row and column index inside the window."""

    def forward(self, rgb, extra=None):
        batch, _, height, width = rgb.shape
        mean = rgb[:, :1].mean(dim=(2, 3), keepdim=True).expand(batch, 1, height, width)
        rows = torch.arange(height, dtype=rgb.dtype).view(1, 1, height, 1).expand(batch, 1, height, width)
        cols = torch.arange(width, dtype=rgb.dtype).view(1, 1, 1, width).expand(batch, 1, height, width)
        return Out(torch.cat([mean, rows, cols], dim=1))


class Shifting(nn.Module):
    """A 1x3 convolution with different left and right weights: not mirror-symmetric."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, NUM_CLASSES, (1, 3), padding=(0, 1))

    def forward(self, rgb, extra=None):
        return Out(self.conv(rgb))


def image(height, width, seed=0, batch=1):
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def test_window_starts_hand_values():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]         # last window moved back to end at 11
    assert window_starts(13, 6, 4) == [0, 4, 7]
    # NYU at scale 1.25 (600 x 800) with the official 480 x 640 crop and stride 2/3
    assert window_starts(600, 480, 320) == [0, 120]
    assert window_starts(800, 640, 427) == [0, 160]


def test_sliding_equals_whole_when_crop_is_the_image():
    model = Probe()
    x = image(8, 12)
    assert torch.equal(sliding_window_logits(model, x, None, (8, 12), 2 / 3), model(x).logits)


@pytest.mark.parametrize('crop', [(4, 6), (5, 5), (3, 12), (12, 16)])
def test_sliding_equals_whole_for_a_pointwise_model(crop):
    model = Pointwise()
    x, extra = image(10, 13, seed=1), image(10, 13, seed=2)
    with torch.no_grad():
        stitched = sliding_window_logits(model, x, extra, crop, 2 / 3)
        whole = model(x, extra).logits
    assert stitched.shape == whole.shape
    torch.testing.assert_close(stitched, whole, rtol=0, atol=1e-6)


def test_sliding_window_placement_and_averaging():
    x = image(10, 13, seed=3)
    stitched = sliding_window_logits(Probe(), x, None, (4, 6), 2 / 3)
    # stride (ceil(4 * 2/3), ceil(6 * 2/3)) = (3, 4); windows written out by hand
    rows, cols = [0, 3, 6], [0, 4, 7]
    pixels = x[0, 0].numpy().astype(np.float64)
    summed = np.zeros((3, 10, 13))
    count = np.zeros((10, 13))
    for y in rows:
        for x0 in cols:
            window = np.s_[y:y + 4, x0:x0 + 6]
            summed[0][window] += pixels[window].mean()
            summed[1][window] += np.arange(4)[:, None]
            summed[2][window] += np.arange(6)[None, :]
            count[window] += 1
    np.testing.assert_allclose(stitched[0].numpy(), summed / count, atol=1e-6)


def test_image_that_fits_in_one_direction_runs_once_padded():
    # 1 x 13 with crop 4 x 6: fits in height, so one pass over the image padded to 4 x 13 with
    # zeros, 1 row above and 2 below (the official split), the padding then cut off.
    x = image(1, 13, seed=4)
    out = sliding_window_logits(Probe(), x, None, (4, 6), 2 / 3)[0]
    assert out.shape == (3, 1, 13)
    torch.testing.assert_close(out[0], torch.full((1, 13), x[0, 0].sum().item() / (4 * 13)))
    assert torch.equal(out[1], torch.ones(1, 13))                  # input row 0 was padded row 1
    assert torch.equal(out[2], torch.arange(13.0).view(1, 13))     # no padding across


def test_flip_is_a_no_op_for_a_pointwise_model():
    model = Pointwise()
    x, extra = image(6, 9, seed=5), image(6, 9, seed=6)
    options = dict(eval_mode='whole', scales=[1.0], crop_size=(6, 9), stride_rate=2 / 3)
    with torch.no_grad():
        flipped = predict_probabilities(model, x, extra, flip=True, **options)
        plain = predict_probabilities(model, x, extra, flip=False, **options)
        direct = model(x, extra).logits.softmax(dim=1)
    torch.testing.assert_close(flipped, plain, rtol=0, atol=1e-6)
    torch.testing.assert_close(plain, direct, rtol=0, atol=1e-7)


def test_flip_averages_probabilities_of_the_mirrored_input():
    model = Shifting()
    x = image(2, 6, seed=7, batch=2)
    with torch.no_grad():
        got = predict_probabilities(model, x, None, eval_mode='whole', scales=[1.0], flip=True,
                                    crop_size=(2, 6), stride_rate=2 / 3)
        plain = model(x).logits.softmax(dim=1)
        mirrored = model(x.flip(-1)).logits.softmax(dim=1).flip(-1)
    assert not torch.allclose(plain, mirrored, atol=1e-3)   # the test can tell the two apart
    torch.testing.assert_close(got, (plain + mirrored) / 2, rtol=0, atol=1e-7)


def test_sliding_with_flip_for_a_pointwise_model_equals_whole():
    model = Pointwise()
    x, extra = image(10, 13, seed=8), image(10, 13, seed=9)
    with torch.no_grad():
        got = predict_probabilities(model, x, extra, eval_mode='sliding', scales=[1.0], flip=True,
                                    crop_size=(4, 6), stride_rate=2 / 3)
        direct = model(x, extra).logits.softmax(dim=1)
    torch.testing.assert_close(got, direct, rtol=0, atol=1e-6)


def numpy_softmax(logits, axis):
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_multiscale_matches_opencv_resizing():
    model = Pointwise()
    x = image(8, 12, seed=10)
    scales = [0.75, 1.0, 1.25]
    with torch.no_grad():
        got = predict_probabilities(model, x, None, eval_mode='whole', scales=scales, flip=False,
                                    crop_size=(8, 12), stride_rate=2 / 3)
    weight = model.rgb.weight.detach().numpy()[:, :, 0, 0].astype(np.float64)
    bias = model.rgb.bias.detach().numpy().astype(np.float64)
    pixels = x[0].numpy().transpose(1, 2, 0)                     # H, W, 3
    expected = np.zeros((8, 12, NUM_CLASSES))
    for s in scales:
        scaled = cv2.resize(pixels, (round(12 * s), round(8 * s)), interpolation=cv2.INTER_LINEAR)
        probabilities = numpy_softmax(scaled.astype(np.float64) @ weight.T + bias, axis=2)
        expected += cv2.resize(probabilities.astype(np.float32), (12, 8), interpolation=cv2.INTER_LINEAR)
    expected /= len(scales)
    np.testing.assert_allclose(got[0].numpy().transpose(1, 2, 0), expected, atol=2e-6)


def test_multiscale_sliding_uses_windows_at_the_scaled_size():
    # At scale 2 a 4 x 6 image becomes 8 x 12, larger than the 4 x 6 crop: the Probe's row index
    # then shows windows of height 4 (values 0..3), not one pass over the whole 8 rows.
    x = image(4, 6, seed=11)
    with torch.no_grad():
        logits = sliding_window_logits(Probe(), torch.nn.functional.interpolate(
            x, size=(8, 12), mode='bilinear', align_corners=False), None, (4, 6), 2 / 3)
    assert logits[0, 1].max().item() == 3.0



class BatchSizes(nn.Module):
    """Records the batch size of every forward pass of the model it wraps."""

    def __init__(self, model):
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, rgb, extra=None):
        self.sizes.append(rgb.shape[0])
        return self.model(rgb, extra)


@pytest.mark.parametrize('max_batch', [1, 3])
def test_windows_in_smaller_batches_give_the_same_probabilities(max_batch):
    x, extra = image(9, 11, seed=5, batch=2), image(9, 11, seed=6, batch=2)
    options = dict(eval_mode='sliding', scales=[0.75, 1.0, 1.5], flip=True, crop_size=(6, 8), stride_rate=2 / 3)
    whole, split = BatchSizes(Shifting()), BatchSizes(Shifting())
    with torch.no_grad():
        expected = predict_probabilities(whole, x, extra, **options)
        actual = predict_probabilities(split, x, extra, max_batch=max_batch, **options)
    assert max(whole.sizes) > max_batch and max(split.sizes) == max_batch
    assert sum(split.sizes) == sum(whole.sizes)
    assert torch.allclose(actual, expected, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- evaluate() on an in-memory set

def tiny_cfg(**changes):
    cfg = EasyDict(num_classes=NUM_CLASSES, class_names=[f'c{i}' for i in range(NUM_CLASSES)],
                   background=255, eval_mode='sliding', eval_scale_array=[1.0], eval_flip=False,
                   eval_crop_size=[6, 8], eval_stride_rate=2 / 3, eval_max_batch=8, num_workers=0,
                   norm_mean=[0.485, 0.456, 0.406], norm_std=[0.229, 0.224, 0.225],
                   channel_order='bgr')
    cfg.update(changes)
    return cfg


def in_memory_dataset(count=4, height=9, width=11):
    generator = torch.Generator().manual_seed(12)
    items = []
    for i in range(count):
        label = torch.randint(0, NUM_CLASSES, (height, width), generator=generator)
        label[0, :3] = 255
        items.append({'rgb': torch.randn(3, height, width, generator=generator),
                      'extra': torch.randn(3, height, width, generator=generator),
                      'label': label, 'name': f'img{i}'})
    return items


CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device('cpu'))


class PointwiseWithNorm(Pointwise):
    """Pointwise logits through BatchNorm and Dropout, so train and eval mode give different
    results and a forward pass in train mode changes the running statistics."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm2d(NUM_CLASSES)
        self.drop = nn.Dropout(0.5)

    def forward(self, rgb, extra=None):
        return Out(self.drop(self.norm(super().forward(rgb, extra).logits)))


def test_evaluate_counts_every_pixel_once_in_eval_mode_and_restores_train_mode():
    model = PointwiseWithNorm()
    with torch.no_grad():
        model.norm.running_mean.uniform_(-1, 1)
        model.norm.running_var.uniform_(0.5, 2)
    model.train()
    running_mean = model.norm.running_mean.clone()
    dataset = in_memory_dataset()
    result = evaluate(model, tiny_cfg(), CPU, dataset, progress=False)
    assert model.training and model.drop.training
    assert torch.equal(model.norm.running_mean, running_mean)

    model.eval()
    expected = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    with torch.no_grad():
        for item in dataset:
            pred = model(item['rgb'][None], item['extra'][None]).logits.argmax(dim=1)[0].numpy()
            label = item['label'].numpy()
            keep = label != 255
            expected += torch.from_numpy(np.bincount(
                NUM_CLASSES * label[keep] + pred[keep], minlength=NUM_CLASSES ** 2)
                .reshape(NUM_CLASSES, NUM_CLASSES))
    assert torch.equal(result['hist'], expected)
    assert result['hist'].sum().item() == 4 * (9 * 11 - 3)
    assert result['num_images'] == 4
    assert 0 <= result['miou'] <= 1


class TeacherProbe(Pointwise):
    """Records how it is called: the teacher gets RGB alone, under inference mode and autocast."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, rgb, extra=None):
        self.calls.append({'extra': extra, 'inference': torch.is_inference_mode_enabled(),
                           'autocast': torch.is_autocast_enabled('cpu')})
        return super().forward(rgb)


def rgb_only(dataset):
    """The items an RGB-only run's dataset yields: no 'extra'."""
    return [{k: v for k, v in item.items() if k != 'extra'} for item in dataset]


def test_evaluate_unwraps_ddp_and_gives_the_teacher_rgb_only(tmp_path):
    dataset = rgb_only(in_memory_dataset(count=2))
    teacher = TeacherProbe()
    torch.distributed.init_process_group('gloo', init_method=f'file://{tmp_path / "store"}',
                                         rank=0, world_size=1)
    try:
        wrapped = nn.parallel.DistributedDataParallel(teacher)
        wrapped.forward = None   # evaluate must call the network inside, not the wrapper
        result = evaluate(wrapped, tiny_cfg(eval_mode='whole'), CPU, dataset, progress=False)
    finally:
        torch.distributed.destroy_process_group()
    assert [call['extra'] for call in teacher.calls] == [None, None]
    assert all(call['inference'] and not call['autocast'] for call in teacher.calls)
    with torch.no_grad():
        expected = sum(confusion_matrix(teacher(item['rgb'][None]).logits.argmax(1)[0],
                                        item['label'], NUM_CLASSES) for item in dataset)
    assert torch.equal(result['hist'], expected)


def test_unwrap_removes_nested_wrappers():
    network = Pointwise()
    assert unwrap_model(torch.compile(nn.DataParallel(network))) is network
    assert unwrap_model(network) is network


@pytest.mark.parametrize('amp, autocast', [('bf16', True), ('none', False), ('auto', False)])
def test_amp_turns_autocast_on(amp, autocast):
    teacher = TeacherProbe()
    evaluate(teacher, tiny_cfg(), CPU, rgb_only(in_memory_dataset(count=1)), amp=amp, progress=False)
    assert teacher.calls and all(call['autocast'] == autocast for call in teacher.calls)


def test_evaluate_saves_label_pngs_and_colour_images(tmp_path):
    dataset = in_memory_dataset(count=3)
    model = Pointwise()
    evaluate(model, tiny_cfg(), CPU, dataset, save_path=str(tmp_path),
             side_by_side=True, progress=False)
    assert sorted(os.listdir(tmp_path / 'pred')) == ['img0.png', 'img1.png', 'img2.png']
    assert sorted(os.listdir(tmp_path / 'color')) == ['img0.png', 'img1.png', 'img2.png']
    saved = cv2.imread(str(tmp_path / 'pred' / 'img1.png'), cv2.IMREAD_UNCHANGED)
    with torch.no_grad():
        pred = model(dataset[1]['rgb'][None], dataset[1]['extra'][None]).logits.argmax(1)[0]
    assert saved.dtype == np.uint8 and np.array_equal(saved, pred.numpy() + 1)
    colour = cv2.imread(str(tmp_path / 'color' / 'img1.png'))
    assert colour.shape == (9, 3 * 11 + 2 * 15, 3)       # input | prediction | ground truth
    # the ground-truth panel shows ignored pixels black
    assert colour[0, 2 * (11 + 15):2 * (11 + 15) + 3].max() == 0
