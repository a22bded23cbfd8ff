"""tools/prepare_sun.py on a miniature SUN RGB-D release: two images per sensor in the release's
folder layout and formats (JPEG images, 16-bit depth PNGs with the bits rotated, intrinsics.txt),
and the toolbox's three MATLAB files as MATLAB writes them (SUNRGBDMeta.mat and allsplit.mat v5,
SUNRGBD2Dseg.mat v7.3 = HDF5 with object references)."""
import os
import shutil
import subprocess
import sys

import cv2
import h5py
import numpy as np
import pytest
import scipy.io

from config import REPO_ROOT, load_config
from dataloader.dataset import check_dataset
from tools import prepare_sun
from utils.hha import depth_to_hha

ORIGINAL_ROOT = '/n/fs/sun3d/data/'
# Image sizes and intrinsics of the four sensors, about a tenth of the real ones.
SENSORS = {'kv1': ((43, 56), (52.05, 52.07, 27.79, 21.51)),
           'kv2': ((53, 73), (52.95, 52.95, 36.5, 26.5)),
           'realsense': ((53, 68), (69.16, 69.16, 36.28, 26.48)),
           'xtion': ((44, 59), (57.03, 57.03, 31.0, 22.5))}
# (folder below SUNRGBD/ as the toolbox writes it, image file stem, split), in SUNRGBDMeta order.
# Folders ending in '/' are the ones whose metadata paths hold '//'.
IMAGES = [('kv2/align_kv2/2014-12-18_14-11-02_260595134347/', '0000009', 'test'),
          ('kv1/NYUdata/NYU0003/', 'NYU0003', 'test'),
          ('xtion/xtion_align_data/2014_12_18_14_22_2/', '0000213', 'test'),
          ('realsense/lg/2014_10_24-09_14_34-1311000073/', '0000047', 'test'),
          ('kv2/kinect2data/000065_2014-05-16_20-14-38_260595134347_rgbf000121-resize', '0000121', 'train'),
          ('kv1/b3dodata/img_0063/', 'img_0063', 'train'),
          ('xtion/sun3ddata/Portland_hotel/Portland_hotel/0000110-000003653244/', '0000110-000003653244',
           'train'),
          ('realsense/sa/2014_10_21-18_19_30-1311000073/', '0000058', 'train')]
# The official split lists the folders in its own order.
TRAIN_ORDER, TEST_ORDER = [6, 4, 7, 5], [3, 0, 2, 1]
WALL_BEYOND_8M = 2                     # this image's wall is 9.5 m away: its depth is cut at 8 m
CAMERA_HEIGHT_M = 1.3
SIDE_WALL_M = 1.5


def rotate_left_3(depth_mm):
    """How the release stores millimetres in its PNGs (the toolbox rotates them back)."""
    value = depth_mm.astype(np.uint32)
    return (((value << 3) | (value >> 13)) & 0xFFFF).astype(np.uint16)


def room_depth_mm(shape, camera, wall_m):
    """Depth in millimetres of a room corner: a floor 1.3 m below the camera, a wall facing it at
    `wall_m` and one on the right at 1.5 m (three planes, so gravity is well defined)."""
    rows = np.arange(1, shape[0] + 1, dtype=np.float64)[:, None] - camera[1, 2]
    columns = np.arange(1, shape[1] + 1, dtype=np.float64)[None, :] - camera[0, 2]
    down, right = np.broadcast_arrays(rows / camera[1, 1], columns / camera[0, 0])
    floor = np.where(down > 0, CAMERA_HEIGHT_M / np.maximum(down, 1e-9), np.inf)
    side = np.where(right > 0, SIDE_WALL_M / np.maximum(right, 1e-9), np.inf)
    return np.rint(np.minimum(np.minimum(floor, side), wall_m) * 1000).astype(np.uint16)


def intrinsics_text(intrinsics, shift):
    """intrinsics.txt of a camera: its matrix row by row."""
    fx, fy, cx, cy = intrinsics
    rows = [[fx + shift, 0, cx + shift / 2], [0, fy + shift, cy - shift / 3], [0, 0, 1]]
    return ''.join(' '.join(f'{v:.6f}' for v in row) + '\n' for row in rows)


def camera_matrix(intrinsics, shift):
    """The matrix that intrinsics.txt holds (as printed there, to the last digit)."""
    return np.array(intrinsics_text(intrinsics, shift).split(), dtype=np.float64).reshape(3, 3)


def write_image_folder(release, position, folder, stem, rng):
    """One image folder of SUNRGBD.zip; returns what the outputs must equal."""
    sensor = folder.split('/')[0]
    shape, intrinsics = SENSORS[sensor]
    camera = camera_matrix(intrinsics, shift=position * 0.7)
    root = os.path.join(release, folder)
    for sub in ('image', 'depth', 'depth_bfx', 'annotation2Dfinal'):
        os.makedirs(os.path.join(root, sub))
    rows, columns = np.mgrid[0:shape[0], 0:shape[1]]
    rgb = np.stack([(rows * 5 + 30 * position) % 256, (columns * 3) % 256,
                    np.full(shape, 20 * position)], -1).astype(np.uint8)
    cv2.imwrite(os.path.join(root, 'image', stem + '.jpg'), rgb)
    depth_mm = room_depth_mm(shape, camera, 9.5 if position == WALL_BEYOND_8M else 4.0 + 0.4 * position)
    depth_mm[-3:, :4] = 0                                     # the in-filling leaves some holes
    raw = depth_mm.copy()
    raw[:10, :12] = 0                                         # the raw sensor depth has more
    cv2.imwrite(os.path.join(root, 'depth_bfx', stem + '.png'), rotate_left_3(depth_mm))
    cv2.imwrite(os.path.join(root, 'depth', stem + '.png'), rotate_left_3(raw))
    with open(os.path.join(root, 'intrinsics.txt'), 'w') as f:
        f.write(intrinsics_text(intrinsics, shift=position * 0.7))
    with open(os.path.join(root, 'scene.txt'), 'w') as f:
        f.write('bedroom')
    label = np.kron(rng.integers(0, 38, (shape[0] // 4 + 1, shape[1] // 4 + 1)), np.ones((4, 4), np.int64))
    label = label[:shape[0], :shape[1]]
    label[0, :2] = [0, 37]
    return dict(folder=folder.rstrip('/'), sensor=sensor, camera=camera, depth_mm=depth_mm, label=label,
                jpeg=os.path.join(root, 'image', stem + '.jpg'))


def matlab_path(folder, *rest):
    """A path as readframeSUNRGBD.m builds it: [folder '/image/' name]."""
    return '/'.join([ORIGINAL_ROOT + 'SUNRGBD/' + folder, *rest])


def write_metadata(path):
    fields = ['sequenceName', 'groundtruth3DBB', 'Rtilt', 'K', 'depthpath', 'rgbpath', 'anno_extrinsics',
              'depthname', 'rgbname', 'sensorType', 'valid', 'gtCorner3D']
    meta = np.empty((1, len(IMAGES)), dtype=[(field, object) for field in fields])
    for i, (folder, stem, _) in enumerate(IMAGES):
        sensor = folder.split('/')[0]
        meta[0, i] = ('SUNRGBD/' + folder, np.zeros((0, 0)), np.eye(3), camera_matrix(SENSORS[sensor][1], i * 0.7),
                      matlab_path(folder, 'depth', stem + '.png'), matlab_path(folder, 'image', stem + '.jpg'),
                      np.eye(3), stem + '.png', stem + '.jpg', sensor, 1.0, np.zeros((0, 0)))
    scipy.io.savemat(path, {'SUNRGBDMeta': meta}, do_compression=True)


def write_split(path):
    def cells(order, shape):
        array = np.empty(shape, dtype=object)
        array.ravel()[:] = [ORIGINAL_ROOT + 'SUNRGBD/' + IMAGES[i][0] for i in order]
        return array
    trainval = np.empty((1, 1), dtype=[('train', object), ('val', object)])
    trainval[0, 0] = (cells(TRAIN_ORDER[:2], (2, 1)), cells(TRAIN_ORDER[2:], (2, 1)))
    scipy.io.savemat(path, {'alltrain': cells(TRAIN_ORDER, (1, 4)), 'alltest': cells(TEST_ORDER, (1, 4)),
                            'trainvalsplit': trainval})


def matlab_v73_header(path):
    """The 128-byte text header MATLAB puts in the HDF5 user block of a v7.3 file."""
    text = b'MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Wed Mar 18 12:00:00 2015 HDF5 schema 1.00 .'
    with open(path, 'r+b') as f:
        f.write(text.ljust(116) + b' ' * 8 + b'\x00\x02IM')


def write_segmentation(path, labels):
    """SUNRGBD2Dseg.mat: the struct array SUNRGBD2Dseg (fields seglabel, seglabelall) and the cell
    seg37list, their contents stored under #refs# and reached through object references."""
    names = ['wall', 'floor'] + [f'class{i}' for i in range(3, 38)]
    with h5py.File(path, 'w', userblock_size=512) as f:
        refs = f.create_group('#refs#')

        def stored(key, array, matlab_class):
            dataset = refs.create_dataset(key, data=array)
            dataset.attrs['MATLAB_class'] = np.bytes_(matlab_class)
            return dataset.ref

        seglabel = [stored(f'l{i}', label.T.astype(np.float64), 'double') for i, label in enumerate(labels)]
        seglabelall = [stored(f'a{i}', label.T.astype(np.float64) * 3, 'double') for i, label in enumerate(labels)]
        group = f.create_group('SUNRGBD2Dseg')
        group.attrs['MATLAB_class'] = np.bytes_('struct')
        for field, references in (('seglabel', seglabel), ('seglabelall', seglabelall)):
            group.create_dataset(field, data=np.array(references, dtype=h5py.ref_dtype).reshape(-1, 1))
        characters = [stored(f'n{i}', np.frombuffer(n.encode('utf-16-le'), np.uint16)[:, None], 'char')
                      for i, n in enumerate(names)]
        seg37list = f.create_dataset('seg37list', data=np.array(characters, dtype=h5py.ref_dtype).reshape(-1, 1))
        seg37list.attrs['MATLAB_class'] = np.bytes_('cell')
    matlab_v73_header(path)


def make_release(folder):
    """SUNRGBD/ (the release) and SUNRGBDtoolbox/ under `folder`; returns their paths and the truth."""
    rng = np.random.default_rng(0)
    release, toolbox = os.path.join(folder, 'SUNRGBD'), os.path.join(folder, 'SUNRGBDtoolbox')
    truth = [write_image_folder(release, i, folder_, stem, rng) for i, (folder_, stem, _) in enumerate(IMAGES)]
    for sub in ('Metadata', 'traintestSUNRGBD'):
        os.makedirs(os.path.join(toolbox, sub))
    write_metadata(os.path.join(toolbox, 'Metadata', 'SUNRGBDMeta.mat'))
    write_segmentation(os.path.join(toolbox, 'Metadata', 'SUNRGBD2Dseg.mat'), [t['label'] for t in truth])
    write_split(os.path.join(toolbox, 'traintestSUNRGBD', 'allsplit.mat'))
    return dict(root=folder, release=release, toolbox=toolbox, truth=truth)


def arguments(release, out, *extra):
    return ['--sunrgbd', release['release'], '--toolbox', release['toolbox'], '--out', out, *extra]


def run_command_line(release, out, *extra):
    """The tool as a user runs it; PYTHONPATH stands in for the installed project."""
    command = [sys.executable, os.path.join(REPO_ROOT, 'tools', 'prepare_sun.py'), *arguments(release, out, *extra)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, 'PYTHONPATH': REPO_ROOT})


def name(position):
    return f'{position + 1:05d}'


def read(path, flags=cv2.IMREAD_UNCHANGED):
    image = cv2.imread(path, flags)
    assert image is not None, f'cannot read {path}'
    return image


def output_files(out):
    return {os.path.join(folder, n): os.path.join(out, folder, n)
            for folder in ('RGB', 'Depth', 'HHA', 'labels') for n in sorted(os.listdir(os.path.join(out, folder)))}


@pytest.fixture(scope='module')
def release(tmp_path_factory):
    return make_release(str(tmp_path_factory.mktemp('sun')))


@pytest.fixture(scope='module')
def converted(release):
    out = os.path.join(release['root'], 'out')
    result = run_command_line(release, out, '--workers', '2')
    assert result.returncode == 0, result.stderr
    return out, result.stdout


@pytest.fixture
def copy(release, tmp_path):
    """A copy of the release to damage."""
    shutil.copytree(release['root'], tmp_path, dirs_exist_ok=True, ignore=shutil.ignore_patterns('out'))
    return dict(release, root=str(tmp_path), release=str(tmp_path / 'SUNRGBD'),
                toolbox=str(tmp_path / 'SUNRGBDtoolbox'))


@pytest.mark.integration
def test_every_output_equals_its_source(release, converted):
    out, _ = converted
    for position, truth in enumerate(release['truth']):
        n = name(position)
        with open(truth['jpeg'], 'rb') as source, open(os.path.join(out, 'RGB', n + '.jpg'), 'rb') as copied:
            assert copied.read() == source.read()
        depth = read(os.path.join(out, 'Depth', n + '.png'))
        assert depth.dtype == np.uint16
        np.testing.assert_array_equal(depth, np.minimum(truth['depth_mm'], 8000))
        label = read(os.path.join(out, 'labels', n + '.png'))
        assert label.dtype == np.uint8
        np.testing.assert_array_equal(label, truth['label'])
        hha = read(os.path.join(out, 'HHA', n + '.jpg'), cv2.IMREAD_COLOR)[..., ::-1].astype(int)
        expected = depth_to_hha(np.minimum(truth['depth_mm'], 8000) / 1000.0, camera=truth['camera'])
        assert np.abs(hha - expected).mean() < 2, n                      # JPEG quality 95
    assert release['truth'][WALL_BEYOND_8M]['depth_mm'].max() > 8000   # the cut at 8 m was exercised


@pytest.mark.integration
def test_hha_uses_each_image_s_own_intrinsics(release, converted):
    out, _ = converted
    truth = release['truth'][5]
    hha = read(os.path.join(out, 'HHA', name(5) + '.jpg'), cv2.IMREAD_COLOR)[..., ::-1].astype(int)
    depth_m = truth['depth_mm'] / 1000.0
    other = camera_matrix(SENSORS['kv2'][1], 0.0)
    own_error = np.abs(hha - depth_to_hha(depth_m, camera=truth['camera'])).mean()
    assert np.abs(hha - depth_to_hha(depth_m, camera=other)).mean() > 5 * own_error


@pytest.mark.integration
def test_splits_names_and_summary(release, converted):
    out, stdout = converted
    with open(os.path.join(out, 'train.txt')) as f:
        assert f.read() == ''.join(name(i) + '\n' for i in TRAIN_ORDER)
    with open(os.path.join(out, 'test.txt')) as f:
        assert f.read() == ''.join(name(i) + '\n' for i in TEST_ORDER)
    assert sorted(output_files(out)) == sorted(f'{folder}/{name(i)}{ext}' for i in range(len(IMAGES))
                                               for folder, ext in prepare_sun.FOLDERS.items())
    assert '8 images in the split (4 train, 4 test), 0 already written, 8 to convert' in stdout
    for sensor in SENSORS:
        assert f'{sensor:<12}      1      1' in stdout
    assert 'all               4      4' in stdout


@pytest.mark.integration
def test_layout_is_what_the_sun_configs_read(converted):
    out, _ = converted
    for config in ('sun_b2.py', 'sun_b4.py'):
        # The miniature release has its own split sizes: the config's 5285 / 5050 would be refused.
        cfg = load_config(os.path.join(REPO_ROOT, 'config', config),
                          {'dataset_path': out, 'num_train_imgs': None, 'num_eval_imgs': None})
        assert check_dataset(cfg, 'train', workers=1) == [name(i) for i in TRAIN_ORDER]
        assert check_dataset(cfg, 'val', workers=1) == [name(i) for i in TEST_ORDER]


@pytest.mark.integration
def test_an_interrupted_run_continues(copy, converted, capsys):
    """A label outside 0..37 stops the run at the third image; once it is right again, a second run
    writes only what is missing, and the result equals an uninterrupted run's byte for byte."""
    labels_path = os.path.join(copy['toolbox'], 'Metadata', 'SUNRGBD2Dseg.mat')
    shutil.copy(labels_path, labels_path + '.good')
    broken = TRAIN_ORDER[2]
    with h5py.File(labels_path, 'r+') as f:
        f['#refs#'][f'l{broken}'][0, 0] = 38
    out = os.path.join(copy['root'], 'out')
    with pytest.raises(SystemExit) as stop:
        prepare_sun.main(arguments(copy, out, '--workers', '1'))
    message = str(stop.value.code)
    assert message.startswith('error: ') and '\n' not in message
    assert f'image {name(broken)}' in message and 'in 0..37' in message
    written = output_files(out)
    assert sorted(written) == sorted(f'{folder}/{name(i)}{ext}' for i in TRAIN_ORDER[:2]
                                     for folder, ext in prepare_sun.FOLDERS.items())
    assert not os.path.exists(os.path.join(out, 'train.txt'))
    before = {key: os.stat(path).st_mtime_ns for key, path in written.items()}

    os.replace(labels_path + '.good', labels_path)
    capsys.readouterr()
    prepare_sun.main(arguments(copy, out, '--workers', '1'))
    assert '2 already written, 6 to convert' in capsys.readouterr().out
    assert all(os.stat(written[key]).st_mtime_ns == mtime for key, mtime in before.items())
    reference, _ = converted
    resumed = output_files(out)
    assert sorted(resumed) == sorted(output_files(reference))
    for key, path in output_files(reference).items():
        with open(path, 'rb') as a, open(resumed[key], 'rb') as b:
            assert a.read() == b.read(), key
    assert not [n for folder in prepare_sun.FOLDERS for n in os.listdir(os.path.join(out, folder)) if '.tmp' in n]


def stop_line(copy, out):
    """The tool's message for the damaged copy; nothing may have been written."""
    with pytest.raises(SystemExit) as stop:
        prepare_sun.main(arguments(copy, out))
    message = str(stop.value.code)
    assert message.startswith('error: ') and '\n' not in message
    assert not os.path.exists(out)
    return message


@pytest.mark.integration
def test_missing_toolbox_files_are_named(copy, tmp_path):
    os.remove(os.path.join(copy['toolbox'], 'Metadata', 'SUNRGBD2Dseg.mat'))
    os.remove(os.path.join(copy['toolbox'], 'traintestSUNRGBD', 'allsplit.mat'))
    message = stop_line(copy, str(tmp_path / 'out'))
    assert (f"--toolbox '{copy['toolbox']}' lacks Metadata/SUNRGBD2Dseg.mat, traintestSUNRGBD/allsplit.mat"
            in message)
    result = run_command_line(copy, str(tmp_path / 'out'))
    assert result.returncode == 1 and result.stdout == ''
    assert result.stderr == message + '\n'                            # one line, no traceback


def test_malformed_intrinsics_is_named(copy, tmp_path):
    path = os.path.join(copy['release'], IMAGES[3][0], 'intrinsics.txt')
    with open(path, 'w') as f:
        f.write('691.584229 0 362.777557\n0 691.584229 264.75\n')
    message = stop_line(copy, str(tmp_path / 'out'))
    assert f"'{path}': expected the camera matrix as 9 numbers" in message
    assert "got '691.584229 0 362.777557 0 691.584229 264.75'" in message


def test_an_image_without_depth_is_named(copy, tmp_path):
    folder, stem, _ = IMAGES[6]
    path = os.path.join(copy['release'], folder, 'depth_bfx', stem + '.png')
    os.remove(path)
    message = stop_line(copy, str(tmp_path / 'out'))
    assert f"1 of 8 images have no in-filled depth: '{path}' does not exist" in message


def test_a_release_folder_without_the_images_is_named(copy, tmp_path):
    copy = dict(copy, release=copy['root'])                           # the folder above SUNRGBD/
    message = stop_line(copy, str(tmp_path / 'out'))
    assert f"--sunrgbd '{copy['root']}' holds none of the image folders" in message


REAL_SPLIT = os.path.join(REPO_ROOT, '..', 'shared', 'fixtures', 'sunrgbd', 'allsplit.mat')


def test_the_real_split_file():
    """The toolbox's traintestSUNRGBD/allsplit.mat as a public copy holds it (jiangliux/SUNRGBDtoolbox,
    whose paths start /data1/ where the original's start /n/fs/sun3d/data/): the published
    5285 / 5050 split and images per sensor."""
    if not os.path.isfile(REAL_SPLIT):
        pytest.skip(f'{os.path.normpath(REAL_SPLIT)} is absent (traintestSUNRGBD/allsplit.mat of the toolbox)')
    train, test = prepare_sun.read_split(REAL_SPLIT)
    assert (len(train), len(test), len(set(train + test))) == (5285, 5050, 10335)
    sensors = {}
    for folder in train + test:
        sensors[folder.split('/')[0]] = sensors.get(folder.split('/')[0], 0) + 1
    assert sensors == {'kv1': 2003, 'kv2': 3784, 'realsense': 1159, 'xtion': 3389}
    assert train[0] == 'kv2/kinect2data/000065_2014-05-16_20-14-38_260595134347_rgbf000121-resize'
