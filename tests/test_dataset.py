"""RGBXDataset on small datasets written in the official layout, its checks of bad input, and the
training loader (sampler partition over ranks, epochs, worker independence)."""
import os

import cv2
import numpy as np
import pytest
import torch

from config import REPO_ROOT, ConfigError, load_config
from dataloader.dataset import DatasetError, RGBXDataset, resolve_split_sizes
from dataloader.loader import EpochSampler, build_train_loader
from engine.distributed import DistInfo

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
# One BGR colour per raw label value 0..8 (0 = unlabeled); the extra modality gets another palette.
PALETTE = np.array([[0, 0, 0], [200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30],
                    [200, 30, 200], [30, 200, 200], [120, 60, 250], [250, 250, 250]], np.uint8)
PALETTE_EXTRA = np.roll(PALETTE, 4, axis=0)[:, [1, 2, 0]].copy()
HEIGHT, WIDTH = 48, 64
CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device('cpu'))


def raw_label(seed, classes=9, block=8):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, classes, (HEIGHT // block, WIDTH // block)).astype(np.uint8)
    return np.kron(coarse, np.ones((block, block), np.uint8))


def write_item(root, name, label, rgb=None, extra=None):
    for folder in ('RGB', 'HHA', 'Label'):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    rgb = PALETTE[label % 9] if rgb is None else rgb
    extra = PALETTE_EXTRA[label % 9] if extra is None else extra
    cv2.imwrite(os.path.join(root, 'RGB', name + '.png'), rgb)
    cv2.imwrite(os.path.join(root, 'HHA', name + '.png'), extra)
    cv2.imwrite(os.path.join(root, 'Label', name + '.png'), label)


def write_split(root, filename, lines):
    with open(os.path.join(root, filename), 'w') as f:
        f.write('\n'.join(lines) + '\n')


def make_dataset(root, count=5):
    """`count` items with raw labels 0..8; train.txt in the official two-path format with blank
    lines, test.txt with bare names. Returns {name: raw label}."""
    labels = {f'{i:04d}': raw_label(i) for i in range(1, count + 1)}
    for name, label in labels.items():
        write_item(root, name, label)
    write_split(root, 'train.txt', [f'RGB/{n}.jpg Label/{n}.png' for n in labels] + ['', '  '])
    write_split(root, 'test.txt', ['', *labels])
    return labels


def make_cfg(root, **overrides):
    settings = dict(dataset_path=str(root), rgb_format='.png', x_format='.png', image_height=HEIGHT,
                    image_width=WIDTH, batch_size=4, niters_per_epoch=3, num_workers=0, num_train_imgs=None,
                    num_eval_imgs=None)
    settings.update(overrides)
    return load_config(os.path.join(REPO_ROOT, 'config', 'demo.py'), settings)


def decode(tensor):
    return (tensor.numpy().transpose(1, 2, 0).astype(np.float64) * STD + MEAN) * 255


@pytest.fixture
def dataset_root(tmp_path):
    root = tmp_path / 'data'
    return root, make_dataset(str(root))


def test_both_split_formats_load(dataset_root):
    root, labels = dataset_root
    cfg = make_cfg(root)
    assert RGBXDataset(cfg, 'train').names == list(labels)
    assert RGBXDataset(cfg, 'val').names == list(labels)


def test_label_transform_shifts_classes_and_ignores_unlabeled(dataset_root):
    root, labels = dataset_root
    dataset = RGBXDataset(make_cfg(root), 'val')
    item = dataset[2]
    raw = labels[item['name']].astype(np.int64)
    expected = np.where(raw == 0, 255, raw - 1)
    assert (raw == 0).any()
    np.testing.assert_array_equal(item['label'].numpy(), expected)

    untransformed = RGBXDataset(make_cfg(root, gt_transform=False, num_classes=9,
                                         class_names=[str(i) for i in range(9)]), 'val')
    np.testing.assert_array_equal(untransformed[2]['label'].numpy(), raw)


@pytest.mark.parametrize('channel_order', ['bgr', 'rgb'])
def test_channel_order_of_rgb_and_extra(dataset_root, channel_order):
    root, labels = dataset_root
    item = RGBXDataset(make_cfg(root, channel_order=channel_order), 'val')[0]
    raw = labels[item['name']]
    # The files hold PALETTE colours as OpenCV's BGR arrays.
    order = slice(None) if channel_order == 'bgr' else slice(None, None, -1)
    np.testing.assert_allclose(decode(item['rgb']), PALETTE[raw][..., order], atol=1e-3)
    np.testing.assert_allclose(decode(item['extra']), PALETTE_EXTRA[raw][..., order], atol=1e-3)


@pytest.mark.parametrize('index_seed', [(0, 1), (3, 2), (7, 3), (11, 4), (5, 5), (9, 6)])
def test_training_items_keep_rgb_extra_and_label_aligned(tmp_path, index_seed):
    root = tmp_path / 'data'
    labels = make_dataset(str(root))
    cfg = make_cfg(root, channel_order='rgb', train_scale_array=[0.5, 0.75, 1.25, 1.75],
                   image_height=56, image_width=56)
    item = RGBXDataset(cfg, 'train')[index_seed]
    label = item['label'].numpy()
    assert label.shape == (56, 56)
    raw = np.where(label == 255, 0, label + 1)          # back to the file's values
    bordered = cv2.copyMakeBorder(label.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=254)
    kernel = np.ones((3, 3), np.uint8)
    check = (cv2.dilate(bordered, kernel) == cv2.erode(bordered, kernel))[1:-1, 1:-1] & (label != 255)
    assert check.sum() > 100
    rgb_order = [2, 1, 0]                                  # channel_order 'rgb'
    np.testing.assert_allclose(decode(item['rgb'])[check], PALETTE[raw[check]][:, rgb_order],
                               atol=0.01)
    np.testing.assert_allclose(decode(item['extra'])[check],
                               PALETTE_EXTRA[raw[check]][:, rgb_order], atol=0.01)
    # Whatever the crop, the label's classes come from this item's file.
    assert set(np.unique(raw[label != 255])) <= set(np.unique(labels[item['name']]))


def test_padding_is_ignore_in_the_label_and_zero_in_the_images(dataset_root):
    root, _ = dataset_root
    cfg = make_cfg(root, train_scale_array=[0.5], image_height=HEIGHT, image_width=WIDTH)
    item = RGBXDataset(cfg, 'train')[(0, 0)]
    pad = np.ones((HEIGHT, WIDTH), bool)
    pad[12:36, 16:48] = False          # the 24x32 scaled image, centred
    assert (item['label'].numpy()[pad] == 255).all()
    assert (item['rgb'].numpy()[:, pad] == 0).all() and (item['extra'].numpy()[:, pad] == 0).all()
    assert (item['rgb'].numpy()[:, ~pad] != 0).any()


def test_same_index_and_seed_give_identical_tensors(dataset_root):
    root, _ = dataset_root
    dataset = RGBXDataset(make_cfg(root, train_scale_array=[0.75, 1, 1.25], image_height=40,
                                   image_width=40), 'train')
    first, again = dataset[(4, 123)], dataset[(4, 123)]
    for key in ('rgb', 'extra', 'label'):
        assert torch.equal(first[key], again[key])
    assert any(not torch.equal(first['rgb'], dataset[(4, seed)]['rgb']) for seed in range(5))


def test_training_epoch_repeats_names_as_the_official_code(dataset_root):
    root, labels = dataset_root
    dataset = RGBXDataset(make_cfg(root, batch_size=4, niters_per_epoch=3), 'train')
    assert len(dataset) == 12                              # 3 iterations x 4
    counts = [dataset.items.count(name) for name in labels]
    assert sorted(counts) == [2, 2, 2, 3, 3]               # 12 = 2 x 5 + 2 drawn without repeats
    assert dataset.items[:10] == list(labels) * 2
    assert RGBXDataset(make_cfg(root), 'train').items == dataset.items   # a function of cfg.seed
    remainders = {tuple(RGBXDataset(make_cfg(root, seed=s), 'train').items[10:]) for s in range(6)}
    assert len(remainders) > 1


def test_single_channel_extra_is_replicated_and_16_bit_depth_scaled(tmp_path):
    root = str(tmp_path / 'data')
    label = raw_label(0)
    write_item(root, 'a', label)
    write_item(root, 'b', label)
    grey = np.tile(np.arange(WIDTH, dtype=np.uint8) * 3, (HEIGHT, 1))
    cv2.imwrite(os.path.join(root, 'HHA', 'a.png'), grey)
    depth_mm = np.full((HEIGHT, WIDTH), 4000, np.uint16)
    depth_mm[:, :10] = 20000                               # beyond 10 m: clipped
    cv2.imwrite(os.path.join(root, 'HHA', 'b.png'), depth_mm)
    write_split(root, 'test.txt', ['a', 'b'])
    dataset = RGBXDataset(make_cfg(root, x_is_single_channel=True), 'val')
    extra_a = decode(dataset[0]['extra'])
    for channel in range(3):
        np.testing.assert_allclose(extra_a[..., channel], grey, atol=1e-3)
    extra_b = decode(dataset[1]['extra'])
    np.testing.assert_allclose(extra_b[:, 10:], 102.0, atol=1e-3)   # 4000 mm * 255 / 10000
    np.testing.assert_allclose(extra_b[:, :10], 255.0, atol=1e-3)


# Bad input: one DatasetError naming the offending files.

def test_all_missing_files_are_listed_in_one_error(dataset_root):
    root, _ = dataset_root
    gone = [os.path.join(str(root), 'RGB', '0001.png'), os.path.join(str(root), 'HHA', '0003.png'),
            os.path.join(str(root), 'Label', '0005.png')]
    for path in gone:
        os.remove(path)
    with pytest.raises(DatasetError) as error:
        RGBXDataset(make_cfg(root), 'val')
    message = str(error.value)
    assert 'files named by the split that do not exist (3)' in message
    assert all(path in message for path in gone)


def test_many_missing_files_are_listed_up_to_twenty_with_a_count(tmp_path):
    root = str(tmp_path / 'data')
    write_item(root, 'present', raw_label(0))
    write_split(root, 'test.txt', ['present'] + [f'gone{i:02d}' for i in range(25)])
    with pytest.raises(DatasetError) as error:
        RGBXDataset(make_cfg(root), 'val')
    message = str(error.value)
    assert 'files named by the split that do not exist (75)' in message and '... and 55 more' in message
    assert message.count(': does not exist') == 20
    assert 'present' not in message


def test_unreadable_file_is_named(dataset_root):
    root, _ = dataset_root
    broken = os.path.join(str(root), 'HHA', '0002.png')
    with open(broken, 'wb') as f:
        f.write(b'not a png at all')
    with pytest.raises(DatasetError, match='cannot be read') as error:
        RGBXDataset(make_cfg(root), 'val')
    assert broken in str(error.value)


def test_empty_split_file(dataset_root):
    root, _ = dataset_root
    write_split(str(root), 'test.txt', ['', '   '])
    with pytest.raises(DatasetError, match='is empty') as error:
        RGBXDataset(make_cfg(root), 'val')
    assert os.path.join(str(root), 'test.txt') in str(error.value)


def test_absent_split_file(dataset_root):
    root, _ = dataset_root
    with pytest.raises(DatasetError, match='does not exist') as error:
        RGBXDataset(make_cfg(root, eval_source='val_list.txt'), 'val')
    assert os.path.join(str(root), 'val_list.txt') in str(error.value)


def test_absent_dataset_folder_points_at_the_readme(tmp_path):
    missing = tmp_path / 'nowhere'
    with pytest.raises(DatasetError) as error:
        RGBXDataset(make_cfg(missing), 'train')
    assert str(missing) in str(error.value)
    assert 'docs/data.md' in str(error.value)


def test_size_mismatch_names_the_files(dataset_root):
    root, labels = dataset_root
    small = os.path.join(str(root), 'HHA', '0004.png')
    cv2.imwrite(small, PALETTE_EXTRA[labels['0004'][:40, :60]])
    with pytest.raises(DatasetError) as error:
        RGBXDataset(make_cfg(root), 'val')
    message = str(error.value)
    assert small in message and os.path.join(str(root), 'RGB', '0004.png') in message
    assert '60x40' in message and '64x48' in message


@pytest.mark.parametrize('gt_transform, num_classes', [(True, 8), (False, 9)])
def test_out_of_range_label_names_the_file(dataset_root, gt_transform, num_classes):
    # The files hold 0..8: the largest class with gt_transform (8 classes, 0 = unlabeled) or
    # without it (9 classes 0..8); 9 is out of range either way.
    root, labels = dataset_root
    label = labels['0002'].copy()
    label[0, 0] = 9
    label[1, 1] = 255                                      # ignore: allowed
    path = os.path.join(str(root), 'Label', '0002.png')
    cv2.imwrite(path, label)
    cfg = make_cfg(root, gt_transform=gt_transform, num_classes=num_classes,
                   class_names=[str(i) for i in range(num_classes)])
    with pytest.raises(DatasetError) as error:
        RGBXDataset(cfg, 'val')
    message = str(error.value)
    assert path in message and 'label values [9]' in message
    assert '0001.png' not in message


# The training loader.

def test_loader_length_and_batches(dataset_root):
    root, _ = dataset_root
    loader = build_train_loader(make_cfg(root, batch_size=4, niters_per_epoch=3), CPU)
    batches = list(loader)
    assert len(loader) == 3 and len(batches) == 3
    assert batches[0]['rgb'].shape == (4, 3, HEIGHT, WIDTH) and batches[0]['label'].dtype == torch.int64
    assert len(batches[0]['name']) == 4
    assert isinstance(loader.sampler, EpochSampler)


def test_two_ranks_partition_the_epoch():
    ranks = [list(EpochSampler(24, seed=5, rank=r, world_size=2)) for r in (0, 1)]
    indices = [{index for index, _ in pairs} for pairs in ranks]
    assert len(ranks[0]) == len(ranks[1]) == 12
    assert indices[0].isdisjoint(indices[1])
    assert indices[0] | indices[1] == set(range(24))
    whole = list(EpochSampler(24, seed=5))
    assert sorted(ranks[0] + ranks[1]) == sorted(whole)   # same (index, seed) pairs as one process


def test_per_process_batch_and_divisibility(dataset_root):
    root, _ = dataset_root
    cfg = make_cfg(root, batch_size=4, niters_per_epoch=3)
    rank1 = DistInfo(rank=1, world_size=2, local_rank=1, device=torch.device('cpu'))
    loader = build_train_loader(cfg, rank1)
    assert len(loader) == 3 and next(iter(loader))['rgb'].shape[0] == 2
    with pytest.raises(ConfigError, match='batch_size'):
        build_train_loader(cfg, DistInfo(rank=0, world_size=3, local_rank=0, device=torch.device('cpu')))


def test_set_epoch_changes_the_order_deterministically():
    sampler = EpochSampler(40, seed=1)
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch0 != epoch1
    assert sorted(i for i, _ in epoch0) == sorted(i for i, _ in epoch1) == list(range(40))
    sampler.set_epoch(0)
    assert list(sampler) == epoch0
    other = EpochSampler(40, seed=1)
    other.set_epoch(1)
    assert list(other) == epoch1


def test_same_batches_with_zero_and_two_workers(dataset_root):
    root, _ = dataset_root
    runs = []
    for workers in (0, 2):
        cfg = make_cfg(root, num_workers=workers, train_scale_array=[0.75, 1, 1.25], image_height=40,
                       image_width=40)
        loader = build_train_loader(cfg, CPU)
        loader.set_epoch(2)
        runs.append(list(loader))
    assert len(runs[0]) == len(runs[1]) == 3
    for batch0, batch2 in zip(*runs):
        assert batch0['name'] == batch2['name']
        for key in ('rgb', 'extra', 'label'):
            assert torch.equal(batch0[key], batch2[key])


def test_truncated_jpeg_and_png_files_are_named(dataset_root):
    # OpenCV decodes a JPEG cut in half (grey tail, a warning naming no file): the bytes are checked.
    root, labels = dataset_root
    for name, label in labels.items():
        cv2.imwrite(os.path.join(str(root), 'RGB', name + '.jpg'), PALETTE[label % 9])
    cut_jpeg = os.path.join(str(root), 'RGB', '0002.jpg')
    cut_png = os.path.join(str(root), 'HHA', '0004.png')
    for path, keep in ((cut_jpeg, 0.5), (cut_png, 0.99)):
        with open(path, 'rb') as f:
            data = f.read()
        with open(path, 'wb') as f:
            f.write(data[:int(len(data) * keep)])
    with pytest.raises(DatasetError) as error:
        RGBXDataset(make_cfg(root, rgb_format='.jpg'), 'val')
    message = str(error.value)
    assert 'files that cannot be read (2)' in message
    assert f'{cut_jpeg}: truncated JPEG: it does not end with the end-of-image marker FFD9' in message
    assert f'{cut_png}: truncated PNG: it does not end with the IEND chunk' in message


def test_repeated_names_in_the_evaluation_split_are_an_error(dataset_root):
    root, _ = dataset_root
    write_split(str(root), 'test.txt', ['0001', '0002', '0001', '0003', '0002', '0001'])
    with pytest.raises(DatasetError) as error:
        RGBXDataset(make_cfg(root), 'val')
    message = str(error.value)
    assert 'names listed more than once, which evaluation would count as often (2)' in message
    assert '0001: 3 times' in message and '0002: 2 times' in message and '0003' not in message


def test_repeated_training_names_warn_with_their_count(dataset_root):
    root, _ = dataset_root
    write_split(str(root), 'train.txt', ['0001', '0002', '0001', '0003', '0001'])
    with pytest.warns(UserWarning, match=r"lists 1 name\(s\) more than once \(2 extra line\(s\), "
                                         r"e\.g\. '0001' 3 times\): they are sampled"):
        dataset = RGBXDataset(make_cfg(root), 'train')
    assert dataset.names == ['0001', '0002', '0001', '0003', '0001']


@pytest.mark.parametrize('split, key, source', [('train', 'num_train_imgs', 'train.txt'),
                                                ('val', 'num_eval_imgs', 'test.txt')])
def test_split_size_in_the_config_must_be_the_split_files(dataset_root, split, key, source):
    root, _ = dataset_root
    with pytest.raises(DatasetError, match=f"config key '{key}' is 200, but split file "
                                           f"'{os.path.join(str(root), source)}' lists 5 items: "
                                           f"set {key}=5, or None to take the split file's length"):
        RGBXDataset(make_cfg(root, **{key: 200}), split)


def test_split_size_none_takes_the_split_files_and_the_epoch_derives_from_it(dataset_root):
    root, _ = dataset_root
    cfg = make_cfg(root, niters_per_epoch=None)
    assert cfg.num_train_imgs is None and cfg.niters_per_epoch is None
    assert resolve_split_sizes(cfg) is cfg
    assert (cfg.num_train_imgs, cfg.num_eval_imgs, cfg.niters_per_epoch) == (5, 5, 5 // 4 + 1)
    assert len(RGBXDataset(cfg, 'train')) == 8


@pytest.mark.parametrize('key, source', [('num_train_imgs', 'train.txt'), ('num_eval_imgs', 'test.txt')])
def test_resolving_split_sizes_checks_the_sizes_that_are_set(dataset_root, key, source):
    root, _ = dataset_root
    with pytest.raises(DatasetError, match=f"config key '{key}' is 200, but split file "
                                           f"'{os.path.join(str(root), source)}' lists 5 items"):
        resolve_split_sizes(make_cfg(root, **{key: 200}))


def test_building_a_dataset_leaves_the_config_alone(dataset_root):
    """Split sizes are resolved in one explicit step, never as a side effect of a dataset; a training
    dataset without its epoch length says which step is missing."""
    root, _ = dataset_root
    cfg = make_cfg(root)
    before = dict(cfg)
    RGBXDataset(cfg, 'train'), RGBXDataset(cfg, 'val')
    assert dict(cfg) == before and cfg.num_train_imgs is None and cfg.num_eval_imgs is None
    with pytest.raises(ValueError, match=r"'niters_per_epoch' is None: resolve_split_sizes\(cfg\)"):
        RGBXDataset(make_cfg(root, niters_per_epoch=None), 'train')


def test_evaluation_images_too_small_for_the_network_are_named(dataset_root):
    root, _ = dataset_root
    write_item(str(root), 'tiny', np.ones((10, 12), np.uint8))
    write_split(str(root), 'test.txt', ['0001', 'tiny'])
    with pytest.raises(DatasetError) as error:
        RGBXDataset(make_cfg(root), 'val')
    tiny = os.path.join(str(root), 'RGB', 'tiny.png')
    assert (f"{tiny}: 12x10 (width x height) is too small to evaluate: at scale 1, the smallest of "
            f"eval_scale_array, each side must keep at least 32 pixels") in str(error.value)
    assert '0001' not in str(error.value)
    # 48x64 at scale 0.5 is 24x32.
    write_split(str(root), 'test.txt', ['0001'])
    with pytest.raises(DatasetError, match=r'0001\.png: 64x48 .* at scale 0\.5, the smallest'):
        RGBXDataset(make_cfg(root, eval_scale_array=[1, 0.5]), 'val')
    # Training crops and pads every image to the training size: no minimum there.
    write_split(str(root), 'train.txt', ['0001', 'tiny'])
    assert RGBXDataset(make_cfg(root), 'train').names == ['0001', 'tiny']
