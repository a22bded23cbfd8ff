"""utils.hha against the MATLAB program's output for a real NYU frame, hand-worked values and
analytic scenes (a floor and a wall seen by a tilted pinhole camera), and tools/depth2hha.py
against utils.hha on the same inputs."""
import os

import cv2
import numpy as np
import pytest
import scipy.ndimage

from config import REPO_ROOT
from tools import depth2hha
from utils.hha import (NYU_CAMERA, angle_with_gravity, check_camera, depth_to_hha, gravity_direction,
                       height_above_ground, matlab_uint8, point_cloud, rotation_between,
                       surface_normals)

FIXTURE_DIR = os.path.join(REPO_ROOT, '..', 'shared', 'fixtures', 'nyu_hha')
NYU_DEPTH_SCALE = 10000.0  # fixture PNG value / 10000 = metres

# A small camera for the analytic scenes (160x120 pixels).
SMALL_CAMERA = np.array([[130.0, 0.0, 80.5], [0.0, 131.0, 60.5], [0.0, 0.0, 1.0]])
SMALL_SHAPE = (120, 160)


def fixture_path(name):
    if not os.path.isdir(FIXTURE_DIR):
        pytest.skip(f'HHA fixture folder {os.path.normpath(FIXTURE_DIR)} is absent: the shared fixtures '
                    f'(depth.png, raw_depth.png, matlab_hha.png) sit beside the repository')
    return os.path.join(FIXTURE_DIR, name)


def read_png(path, flags=cv2.IMREAD_UNCHANGED):
    image = cv2.imread(path, flags)
    assert image is not None, f'cannot read {path}'
    return image


def nyu_frame():
    depth_m = read_png(fixture_path('depth.png')) / NYU_DEPTH_SCALE
    missing = read_png(fixture_path('raw_depth.png')) == 0
    matlab_hha = read_png(fixture_path('matlab_hha.png'), cv2.IMREAD_COLOR)[..., ::-1]  # BGR file
    return depth_m, missing, matlab_hha


def agreement(ours, reference):
    """Per channel: fraction within the acceptance tolerance, fraction identical, mean |diff|."""
    diff = np.abs(ours.astype(int) - reference.astype(int))
    return {name: ((diff[..., c] <= tol).mean(), (diff[..., c] == 0).mean(), diff[..., c].mean())
            for c, (name, tol) in enumerate((('disparity', 1), ('height', 1), ('angle', 2)))}


def assert_matches_matlab(figures, report):
    """The acceptance of an HHA image against the MATLAB output: fractions of pixels within tolerance."""
    for name, minimum in (('disparity', 0.999), ('height', 0.99), ('angle', 0.97)):
        assert figures[name][0] >= minimum, report


def test_nyu_frame_matches_matlab():
    depth_m, raw_missing, matlab_hha = nyu_frame()
    # The MATLAB output was made from the in-painted depth alone (its call passed the in-painted
    # depth as the raw depth too), so no missing mask here.
    ours = depth_to_hha(depth_m, None, NYU_CAMERA)
    assert ours.dtype == np.uint8 and ours.shape == (480, 640, 3)
    figures = agreement(ours, matlab_hha)
    masked_figures = agreement(depth_to_hha(depth_m, raw_missing, NYU_CAMERA), matlab_hha)
    report = '\n'.join(
        f'{label} {name:9s}: within tolerance {within:.4%}, identical {same:.4%}, mean |diff| {mad:.3f}'
        for label, table in (('no mask  ', figures), ('raw mask ', masked_figures))
        for name, (within, same, mad) in table.items())
    print('\nHHA of the NYU frame against the MATLAB output\n' + report)
    assert_matches_matlab(figures, report)


@pytest.mark.parametrize('depth_m, expected', [
    (0.5, 255),   # clamped to 100 cm: 310, saturated
    (1.0, 255),   # 310, saturated
    (2.0, 155),
    (3.1, 100),
    (4.0, 78),    # 77.5: MATLAB rounds halves away from zero
    (6.2, 50),
])
def test_disparity_by_hand(depth_m, expected):
    # A fronto-parallel wall: disparity = round(31000 / depth in cm) everywhere.
    hha = depth_to_hha(np.full((40, 50), depth_m), None, SMALL_CAMERA)
    assert (hha[..., 0] == expected).all()


def test_matlab_uint8_by_hand():
    values = np.array([-3.5, -0.5, 0.49, 0.5, 1.5, 2.5, 254.5, 255.4, 300.0, np.nan])
    assert matlab_uint8(values).tolist() == [0, 0, 0, 1, 2, 3, 255, 255, 255, 0]


def test_point_cloud_numbers_pixels_from_one():
    depth = np.full((3, 4), 200.0)
    camera = np.array([[100.0, 0.0, 2.0], [0.0, 50.0, 1.0], [0.0, 0.0, 1.0]])
    x, y, z = point_cloud(depth, camera)
    # Pixel (row 0, col 0) is (1, 1) in the 1-based MATLAB numbering: x = (1 - 2) * 200 / 100.
    assert x[0].tolist() == [-2.0, 0.0, 2.0, 4.0]
    assert y[:, 0].tolist() == [0.0, 4.0, 8.0]
    assert (z == 200.0).all()


def test_rotation_between():
    source = np.array([0.0, 1.0, 0.0])
    target = np.array([0.3, 0.9, -0.2])
    target /= np.linalg.norm(target)
    rotation = rotation_between(source, target)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(rotation @ source, target, atol=1e-12)
    almost = np.array([np.sin(np.radians(0.05)), np.cos(np.radians(0.05)), 0.0])
    assert (rotation_between(source, almost) == np.eye(3)).all()  # below 0.1 degree: identity


def gravity_for(pitch_deg, roll_deg):
    """Unit gravity in camera coordinates for a camera pitched down and rolled."""
    pitch, roll = np.radians(pitch_deg), np.radians(roll_deg)
    return np.array([np.sin(roll) * np.cos(pitch), np.cos(roll) * np.cos(pitch), np.sin(pitch)])


def render_room(gravity, camera_height_cm, wall_distance_cm=None, shape=SMALL_SHAPE,
                camera=SMALL_CAMERA):
    """Ray-traces a floor (camera_height_cm below the camera) and optionally a wall facing the
    camera at wall_distance_cm. Returns depth in metres, the floor mask and the height of every
    point above the floor in cm. Pixel (i, j) looks along ((j + 1 - cx) / fx, (i + 1 - cy) / fy, 1)."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    rays = np.stack([(cols + 1 - camera[0, 2]) / camera[0, 0],
                     (rows + 1 - camera[1, 2]) / camera[1, 1], np.ones(shape)])
    down = np.tensordot(gravity, rays, axes=1)
    floor_z = np.full(shape, np.inf)
    floor_z[down > 0] = camera_height_cm / down[down > 0]
    wall_z = np.full(shape, np.inf)
    if wall_distance_cm is not None:
        forward = np.array([0.0, 0.0, 1.0]) - gravity[2] * gravity  # horizontal, away from camera
        forward /= np.linalg.norm(forward)
        ahead = np.tensordot(forward, rays, axes=1)
        wall_z[ahead > 0] = wall_distance_cm / ahead[ahead > 0]
    depth_cm = np.minimum(floor_z, wall_z)
    assert np.isfinite(depth_cm).all(), 'the scene must fill the image'
    height_cm = camera_height_cm - np.tensordot(gravity, rays * depth_cm, axes=1)
    return depth_cm / 100.0, floor_z < wall_z, height_cm


def away_from_crease(is_floor, radius):
    """Pixels whose (2r+1)^2 window sees a single plane."""
    size = 2 * radius + 1
    return ~scipy.ndimage.binary_dilation(
        is_floor ^ scipy.ndimage.binary_erosion(is_floor, np.ones((3, 3)), border_value=1),
        np.ones((size, size)))


def test_floor_seen_by_tilted_camera():
    gravity = gravity_for(pitch_deg=35, roll_deg=8)  # every ray hits the floor
    depth_m, is_floor, _ = render_room(gravity, camera_height_cm=150)
    assert is_floor.all()
    normals = surface_normals(point_cloud(depth_m * 100, SMALL_CAMERA),
                              np.zeros(depth_m.shape, bool), radius=3)
    # Oriented away from the camera: the floor's normal points down, along gravity.
    np.testing.assert_allclose(normals.reshape(3, -1).T, np.tile(gravity, (depth_m.size, 1)), atol=1e-9)
    hha = depth_to_hha(depth_m, None, SMALL_CAMERA)
    assert (hha[..., 2] == 128 - 90 + 0).all()  # angle 0 with gravity
    assert (hha[..., 1] == 0).all()  # every point is on the floor, the lowest level
    expected_disparity = np.floor(31000 / np.maximum(depth_m * 100, 100) + 0.5).clip(0, 255)
    assert (hha[..., 0] == expected_disparity).all()


def test_floor_and_wall():
    gravity = gravity_for(pitch_deg=15, roll_deg=5)
    depth_m, is_floor, height_cm = render_room(gravity, camera_height_cm=150, wall_distance_cm=400)
    assert 0.2 < is_floor.mean() < 0.8
    hha = depth_to_hha(depth_m, None, SMALL_CAMERA).astype(int)
    single_plane = away_from_crease(is_floor, radius=3)
    assert (hha[..., 2][single_plane & is_floor] == 38).all()    # 0 degrees: normal along gravity
    assert (hha[..., 2][single_plane & ~is_floor] == 128).all()  # 90 degrees: wall
    # Height above the floor, in cm: exact but for the gravity estimate, which the crease's mixed
    # normals bias by about 0.2 degrees (a 1.5 cm error at 4 m).
    expected_height = np.floor(height_cm + 0.5).clip(0, 255)
    assert np.abs(hha[..., 1] - expected_height).max() <= 1
    assert np.corrcoef(hha[..., 1][~is_floor], height_cm[~is_floor])[0, 1] > 0.999


def test_gravity_from_floor_and_wall_normals():
    gravity = gravity_for(pitch_deg=25, roll_deg=-10)
    wall_normal = np.cross(gravity, [1.0, 0.0, 0.0])
    wall_normal /= np.linalg.norm(wall_normal)
    other_wall = np.cross(gravity, wall_normal)
    rng = np.random.default_rng(0)
    normals = np.concatenate([np.tile(gravity, (300, 1)), -np.tile(gravity, (100, 1)),
                              np.tile(wall_normal, (400, 1)), np.tile(other_wall, (200, 1)),
                              rng.normal(size=(50, 3))])  # clutter, mostly outside both thresholds
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    normals[::97] = np.nan  # windows without measurements
    estimate = gravity_direction(normals.T.reshape(3, 1, -1))
    assert np.degrees(np.arccos(min(1.0, estimate @ gravity))) < 1.0
    assert estimate @ np.array([0.0, 1.0, 0.0]) > 0  # pointing down, like the camera's y axis


def test_height_against_known_gravity():
    gravity = gravity_for(pitch_deg=15, roll_deg=5)
    depth_m, is_floor, height_cm = render_room(gravity, camera_height_cm=150, wall_distance_cm=400)
    height = height_above_ground(point_cloud(depth_m * 100, SMALL_CAMERA), gravity)
    np.testing.assert_allclose(height, height_cm, atol=1e-9)
    np.testing.assert_allclose(height[is_floor], 0.0, atol=1e-9)


def test_low_camera_puts_floor_130_cm_below():
    # The lowest point is only 60 cm below the camera (> -90 cm): the floor is assumed 130 cm below
    # the camera, so the floor gets height 130 - 60 = 70.
    gravity = gravity_for(pitch_deg=15, roll_deg=5)
    depth_m, is_floor, height_cm = render_room(gravity, camera_height_cm=60, wall_distance_cm=400)
    height = height_above_ground(point_cloud(depth_m * 100, SMALL_CAMERA), gravity)
    np.testing.assert_allclose(height, height_cm + 70.0, atol=1e-9)


def test_angle_by_hand():
    gravity = np.array([0.0, 1.0, 0.0])
    normals = np.array([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0],
                        [0.0, 0.5, np.sqrt(0.75)], [np.nan, np.nan, np.nan]]).T.reshape(3, 1, 5)
    # floor, ceiling, wall, 60 degrees, no normal (180 degrees, as MATLAB's max(-1, NaN) = -1)
    np.testing.assert_allclose(angle_with_gravity(normals, gravity)[0], [0, 180, 90, 60, 180],
                               atol=1e-9)


def test_missing_pixels_do_not_enter_the_normals():
    gravity = gravity_for(pitch_deg=15, roll_deg=5)
    depth_m, is_floor, _ = render_room(gravity, camera_height_cm=150, wall_distance_cm=400)
    clean = depth_to_hha(depth_m, None, SMALL_CAMERA)
    corrupted = depth_m.copy()
    block = np.zeros(depth_m.shape, bool)
    block[10:30, 60:90] = True  # on the wall, above the floor
    assert not (block & is_floor).any()
    corrupted[block] *= 1.2
    masked = depth_to_hha(corrupted, block, SMALL_CAMERA)
    # 7x7 windows entirely inside the block have no normal (180 degrees + 38). Those reaching out
    # of it by a single row or column see collinear points only: no plane (numerical noise, as in
    # the reference). Elsewhere the fits saw true wall points only.
    no_normal = scipy.ndimage.binary_erosion(block, np.ones((7, 7)))
    collinear = (scipy.ndimage.binary_erosion(block, np.ones((5, 7)))
                 | scipy.ndimage.binary_erosion(block, np.ones((7, 5))))
    assert (masked[..., 2][no_normal] == 218).all()
    # Away from the floor / wall crease, where the slightly changed gravity estimate could move a
    # mixed normal's angle across a rounding boundary.
    compared = ~collinear & away_from_crease(is_floor, radius=3)
    assert (masked[..., 2][compared] == clean[..., 2][compared]).all()
    assert (masked[..., 0][~block] == clean[..., 0][~block]).all()
    unmasked = depth_to_hha(corrupted, None, SMALL_CAMERA)
    assert (unmasked[..., 2][compared] != clean[..., 2][compared]).sum() > 100  # the step shows


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match='depth_m'):
        depth_to_hha(np.ones((4, 5, 3)))
    with pytest.raises(ValueError, match='NaN'):
        depth_to_hha(np.full((4, 5), np.nan))
    with pytest.raises(ValueError, match='missing'):
        depth_to_hha(np.ones((4, 5)), np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match='camera'):
        depth_to_hha(np.ones((4, 5)), None, np.eye(4))


# tools/depth2hha.py

def write_depth_png(path, depth_m, scale=NYU_DEPTH_SCALE):
    assert cv2.imwrite(str(path), np.round(depth_m * scale).astype(np.uint16))


def hha_from_file(path):
    return read_png(str(path), cv2.IMREAD_COLOR)[..., ::-1]


@pytest.fixture
def depth_folders(tmp_path):
    """depth/ with the NYU frame and an analytic floor + wall scene, raw/ with their raw depths."""
    depth_dir, raw_dir = tmp_path / 'depth', tmp_path / 'raw'
    depth_dir.mkdir()
    raw_dir.mkdir()
    nyu_depth = read_png(fixture_path('depth.png'))
    cv2.imwrite(str(depth_dir / 'nyu.png'), nyu_depth)
    cv2.imwrite(str(raw_dir / 'nyu.png'), read_png(fixture_path('raw_depth.png')))
    room_m, _, _ = render_room(gravity_for(15, 5), 150, 400, shape=nyu_depth.shape, camera=NYU_CAMERA)
    write_depth_png(depth_dir / 'room.png', room_m)
    room_raw = np.round(room_m * NYU_DEPTH_SCALE).astype(np.uint16)
    room_raw[:40, :60] = 0
    cv2.imwrite(str(raw_dir / 'room.png'), room_raw)
    return depth_dir, raw_dir


def run_tool(*args):
    depth2hha.main([str(a) for a in args])


def test_tool_converts_a_folder(depth_folders, tmp_path):
    depth_dir, _ = depth_folders
    out_dir = tmp_path / 'hha'
    run_tool('--depth-dir', depth_dir, '--out-dir', out_dir, '--depth-scale', 10000, '--workers', 2,
             '--format', 'png')
    assert sorted(os.listdir(out_dir)) == ['nyu.png', 'room.png']
    for name in ('nyu.png', 'room.png'):
        depth_m = read_png(str(depth_dir / name)) / NYU_DEPTH_SCALE
        assert (hha_from_file(out_dir / name) == depth_to_hha(depth_m, None, NYU_CAMERA)).all(), name
    nyu_hha = hha_from_file(out_dir / 'nyu.png')
    assert agreement(nyu_hha, nyu_frame()[2])['angle'][0] >= 0.97


def test_tool_writes_the_official_jpg_layout_by_default(depth_folders, tmp_path):
    depth_dir, _ = depth_folders
    out_dir = tmp_path / 'hha'
    run_tool('--depth-dir', depth_dir, '--out-dir', out_dir, '--depth-scale', 10000, '--workers', 1)
    assert sorted(os.listdir(out_dir)) == ['nyu.jpg', 'room.jpg']
    assert (out_dir / 'nyu.jpg').read_bytes()[:3] == b'\xff\xd8\xff'  # a JPEG stream
    depth_m = read_png(str(depth_dir / 'nyu.png')) / NYU_DEPTH_SCALE
    error = np.abs(hha_from_file(out_dir / 'nyu.jpg').astype(int) - depth_to_hha(depth_m, None, NYU_CAMERA))
    assert error.mean() < 1.5  # JPEG quality 95


def test_tool_raw_dir_and_camera_flags(depth_folders, tmp_path):
    depth_dir, raw_dir = depth_folders
    out_dir = tmp_path / 'hha'
    camera = np.array([[500.0, 0.0, 320.0], [0.0, 510.0, 240.0], [0.0, 0.0, 1.0]])
    run_tool('--depth-dir', depth_dir, '--raw-dir', raw_dir, '--out-dir', out_dir,
             '--depth-scale', 10000, '--workers', 1, '--format', 'png',
             '--fx', 500, '--fy', 510, '--cx', 320, '--cy', 240)
    for name in ('nyu.png', 'room.png'):
        depth_m = read_png(str(depth_dir / name)) / NYU_DEPTH_SCALE
        missing = read_png(str(raw_dir / name)) == 0
        assert (hha_from_file(out_dir / name) == depth_to_hha(depth_m, missing, camera)).all(), name


def test_tool_skips_existing_outputs_unless_overwrite(depth_folders, tmp_path):
    depth_dir, _ = depth_folders
    out_dir = tmp_path / 'hha'
    out_dir.mkdir()
    placeholder = np.zeros((2, 2, 3), np.uint8)
    cv2.imwrite(str(out_dir / 'room.png'), placeholder)
    run_tool('--depth-dir', depth_dir, '--out-dir', out_dir, '--depth-scale', 10000, '--workers', 2,
             '--format', 'png')
    assert (read_png(str(out_dir / 'room.png')) == placeholder).all()
    assert read_png(str(out_dir / 'nyu.png')).shape == (480, 640, 3)
    run_tool('--depth-dir', depth_dir, '--out-dir', out_dir, '--depth-scale', 10000, '--overwrite',
             '--format', 'png')
    room_m = read_png(str(depth_dir / 'room.png')) / NYU_DEPTH_SCALE
    assert (hha_from_file(out_dir / 'room.png') == depth_to_hha(room_m, None, NYU_CAMERA)).all()
    assert not [n for n in os.listdir(out_dir) if '.tmp' in n]


@pytest.mark.parametrize('content, message', [
    (b'not a png at all', 'not a PNG'),
    ('8bit', 'expected a 16-bit greyscale depth PNG'),
])
def test_tool_rejects_bad_files_before_work(depth_folders, tmp_path, content, message):
    depth_dir, _ = depth_folders
    bad = depth_dir / 'bad.png'
    if content == '8bit':
        cv2.imwrite(str(bad), np.zeros((4, 4), np.uint8))
    else:
        bad.write_bytes(content)
    out_dir = tmp_path / 'hha'
    with pytest.raises(SystemExit, match=f'{bad}.*{message}'):
        run_tool('--depth-dir', depth_dir, '--out-dir', out_dir, '--workers', 2)
    assert not out_dir.exists()  # nothing converted


def test_tool_names_a_corrupt_file(depth_folders, tmp_path):
    depth_dir, _ = depth_folders
    whole = (depth_dir / 'room.png').read_bytes()
    (depth_dir / 'truncated.png').write_bytes(whole[:200])  # valid header, broken data
    with pytest.raises(SystemExit, match='truncated.png: cannot be read'):
        run_tool('--depth-dir', depth_dir, '--out-dir', tmp_path / 'hha', '--workers', 2)


def test_tool_rejects_missing_folders(tmp_path):
    with pytest.raises(SystemExit, match='--depth-dir .*nowhere: no such folder'):
        run_tool('--depth-dir', tmp_path / 'nowhere', '--out-dir', tmp_path / 'hha')
    (tmp_path / 'depth').mkdir()
    write_depth_png(tmp_path / 'depth' / 'a.png', np.full((8, 8), 2.0))
    with pytest.raises(SystemExit, match='raw depth for .*a.png is missing'):
        run_tool('--depth-dir', tmp_path / 'depth', '--raw-dir', tmp_path, '--out-dir', tmp_path / 'hha')


def test_tool_rejects_a_bad_quality(tmp_path):
    (tmp_path / 'depth').mkdir()
    write_depth_png(tmp_path / 'depth' / 'a.png', np.full((8, 8), 2.0))
    with pytest.raises(SystemExit, match='--quality must be in 0..100, got 101'):
        run_tool('--depth-dir', tmp_path / 'depth', '--out-dir', tmp_path / 'hha', '--quality', 101)
    assert not (tmp_path / 'hha').exists()


def test_tool_decodes_sun_rgbd_depth(tmp_path):
    """SUN-RGBD PNGs hold millimetres rotated left by 3 bits; made here by hand from known depth."""
    depth_dir = tmp_path / 'depth'
    depth_dir.mkdir()
    room_m, _, _ = render_room(gravity_for(10, 0), 140, 950)
    millimetres = np.round(room_m * 1000).astype(np.uint32)
    assert millimetres.max() >= 1 << 13  # some depths use the bits the rotation wraps around
    stored = ((millimetres << 3) | (millimetres >> 13)) & 0xFFFF
    assert cv2.imwrite(str(depth_dir / 'sun.png'), stored.astype(np.uint16))
    camera = SMALL_CAMERA
    run_tool('--depth-dir', depth_dir, '--out-dir', tmp_path / 'hha', '--depth-encoding', 'sun-rgbd',
             '--format', 'png', '--fx', camera[0, 0], '--fy', camera[1, 1], '--cx', camera[0, 2],
             '--cy', camera[1, 2], '--workers', 1)
    expected = depth_to_hha(millimetres / 1000.0, None, camera)
    assert (hha_from_file(tmp_path / 'hha' / 'sun.png') == expected).all()


# Camera and depth rules of tools/depth2hha.py: checked before any image is converted.

def small_depth_folder(tmp_path, depths=None):
    """depth/ with 12x16 depth PNGs (default: one of 2 m everywhere)."""
    depth_dir = tmp_path / 'depth'
    depth_dir.mkdir()
    for name, depth_m in (depths or {'a.png': np.full((12, 16), 2.0)}).items():
        write_depth_png(depth_dir / name, depth_m)
    return depth_dir


@pytest.mark.parametrize('flags, message', [
    (['--fx', 500], '--fx without --fy --cx --cy: give all four intrinsics, or none'),
    (['--fx', 500, '--cy', 60], '--fx --cy without --fy --cx: give all four'),
])
def test_tool_refuses_half_a_camera(tmp_path, flags, message):
    with pytest.raises(SystemExit, match=message):
        run_tool('--depth-dir', small_depth_folder(tmp_path), '--out-dir', tmp_path / 'hha', *flags)
    assert not (tmp_path / 'hha').exists()


def test_tool_refuses_the_nyu_camera_for_another_image_size(tmp_path):
    depth_dir = small_depth_folder(tmp_path)
    with pytest.raises(SystemExit, match=r'a\.png: 16x12 depth, but the default NYU Depth V2 camera is for '
                                         r"640x480 images: give this camera's --fx --fy --cx --cy"):
        run_tool('--depth-dir', depth_dir, '--out-dir', tmp_path / 'hha')
    assert not (tmp_path / 'hha').exists()


def test_tool_refuses_a_principal_point_outside_the_image(tmp_path):
    depth_dir = small_depth_folder(tmp_path)
    with pytest.raises(SystemExit, match=r'a\.png: --fx --fy --cx --cy: the principal point \(cx 325, cy 6\) '
                                         r'lies outside the 16x12 image'):
        run_tool('--depth-dir', depth_dir, '--out-dir', tmp_path / 'hha', '--fx', 13, '--fy', 13,
                 '--cx', 325, '--cy', 6)
    assert not (tmp_path / 'hha').exists()


def test_tool_prints_the_camera_and_names_a_depth_without_measurements(tmp_path, capsys):
    depth_dir = small_depth_folder(tmp_path, {'good.png': np.full((12, 16), 2.0),
                                              'zero.png': np.zeros((12, 16))})
    with pytest.raises(SystemExit, match=r'1 of 2 files failed:\n.*zero\.png: no pixel has a measured depth'):
        run_tool('--depth-dir', depth_dir, '--out-dir', tmp_path / 'hha', '--format', 'png', '--workers', 1,
                 '--fx', 13, '--fy', 13.5, '--cx', 8.5, '--cy', 6.5)
    assert 'camera: fx 13.00, fy 13.50, cx 8.50, cy 6.50 (--fx --fy --cx --cy)' in capsys.readouterr().out
    assert os.listdir(tmp_path / 'hha') == ['good.png']


def test_check_camera():
    camera = np.array([[13.0, 0.0, 8.5], [0.0, 13.0, 6.5], [0.0, 0.0, 1.0]])
    assert (check_camera(camera, 12, 16) == camera).all()
    with pytest.raises(ValueError, match=r'principal point \(cx 8.5, cy 6.5\) lies outside the 8x12 image'):
        check_camera(camera, 12, 8)
    with pytest.raises(ValueError, match='fx, fy > 0'):
        check_camera(np.diag([-1.0, 1.0, 1.0]), 12, 16)
    with pytest.raises(ValueError, match='finite'):
        check_camera(np.full((3, 3), np.nan), 12, 16)
    with pytest.raises(ValueError, match='no pixel has a measured depth'):
        depth_to_hha(np.zeros((12, 16)), None, camera)
