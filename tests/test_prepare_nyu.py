"""tools/prepare_nyu.py on a small release written in the official stored (transposed) layout."""
import importlib.util
import os
import subprocess
import sys

import cv2
import h5py
import numpy as np
import pytest
import scipy.io

from config import REPO_ROOT
from utils.hha import NYU_CAMERA, depth_to_hha

TOOL = os.path.join(REPO_ROOT, 'tools', 'prepare_nyu.py')
COUNT, HEIGHT, WIDTH = 5, 48, 64
TRAIN, TEST = [4, 1, 3], [5, 2]                      # 1-based, as in splits.mat


def load_tool():
    spec = importlib.util.spec_from_file_location('prepare_nyu', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_release(folder):
    """Arrays as MATLAB sees them (H x W per image) and the three input files, stored as the
    release stores them: a MATLAB array of size H x W x 3 x N appears in HDF5 as N x 3 x W x H."""
    rng = np.random.default_rng(0)
    rows, columns = np.mgrid[0:HEIGHT, 0:WIDTH]
    rgb = np.stack([np.stack([(rows * 4 + 40 * i) % 256, (columns * 3) % 256,
                              np.full_like(rows, 50 * i)], -1) for i in range(COUNT)]).astype(np.uint8)
    depth = 1.0 + rows / HEIGHT + columns / WIDTH + 0.3 * np.arange(COUNT)[:, None, None]
    depth = depth.astype(np.float32)
    raw_depth = depth.copy()
    raw_depth[:, :5, :7] = 0                         # holes of the raw sensor depth
    blocks = rng.integers(0, 895, (COUNT, HEIGHT // 8, WIDTH // 8))
    labels = np.kron(blocks, np.ones((1, 8, 8), np.int64)).astype(np.uint16)
    labels[:, 0, 0] = 894
    labels[:, 0, 1] = 0
    mapping = rng.integers(1, 41, 894)

    mat = os.path.join(folder, 'nyu_depth_v2_labeled.mat')
    with h5py.File(mat, 'w') as f:
        f['images'] = rgb.transpose(0, 3, 2, 1)
        f['depths'] = depth.transpose(0, 2, 1)
        f['rawDepths'] = raw_depth.transpose(0, 2, 1)
        f['labels'] = labels.transpose(0, 2, 1)
    splits = os.path.join(folder, 'splits.mat')
    scipy.io.savemat(splits, {'trainNdxs': np.array(TRAIN, float)[:, None],
                              'testNdxs': np.array(TEST, float)[:, None]})
    mapping_file = os.path.join(folder, 'classMapping40.mat')
    scipy.io.savemat(mapping_file, {'mapClass': mapping[None, :].astype(float)})
    return dict(rgb=rgb, depth=depth, raw_depth=raw_depth, labels=labels, mapping=mapping,
                mat=mat, splits=splits, mapping_file=mapping_file)


def run_tool(release, out, *extra):
    command = [sys.executable, TOOL, '--mat', release['mat'], '--splits', release['splits'],
               '--mapping', release['mapping_file'], '--out', out, *extra]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp('nyu'))
    release = make_release(folder)
    out = os.path.join(folder, 'out')
    first = run_tool(release, out, '--workers', '2')
    assert first.returncode == 0, first.stderr
    return release, out, first


@pytest.mark.integration
def test_outputs_equal_the_arrays_they_came_from(converted):
    release, out, _ = converted
    for index in range(1, COUNT + 1):
        name = f'{index:04d}'
        i = index - 1
        rgb = cv2.imread(os.path.join(out, 'RGB', name + '.jpg'))[..., ::-1]
        assert rgb.shape == (HEIGHT, WIDTH, 3)
        assert np.abs(rgb.astype(int) - release['rgb'][i]).mean() < 3
        depth = cv2.imread(os.path.join(out, 'Depth', name + '.png'), cv2.IMREAD_UNCHANGED)
        assert depth.dtype == np.uint16
        np.testing.assert_array_equal(depth, np.rint(release['depth'][i].astype(np.float64) * 1000))
        label = cv2.imread(os.path.join(out, 'Label', name + '.png'), cv2.IMREAD_UNCHANGED)
        lookup = np.concatenate([[0], release['mapping']])
        np.testing.assert_array_equal(label, lookup[release['labels'][i]])
        assert label[0, 1] == 0 and label[0, 0] == release['mapping'][893]
        hha = cv2.imread(os.path.join(out, 'HHA', name + '.jpg'))[..., ::-1]
        expected = depth_to_hha(release['depth'][i].astype(np.float64), camera=NYU_CAMERA)
        assert np.abs(hha.astype(int) - expected).mean() < 3


@pytest.mark.integration
def test_raw_mask_leaves_the_sensor_holes_out_of_the_hha(converted, tmp_path):
    release, plain_out, _ = converted
    out = str(tmp_path / 'masked')
    result = run_tool(release, out, '--workers', '1', '--raw-mask')
    assert result.returncode == 0, result.stderr
    hha = cv2.imread(os.path.join(out, 'HHA', '0001.jpg'))[..., ::-1].astype(int)
    plain = cv2.imread(os.path.join(plain_out, 'HHA', '0001.jpg'))[..., ::-1].astype(int)
    masked = depth_to_hha(release['depth'][0].astype(np.float64), missing=release['raw_depth'][0] == 0,
                          camera=NYU_CAMERA)
    assert np.abs(hha - masked).mean() < 3
    assert np.abs(hha[:5, :7, 2] - plain[:5, :7, 2]).mean() > 10  # the holes' angles changed


@pytest.mark.integration
def test_split_files_hold_bare_names_in_splits_order(converted):
    _, out, _ = converted
    with open(os.path.join(out, 'train.txt')) as f:
        assert f.read().split('\n') == ['0004', '0001', '0003', '']
    with open(os.path.join(out, 'test.txt')) as f:
        assert f.read().split() == ['0005', '0002']


@pytest.mark.integration
def test_second_run_skips_written_items(converted):
    release, out, first = converted
    assert '0 already written, 5 to convert' in first.stdout
    label = os.path.join(out, 'Label', '0002.png')
    before = os.stat(label).st_mtime_ns
    os.remove(os.path.join(out, 'HHA', '0003.jpg'))
    second = run_tool(release, out, '--workers', '1')
    assert second.returncode == 0, second.stderr
    assert '4 already written, 1 to convert' in second.stdout
    assert os.stat(label).st_mtime_ns == before
    assert os.path.isfile(os.path.join(out, 'HHA', '0003.jpg'))
    assert not [n for folder in ('RGB', 'Depth', 'HHA', 'Label')
                for n in os.listdir(os.path.join(out, folder)) if '.tmp' in n]


@pytest.mark.integration
def test_bad_inputs_are_named(tmp_path):
    tool = load_tool()
    release = make_release(str(tmp_path))
    with pytest.raises(tool.ConversionError, match="has no variable 'mapClass'"):
        tool.check_mapping(release['splits'])
    with pytest.raises(tool.ConversionError, match='does not exist'):
        tool.check_release(str(tmp_path / 'absent.mat'))
    with pytest.raises(tool.ConversionError, match='not an HDF5'):
        tool.check_release(release['splits'])
    with pytest.raises(tool.ConversionError, match=r"'trainNdxs' must hold 1-based image indices in 1\.\.3"):
        tool.check_splits(release['splits'], count=3)
    with h5py.File(release['mat'], 'a') as f:
        del f['rawDepths']
    result = run_tool(release, str(tmp_path / 'out'))
    assert result.returncode != 0
    assert "lacks the arrays ['rawDepths']" in result.stderr and release['mat'] in result.stderr
