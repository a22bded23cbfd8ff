"""What the tools that convert a dataset release share: one error for bad input, MATLAB variables,
16-bit depth PNGs (plain or as SUN RGB-D stores them), atomic image and split-file writes, and the
run over images in worker processes with a progress bar that skips finished images."""
import os
from multiprocessing import Pool

import cv2
import h5py
import numpy as np
import scipy.io
from tqdm import tqdm

from utils.io import atomic_write

DEPTH_ENCODINGS = ('plain', 'sun-rgbd')


class ConversionError(ValueError):
    """An input of a data conversion (a release file, a depth image, a flag) is absent or does not
    hold what it should; the message names it."""


def load_mat_variable(path, name):
    """One variable of a MATLAB file, v5 (scipy) or v7.3 (HDF5, numeric arrays only), as a flat array."""
    if not os.path.isfile(path):
        raise ConversionError(f"'{path}' does not exist")
    try:
        variables = scipy.io.loadmat(path, variable_names=[name])
    except NotImplementedError:  # v7.3
        with h5py.File(path, 'r') as f:
            if name in f and not isinstance(f[name], h5py.Dataset):
                raise ConversionError(f"'{path}': '{name}' is a struct or cell of a MATLAB v7.3 file, which "
                                      f"this reader does not take (expected the release's file)") from None
            variables = {name: f[name][()]} if name in f else {}
    except ValueError as e:
        raise ConversionError(f"'{path}' is not a MATLAB file: {e}") from e
    if name not in variables:
        raise ConversionError(f"'{path}' has no variable '{name}'")
    return np.asarray(variables[name]).ravel()


def read_depth_png(path, encoding='plain'):
    """A 16-bit single-channel depth PNG as uint16. 'sun-rgbd' undoes SUN RGB-D's storage: its
    toolbox reads a file as bitor(bitshift(v, -3), bitshift(v, 16 - 3)), the 16 bits rotated right
    by 3, which gives millimetres."""
    depth = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if depth is None:
        raise ConversionError(f'{path}: cannot be read as an image (corrupt PNG?)')
    if depth.dtype != np.uint16 or depth.ndim != 2:
        raise ConversionError(f'{path}: expected a 16-bit single-channel depth PNG, got '
                              f'{depth.dtype} with shape {depth.shape}')
    if encoding == 'sun-rgbd':
        depth = (depth >> 3) | (depth << 13)  # uint16: the bits shifted out on the left are dropped
    return depth


def write_image(path, image, params=()):
    """Encodes `image` in the format of the path's extension and writes it atomically."""
    ok, encoded = cv2.imencode(os.path.splitext(path)[1], np.ascontiguousarray(image), list(params))
    if not ok:
        raise OSError(f"could not encode '{path}'")
    atomic_write(path, encoded.tobytes(), durable=False)


def write_split(path, names):
    """A split file: one bare name a line."""
    atomic_write(path, ''.join(name + '\n' for name in names), durable=False)


def unfinished(items, output_paths):
    """The items of which some output file (`output_paths(item)`) is absent: those still to do."""
    return [item for item in items if not all(map(os.path.isfile, output_paths(item)))]


def _start_worker(initializer, initargs):
    cv2.setNumThreads(1)  # one process per core already
    initializer(*initargs)


def run_parallel(function, items, workers, initializer, initargs, desc):
    """Calls `function(item)` for every item with a progress bar, in up to `workers` processes,
    each first set up by `initializer(*initargs)`. An exception stops the run and reaches the
    caller; files already written stay, so the next run skips them."""
    if workers > 1 and len(items) > 1:
        with Pool(min(workers, len(items)), initializer=_start_worker,
                  initargs=(initializer, initargs)) as pool:
            for _ in tqdm(pool.imap_unordered(function, items), total=len(items), desc=desc):
                pass
    else:
        initializer(*initargs)
        for item in tqdm(items, desc=desc):
            function(item)
