"""HHA encoding of a depth map (Gupta et al., "Learning Rich Features from RGB-D Images for
Object Detection and Segmentation", ECCV 2014).

Three channels, each scaled to roughly fill 0..255:

* horizontal disparity: 31000 / depth in cm, depth clamped at 100 cm;
* height above the lowest point of the scene, in cm, along the estimated gravity direction;
* angle in degrees between the local surface normal and gravity, stored as angle + 128 - 90.

The computation follows the authors' MATLAB release step by step (plane fits over square windows
for the normals, gravity from an iterative floor / wall split of the coarse normals, MATLAB's
``uint8`` rounding): on the NYU frame for which we have that program's output, every pixel of all
three channels is identical. That output was made from the in-painted depth alone (no missing mask,
i.e. ``missing=None`` here); with the raw depth's holes as the mask, 26% of the angle pixels change.
Everything is vectorised: about 55 ms for a 480x640 frame on one core.
"""
import cv2
import numpy as np

# Intrinsics of the NYU Depth V2 colour camera (pixels): [[fx, 0, cx], [0, fy, cy], [0, 0, 1]].
NYU_CAMERA = np.array([[518.85790117450188, 0.0, 325.58244941119034],
                       [0.0, 519.46961112127485, 253.73616633400465],
                       [0.0, 0.0, 1.0]], dtype=np.float64)
NYU_IMAGE_SIZE = (480, 640)  # (height, width) the NYU intrinsics belong to
# Named cameras: intrinsics and the only image size (height, width) they are valid for.
CAMERA_PRESETS = {'nyu': (NYU_CAMERA, NYU_IMAGE_SIZE)}
INPAINT_RADIUS = 3

# Radii (in pixels) of the square windows for the plane fits: the fine normals give the angle
# channel, the coarse ones the gravity estimate.
FINE_NORMAL_RADIUS = 3
COARSE_NORMAL_RADIUS = 10
# Gravity estimation: two rounds of 5 iterations with the floor / wall thresholds 45 then 15 degrees.
GRAVITY_ROUNDS = ((45.0, 5), (15.0, 5))
MIN_DEPTH_CM = 100.0
DISPARITY_SCALE = 31000.0
ANGLE_OFFSET = 128.0 - 90.0
# When the lowest point is less than 90 cm below the camera, the floor is taken to lie 130 cm below.
FLOOR_HEIGHT_GUESS_CM = -130.0
FLOOR_HEIGHT_LIMIT_CM = -90.0


def depth_to_hha(depth_m, missing=None, camera=NYU_CAMERA):
    """Encodes a depth map as HHA.

    Args:
        depth_m: (H, W) depth in metres, usually in-painted; 0 = no depth.
        missing: optional (H, W) bool mask of further pixels whose depth is not to be trusted
            (e.g. raw depth == 0). Missing pixels and those with depth 0 are left out of the
            normal estimation; their disparity and height still come from ``depth_m``.
        camera: 3x3 intrinsics [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] in pixels.

    Returns:
        (H, W, 3) uint8: channel 0 = horizontal disparity, 1 = height above ground, 2 = angle
        with gravity (the RGB order of the reference PNGs; reverse it for ``cv2.imwrite``).
    """
    depth_cm, missing, camera = _check_inputs(depth_m, missing, camera)
    points = point_cloud(depth_cm, camera)
    terms = _plane_fit_terms(points, missing)
    fine_normals = _orient(_fit_normals(terms, FINE_NORMAL_RADIUS), points)
    # Gravity estimation ignores the sign of the normals: the coarse ones need no orienting.
    gravity = gravity_direction(_fit_normals(terms, COARSE_NORMAL_RADIUS))

    hha = np.empty(depth_cm.shape + (3,), dtype=np.uint8)
    hha[..., 0] = matlab_uint8(DISPARITY_SCALE / np.maximum(depth_cm, MIN_DEPTH_CM))
    hha[..., 1] = matlab_uint8(height_above_ground(points, gravity))
    hha[..., 2] = matlab_uint8(angle_with_gravity(fine_normals, gravity) + ANGLE_OFFSET)
    return hha


def inpainted_hha(depth_m, camera=NYU_CAMERA):
    """HHA of a sensor depth map whose holes are 0: the holes are in-painted first (OpenCV's
    Navier-Stokes method), since the reference HHA were made from in-painted depth. Depth without
    holes goes to depth_to_hha unchanged (as float32 metres)."""
    depth_m = np.asarray(depth_m, dtype=np.float32)
    holes = depth_m == 0
    if holes.any():
        depth_m = cv2.inpaint(depth_m, holes.astype(np.uint8), INPAINT_RADIUS, cv2.INPAINT_NS)
    return depth_to_hha(depth_m, camera=camera)


def _check_inputs(depth_m, missing, camera):
    camera = camera_matrix(camera)
    depth_m = np.asarray(depth_m)
    if depth_m.ndim != 2 or depth_m.dtype.kind not in 'fiu':
        raise ValueError(f'depth_m must be a real (H, W) array in metres, got shape '
                         f'{depth_m.shape} and dtype {depth_m.dtype}')
    if not np.isfinite(depth_m).all() or (depth_m < 0).any():
        raise ValueError('depth_m contains negative, NaN or infinite values; mark holes with 0')
    depth_cm = depth_m.astype(np.float64) * 100.0
    # Zero depth would put infinities into the plane fits: it always counts as missing.
    no_depth = depth_cm == 0
    if missing is None:
        missing = no_depth
    else:
        missing = np.asarray(missing)
        if missing.shape != depth_m.shape or missing.dtype != np.bool_:
            raise ValueError(f'missing must be a bool array of the depth shape {depth_m.shape}, '
                             f'got shape {missing.shape} and dtype {missing.dtype}')
        missing = missing | no_depth
    if missing.all():
        raise ValueError('no pixel has a measured depth (every one is 0 or missing): HHA needs some')
    return depth_cm, missing, camera


def camera_matrix(camera):
    """`camera` as a float64 3x3 array; ValueError unless it is finite intrinsics with fx, fy > 0."""
    camera = np.asarray(camera, dtype=np.float64)
    if camera.shape != (3, 3) or not np.isfinite(camera).all() or not (camera[0, 0] > 0 and camera[1, 1] > 0):
        raise ValueError(f'camera must be finite 3x3 intrinsics [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] '
                         f'with fx, fy > 0, got {camera.tolist()}')
    return camera


def check_camera(camera, height, width):
    """`camera` as a float64 3x3 array, checked for depth images of height x width: besides
    camera_matrix's checks, the principal point must lie in the image. A point outside it means
    intrinsics of another camera or image size, which would skew the point cloud. ValueError saying why."""
    camera = camera_matrix(camera)
    cx, cy = camera[0, 2], camera[1, 2]
    if not (0 <= cx <= width and 0 <= cy <= height):
        raise ValueError(f'the principal point (cx {cx:g}, cy {cy:g}) lies outside the {width}x{height} image '
                         f'(width x height): intrinsics of another camera or image size?')
    return camera


def point_cloud(depth, camera):
    """(3, H, W) camera coordinates x (right), y (down), z (forward) in the unit of ``depth``.

    Pixel centres are numbered from 1, as in the MATLAB code the NYU intrinsics were used with.
    """
    height, width = depth.shape
    fx, fy, cx, cy = camera[0, 0], camera[1, 1], camera[0, 2], camera[1, 2]
    columns = np.arange(1, width + 1, dtype=np.float64) - cx
    rows = np.arange(1, height + 1, dtype=np.float64)[:, None] - cy
    return np.stack([columns * depth / fx, rows * depth / fy, depth])


def surface_normals(points, missing, radius):
    """(3, H, W) unit normals from least-squares plane fits over (2r+1)^2 windows.

    The plane n . p = 1 is fitted in the form n . (x/z, y/z, 1) = 1/z over the pixels of each
    window that are not ``missing`` (zero padding at the image border). Normals are oriented away
    from the camera (n . p >= 0). Windows without measured points give NaN; those whose measured
    points are collinear give an arbitrary direction, as in the reference.
    """
    return _orient(_fit_normals(_plane_fit_terms(points, missing), radius), points)


def _plane_fit_terms(points, missing):
    """(9, H, W) per-pixel terms of the normal equations A^T A n = A^T b, rows A = (x/z, y/z, 1),
    b = 1/z, zero where ``missing``: the 6 distinct entries of A^T A, then those of A^T b."""
    x, y, z = points
    terms = np.empty((9,) + z.shape)
    u, v, measured, inv_z = terms[2], terms[4], terms[5], terms[8]
    with np.errstate(divide='ignore', invalid='ignore'):
        np.divide(x, z, out=u)
        np.divide(y, z, out=v)
        np.divide(1.0, z, out=inv_z)
    for term in (u, v, inv_z):
        term[missing] = 0.0
    np.logical_not(missing, out=measured, casting='unsafe')
    np.multiply(u, u, out=terms[0])
    np.multiply(u, v, out=terms[1])
    np.multiply(v, v, out=terms[3])
    np.multiply(u, inv_z, out=terms[6])
    np.multiply(v, inv_z, out=terms[7])
    return terms


def _fit_normals(terms, radius):
    """(3, H, W) unit (unoriented) normals from the window sums of the terms."""
    size = (2 * radius + 1, 2 * radius + 1)
    sums = np.empty_like(terms)
    for term, window_sum in zip(terms, sums):
        cv2.boxFilter(term, cv2.CV_64F, size, dst=window_sum, normalize=False,
                      borderType=cv2.BORDER_CONSTANT)
    # Running sums leave rounding residue (~1e-17) in windows without any measured pixel, where
    # the reference's direct sums are exactly 0 and give no normal (NaN). The pixel counts are
    # exact, so they tell these windows apart.
    empty = sums[5] == 0
    if empty.any():
        sums[:, empty] = 0.0
    return _solve_symmetric(sums)


def _solve_symmetric(sums):
    """Unit adj(A) b for the per-pixel systems A = (s0 s1 s2; s1 s3 s4; s2 s4 s5),
    b = (s6, s7, s8): adj(A) = det(A) inv(A), and the sign is fixed afterwards.
    Intermediate results go to reused buffers: fresh memory costs more than the arithmetic here."""
    a11, a12, a13, a22, a23, a33, b1, b2, b3 = sums
    normals = np.empty((3,) + a11.shape)
    scratch = np.empty_like(a11)

    def cofactor(p, q, r, s):  # p q - r s
        out = p * q
        np.multiply(r, s, out=scratch)
        out -= scratch
        return out

    c11 = cofactor(a22, a33, a23, a23)
    c12 = cofactor(a13, a23, a12, a33)
    c13 = cofactor(a12, a23, a13, a22)
    c22 = cofactor(a11, a33, a13, a13)
    c23 = cofactor(a12, a13, a11, a23)
    c33 = cofactor(a11, a22, a12, a12)
    for normal, (ca, cb, cc) in zip(normals, ((c11, c12, c13), (c12, c22, c23), (c13, c23, c33))):
        np.multiply(ca, b1, out=normal)
        normal += np.multiply(cb, b2, out=scratch)
        normal += np.multiply(cc, b3, out=scratch)
    norm = np.sqrt(_dot(normals, normals))
    with np.errstate(divide='ignore', invalid='ignore'):
        normals /= norm
    return normals


def _dot(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _orient(normals, points):
    # The reference's two-step sign choice: first z >= 0, then pointing away from the camera;
    # a zero (or NaN) dot product keeps the sign of the previous step.
    normals *= np.where(normals[2] < 0, -1.0, 1.0)
    normals *= np.where(_dot(normals, points) < 0, -1.0, 1.0)
    return normals


def gravity_direction(normals, rounds=GRAVITY_ROUNDS):
    """Unit gravity direction in the camera frame (pointing down: along +y for a level camera).

    Starting from the camera's y axis, normals within ``threshold`` degrees of the current estimate
    count as floor / ceiling and those within ``threshold`` of perpendicular as walls; the new
    estimate is the direction most parallel to the former and most perpendicular to the latter:
    the eigenvector of sum(wall n n^T) - sum(floor n n^T) with the smallest eigenvalue.
    """
    flat = normals.reshape(3, -1)
    valid = ~np.isnan(flat[0])
    if not valid.all():
        flat = flat[:, valid]
    # The 6 distinct entries of n n^T per normal: each iteration is then one matrix-vector product.
    outer = np.empty((6, flat.shape[1]))
    for row, (i, j) in zip(outer, ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))):
        np.multiply(flat[i], flat[j], out=row)
    count = flat.shape[1]
    similarity, weight = np.empty(count), np.empty(count)
    is_wall, is_floor = np.empty(count, bool), np.empty(count, bool)
    gravity = np.array([0.0, 1.0, 0.0])
    for threshold, iterations in rounds:
        cos_t, sin_t = np.cos(np.radians(threshold)), np.sin(np.radians(threshold))
        for _ in range(iterations):
            np.abs(np.matmul(gravity, flat, out=similarity), out=similarity)
            np.less(similarity, sin_t, out=is_wall)
            np.greater(similarity, cos_t, out=is_floor)
            np.subtract(is_wall, is_floor, out=weight, dtype=np.float64)
            xx, xy, xz, yy, yz, zz = outer @ weight
            scatter = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
            eigenvalues, eigenvectors = np.linalg.eigh(scatter)
            estimate = eigenvectors[:, np.argmin(eigenvalues)]
            gravity = estimate * np.sign(gravity @ estimate)
    return gravity


def rotation_between(source, target):
    """Rotation matrix turning unit vector ``source`` onto ``target`` (or -target, whichever is
    closer) about their common normal; identity below 0.1 degree, like the reference."""
    angle = np.degrees(np.arccos(min(1.0, abs(float(source @ target)))))
    if angle <= 0.1:
        return np.eye(3)
    axis = np.cross(source, target)
    axis = axis / np.linalg.norm(axis)
    cross_matrix = np.array([[0.0, -axis[2], axis[1]],
                             [axis[2], 0.0, -axis[0]],
                             [-axis[1], axis[0], 0.0]])
    angle = np.radians(angle)
    return np.eye(3) + np.sin(angle) * cross_matrix + (1 - np.cos(angle)) * cross_matrix @ cross_matrix


def height_above_ground(points, gravity):
    """(H, W) height in cm of every point above the lowest one, measured against gravity after
    rotating the cloud so that gravity becomes the y axis. Scenes whose lowest point is less than
    90 cm below the camera get the floor 130 cm below it instead."""
    upright_y = rotation_between(np.array([0.0, 1.0, 0.0]), gravity)[:, 1]
    height = -_dot(upright_y, points)
    lowest = height.min()
    if lowest > FLOOR_HEIGHT_LIMIT_CM:
        lowest = FLOOR_HEIGHT_GUESS_CM
    return height - lowest


def angle_with_gravity(normals, gravity):
    """(H, W) angle in degrees between each normal and gravity. NaN normals give 180 degrees, as
    MATLAB's max(-1, NaN) = -1 does in the reference."""
    cosine = _dot(gravity, normals)
    cosine = np.where(np.isnan(cosine), -1.0, np.clip(cosine, -1.0, 1.0))
    return np.degrees(np.arccos(cosine))


def matlab_uint8(values):
    """MATLAB's uint8(): round half away from zero, saturate to 0..255, NaN -> 0. (Negative values
    saturate to 0 whichever way halves round, so floor(x + 0.5) is enough.)"""
    rounded = np.floor(values + 0.5)
    rounded[np.isnan(rounded)] = 0.0
    return np.clip(rounded, 0.0, 255.0).astype(np.uint8)
