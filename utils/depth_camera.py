"""Depth images and the camera that took them, as the tools read them (tools/depth2hha.py,
tools/infer.py): a cheap check that a file is a 16-bit depth PNG, the camera (intrinsics and the
image size they belong to) and whether it fits an image. Bad input is a ConversionError naming the
file or the flags."""
import struct
from typing import NamedTuple

import numpy as np

from utils.conversion import ConversionError
from utils.hha import check_camera

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
PNG_GREY = 0
CAMERA_FLAGS = ('fx', 'fy', 'cx', 'cy')  # the tools' --fx --fy --cx --cy


def check_png_header(path):
    """Raises ConversionError unless ``path`` starts like a 16-bit greyscale PNG (cheap: 26 bytes)."""
    with open(path, 'rb') as f:
        header = f.read(26)
    if len(header) < 26 or not header.startswith(PNG_SIGNATURE) or header[12:16] != b'IHDR':
        raise ConversionError(f'{path}: not a PNG file')
    bit_depth, colour_type = header[24], header[25]
    if bit_depth != 16 or colour_type != PNG_GREY:
        raise ConversionError(f'{path}: expected a 16-bit greyscale depth PNG, got bit depth '
                              f'{bit_depth} and PNG colour type {colour_type}')


def png_size(path):
    """(height, width) from the IHDR chunk of a PNG that check_png_header accepted."""
    with open(path, 'rb') as f:
        width, height = struct.unpack('>II', f.read(24)[16:24])
    return height, width


class Camera(NamedTuple):
    matrix: np.ndarray          # 3x3 intrinsics
    image_size: tuple           # (height, width) the intrinsics are limited to, or None
    source: str                 # where they come from, for messages


def check_camera_fits(camera: Camera, path, size):
    """The camera must fit the depth image at `path` of size (height, width)."""
    if camera.image_size not in (None, size):
        height, width = camera.image_size
        raise ConversionError(f'{path}: {size[1]}x{size[0]} depth, but {camera.source} is for {width}x{height} '
                              f'images: give this camera\'s --fx --fy --cx --cy')
    try:
        check_camera(camera.matrix, *size)
    except ValueError as error:
        raise ConversionError(f'{path}: {camera.source}: {error}') from None


def describe_camera(camera: Camera):
    fx, fy, cx, cy = camera.matrix[0, 0], camera.matrix[1, 1], camera.matrix[0, 2], camera.matrix[1, 2]
    return f'camera: fx {fx:.2f}, fy {fy:.2f}, cx {cx:.2f}, cy {cy:.2f} ({camera.source})'


def camera_from_flags(args) -> Camera:
    """The camera of all four of --fx --fy --cx --cy (the caller checks that they are given)."""
    matrix = np.array([[args.fx, 0.0, args.cx], [0.0, args.fy, args.cy], [0.0, 0.0, 1.0]])
    return Camera(matrix, None, '--fx --fy --cx --cy')
