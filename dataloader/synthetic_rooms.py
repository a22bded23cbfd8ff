"""Synthetic RGB-D rooms for the demo, with the balance between colour and depth as a knob.

Each scene is a room (floor, four walls, ceiling) seen through a pinhole camera with the NYU Depth
V2 intrinsics scaled to the output size, rendered by ray casting every pixel at once (NumPy, no
pixel loops). Objects: boxes and crates, posters and panels, balls, and unlabeled clutter
(cylinders, label 0). Two class pairs carry the knob (SceneStyle): what tells

* a panel from a poster: 'depth' (the same artwork distribution; posters lie flush on a wall,
  panels stand 15-40 cm in front of it), 'appearance' (both flush; panels are framed boards in
  one muted colour) or 'both';
* a crate from a box: 'appearance' (the same size, place and orientation distributions;
  cardboard vs slatted plastic) or 'both' (crates are also lower and wider). Floor objects have
  no stand-off that a colour image cannot see (their outline shows their shape), so crates take
  no 'depth'.

Colour: class-dependent albedo and textures, Lambertian shading by one directional light plus
ambient, exposure and pixel noise. Depth: the camera-frame z of the hit, with sensor-like noise
(a standard deviation of `depth_noise` times the depth) and holes (random blobs covering up to
`hole_rate` of the image, the far side of depth edges, beyond 9.5 m, and where the noise would make
the depth negative); holes are 0 in
Depth/NAME.png (uint16 millimetres). HHA is computed as tools/prepare_nyu.py does for NYU: from
the depth with its holes in-painted.

PRESETS names two styles: 'depth_decisive' (the demo's rooms: posters and panels differ only in
depth) and 'nyu_like' (RGB is the primary modality, as on NYU Depth V2: panels differ in both
cues, and the depth is poor enough that the RGB-only model's mIoU nears NYU's share of the RGB-D
model's).

Classes (labels 1..8, in the order of config/demo.py): wall, floor, ceiling, box, crate, poster,
panel, ball; 0 = unlabeled. Scene i is a function of (seed, i, style) alone; names are the
zero-padded scene index, training scenes first.
"""
import colorsys
import dataclasses
import fcntl
import os
import shutil
from multiprocessing import Pool
from typing import NamedTuple

import cv2
import numpy as np

from utils.hha import NYU_CAMERA, NYU_IMAGE_SIZE, inpainted_hha

CLASS_NAMES = ('wall', 'floor', 'ceiling', 'box', 'crate', 'poster', 'panel', 'ball')
UNLABELED, WALL, FLOOR, CEILING, BOX, CRATE, POSTER, PANEL, BALL = range(9)
UP = np.array([0.0, 1.0, 0.0])

MAX_DEPTH_M = 9.5           # farther points are not measured
POSTER_OFFSET_M = 0.003     # in front of the wall, so that the poster wins the depth test
PANEL_OFFSET_M = (0.15, 0.40)
BOX_SIZE_M = ((0.3, 0.25, 0.3), (0.8, 0.8, 0.8))     # (low, high) of width, height, depth
LOW_CRATE_SIZE_M = ((0.5, 0.15, 0.4), (0.9, 0.3, 0.7))  # crates whose shape differs from boxes'
DATASET_ENTRIES = ('RGB', 'Depth', 'HHA', 'Label', 'train.txt', 'test.txt')  # what a dataset holds

PANEL_CUES = ('depth', 'appearance', 'both')
CRATE_CUES = ('appearance', 'both')


@dataclasses.dataclass(frozen=True)
class SceneStyle:
    """What tells the paired classes apart, and how good the depth sensor is.

    panel_cue: how a panel differs from a poster, one of PANEL_CUES.
    crate_cue: how a crate differs from a box, one of CRATE_CUES.
    depth_noise: standard deviation of the depth noise, relative to the depth.
    hole_rate: random blobs of missing depth cover a share of each image drawn from [0, hole_rate].
    """
    panel_cue: str = 'depth'
    crate_cue: str = 'appearance'
    depth_noise: float = 0.01
    hole_rate: float = 0.06

    def __post_init__(self):
        if self.panel_cue not in PANEL_CUES:
            raise ValueError(f'panel cue must be one of {PANEL_CUES}, got {self.panel_cue!r}')
        if self.crate_cue not in CRATE_CUES:
            raise ValueError(f'crate cue must be one of {CRATE_CUES}, got {self.crate_cue!r}')
        if not 0 <= self.depth_noise < 1:
            raise ValueError(f'depth noise must be in [0, 1), got {self.depth_noise}')
        if not 0 <= self.hole_rate < 1:
            raise ValueError(f'hole rate must be in [0, 1), got {self.hole_rate}')


PRESETS = {
    'depth_decisive': SceneStyle(),
    # Depth degraded until the RGB-only / RGB-D mIoU ratio nears NYU's (README, "Synthetic rooms").
    'nyu_like': SceneStyle(panel_cue='both', crate_cue='appearance', depth_noise=0.5, hole_rate=0.95),
}


def scaled_camera(height, width):
    """The NYU colour-camera intrinsics for an image of height x width."""
    camera = NYU_CAMERA.copy()
    camera[0] *= width / NYU_IMAGE_SIZE[1]
    camera[1] *= height / NYU_IMAGE_SIZE[0]
    return camera


def _hsv(rng, hue, saturation, value):
    """An RGB colour with each HSV component drawn uniformly from its (low, high) range."""
    return np.array(colorsys.hsv_to_rgb(rng.uniform(*hue) % 1.0, rng.uniform(*saturation),
                                        rng.uniform(*value)))


def _wave_noise(rng, frequency, waves=4):
    """A smooth random field over surface coordinates (metres), values in [-1, 1]."""
    angles = rng.uniform(0, 2 * np.pi, waves)
    vectors = np.stack([np.cos(angles), np.sin(angles)], 1) * frequency
    vectors *= rng.uniform(0.5, 1.5, (waves, 1))
    phases = rng.uniform(0, 2 * np.pi, waves)
    return lambda uv: np.sin(2 * np.pi * uv @ vectors.T + phases).mean(1)


def _hash(cells):
    """A pseudo-random value in [0, 1) per integer cell (for per-plank / per-tile variation)."""
    return np.modf(np.abs(np.sin(cells * 12.9898 + 78.233) * 43758.5453))[0]


# Appearances: each takes a generator and returns albedo(uv) -> (M, 3) in [0, 1].

def wall_appearance(rng):
    colour, noise = _hsv(rng, (0, 1), (0.05, 0.25), (0.6, 0.9)), _wave_noise(rng, 2.0)
    return lambda uv: colour * (1 + 0.04 * noise(uv))[:, None]


def ceiling_appearance(rng):
    colour = _hsv(rng, (0, 1), (0, 0.04), (0.85, 0.97))
    return lambda uv: np.broadcast_to(colour, (len(uv), 3))


def floor_appearance(rng):
    kind = rng.integers(3)
    if kind == 0:  # wooden planks along u, each a little lighter or darker
        colour, width = _hsv(rng, (0.05, 0.11), (0.35, 0.6), (0.3, 0.6)), rng.uniform(0.12, 0.25)
        grain = _wave_noise(rng, 6.0)
        return lambda uv: colour * (0.8 + 0.35 * _hash(np.floor(uv[:, 1] / width))
                                    + 0.05 * grain(uv))[:, None]
    if kind == 1:  # tiles with darker grout
        colour, size = _hsv(rng, (0, 1), (0, 0.1), (0.6, 0.85)), rng.uniform(0.3, 0.6)
        return lambda uv: colour * np.where(
            (np.modf(np.abs(uv) / size)[0] < 0.04).any(1), 0.6, 1.0)[:, None]
    colour, noise = _hsv(rng, (0, 1), (0.2, 0.5), (0.25, 0.5)), _wave_noise(rng, 12.0, waves=8)
    return lambda uv: colour * (1 + 0.08 * noise(uv))[:, None]  # carpet


def box_appearance(rng):
    """Cardboard: brown, nearly uniform."""
    colour, noise = _hsv(rng, (0.07, 0.11), (0.45, 0.65), (0.55, 0.75)), _wave_noise(rng, 5.0)
    return lambda uv: colour * (1 + 0.03 * noise(uv))[:, None]


def crate_appearance(rng):
    """Plastic crate: saturated blue or green with dark horizontal slots."""
    hue = (0.55, 0.68) if rng.random() < 0.5 else (0.28, 0.40)
    colour, pitch = _hsv(rng, hue, (0.6, 0.9), (0.45, 0.8)), rng.uniform(0.08, 0.12)
    return lambda uv: colour * np.where(
        np.modf(np.abs(uv[:, 1]) / pitch)[0] < 0.35, 0.25, 1.0)[:, None]


def print_appearance(rng):
    """Printed artwork, shared by posters and panels: two colours in a random pattern over the
    quad's normalised coordinates, with a white margin half of the time."""
    first, second = (_hsv(rng, (0, 1), (0.3, 1), (0.4, 1)) for _ in range(2))
    pattern, repeats, angle = rng.integers(4), rng.integers(2, 7), rng.uniform(0, np.pi)
    centre, margin = rng.uniform(0.2, 0.8, 2), 0.06 if rng.random() < 0.5 else 0.0
    direction = np.array([np.cos(angle), np.sin(angle)])

    def albedo(uv):
        if pattern == 0:    # stripes
            mix = np.modf(np.abs(uv @ direction) * repeats)[0] < 0.5
        elif pattern == 1:  # rings
            mix = np.modf(np.linalg.norm(uv - centre, axis=1) * repeats)[0] < 0.5
        elif pattern == 2:  # blocks
            mix = np.floor(uv * repeats).sum(1) % 2 == 1
        else:               # gradient
            mix = np.clip(uv @ direction, 0, 1)
        colour = first + (second - first) * np.asarray(mix, dtype=np.float64)[:, None]
        border = ((uv < margin) | (uv > 1 - margin)).any(1)
        return np.where(border[:, None], 0.95, colour)
    return albedo


def board_appearance(rng):
    """A board (pinboard, acoustic panel): one muted colour with a faint texture in a dark frame;
    the panels' own look when their cue includes appearance."""
    colour, frame = _hsv(rng, (0, 1), (0.1, 0.4), (0.45, 0.8)), rng.uniform(0.04, 0.08)
    noise = _wave_noise(rng, 6.0)

    def albedo(uv):
        border = ((uv < frame) | (uv > 1 - frame)).any(1)
        return np.where(border[:, None], 0.12, colour * (1 + 0.05 * noise(uv))[:, None])
    return albedo


def ball_appearance(rng):
    first, second = (_hsv(rng, (0, 1), (0.6, 1), (0.5, 1)) for _ in range(2))
    segments = rng.choice([1, 4, 6])  # plain, or beach-ball segments
    return lambda uv: np.where((np.floor(uv[:, 0] * segments) % 2 == 1)[:, None], second, first)


def clutter_appearance(rng):
    colour = _hsv(rng, (0, 1), (0, 0.3), (0.2, 0.7))
    return lambda uv: np.broadcast_to(colour, (len(uv), 3))


# Surfaces: intersect(origin, directions) -> t (inf where missed); surface(points) -> normals, uv.

class Plane:
    """One face of the room (infinite plane, visible from the side `normal` points to)."""

    def __init__(self, point, normal, u_axis, label, albedo):
        self.point, self.normal = np.asarray(point, float), np.asarray(normal, float)
        self.u_axis = np.asarray(u_axis, float)
        self.v_axis = np.cross(self.normal, self.u_axis)
        self.label, self.albedo = label, albedo

    def intersect(self, origin, directions):
        facing = directions @ self.normal
        with np.errstate(divide='ignore', invalid='ignore'):
            t = ((self.point - origin) @ self.normal) / facing
        return np.where(facing < 0, t, np.inf)

    def surface(self, points):
        offsets = points - self.point
        uv = np.stack([offsets @ self.u_axis, offsets @ self.v_axis], 1)
        return np.broadcast_to(self.normal, points.shape), uv


class Quad(Plane):
    """A rectangle (poster, panel), visible from both sides; uv normalised to [0, 1]."""

    def __init__(self, centre, normal, u_axis, size, label, albedo):
        super().__init__(centre, normal, u_axis, label, albedo)
        self.half_size = np.asarray(size, float) / 2

    def intersect(self, origin, directions):
        with np.errstate(divide='ignore', invalid='ignore'):
            t = ((self.point - origin) @ self.normal) / (directions @ self.normal)
            offsets = origin - self.point + t[:, None] * directions
            inside = ((np.abs(offsets @ self.u_axis) <= self.half_size[0])
                      & (np.abs(offsets @ self.v_axis) <= self.half_size[1]))
        return np.where((t > 0) & inside, t, np.inf)

    def surface(self, points):
        normals, uv = super().surface(points)
        return normals, uv / (2 * self.half_size) + 0.5


class Box:
    """A box standing on the floor, turned by `yaw` about the vertical."""

    def __init__(self, centre, size, yaw, label, albedo):
        self.centre, self.half_size = np.asarray(centre, float), np.asarray(size, float) / 2
        c, s = np.cos(yaw), np.sin(yaw)
        self.axes = np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])  # rows: local x, y, z in world
        self.label, self.albedo = label, albedo

    def intersect(self, origin, directions):
        local_origin = self.axes @ (origin - self.centre)
        local_directions = directions @ self.axes.T
        with np.errstate(divide='ignore', invalid='ignore'):
            t1 = (-self.half_size - local_origin) / local_directions
            t2 = (self.half_size - local_origin) / local_directions
        near = np.nan_to_num(np.minimum(t1, t2), nan=-np.inf).max(1)
        far = np.nan_to_num(np.maximum(t1, t2), nan=np.inf).min(1)
        return np.where((near <= far) & (near > 0), near, np.inf)

    def surface(self, points):
        local = (points - self.centre) @ self.axes.T
        face = np.argmax(np.abs(local) / self.half_size, axis=1)
        normals = self.axes[face] * np.sign(local[np.arange(len(local)), face])[:, None]
        # Side faces: (horizontal, height) coordinates; the top: (x, z).
        uv = np.where((face == 0)[:, None], local[:, [2, 1]],
                      np.where((face == 2)[:, None], local[:, [0, 1]], local[:, [0, 2]]))
        return normals, uv


class Sphere:
    def __init__(self, centre, radius, label, albedo):
        self.centre, self.radius = np.asarray(centre, float), float(radius)
        self.label, self.albedo = label, albedo

    def intersect(self, origin, directions):
        offset = origin - self.centre
        a = np.einsum('ij,ij->i', directions, directions)
        b = directions @ offset
        discriminant = b * b - a * (offset @ offset - self.radius ** 2)
        t = (-b - np.sqrt(np.maximum(discriminant, 0))) / a
        return np.where((discriminant >= 0) & (t > 0), t, np.inf)

    def surface(self, points):
        normals = (points - self.centre) / self.radius
        longitude = np.arctan2(normals[:, 2], normals[:, 0]) / (2 * np.pi) + 0.5
        latitude = np.arcsin(np.clip(normals[:, 1], -1, 1)) / np.pi + 0.5
        return normals, np.stack([longitude, latitude], 1)


class Cylinder:
    """A vertical cylinder standing on the floor (clutter)."""

    def __init__(self, base, radius, height, label, albedo):
        self.base, self.radius, self.height = np.asarray(base, float), float(radius), float(height)
        self.label, self.albedo = label, albedo

    def intersect(self, origin, directions):
        offset = (origin - self.base)[[0, 2]]
        flat = directions[:, [0, 2]]
        a = np.einsum('ij,ij->i', flat, flat)
        b = flat @ offset
        discriminant = b * b - a * (offset @ offset - self.radius ** 2)
        with np.errstate(divide='ignore', invalid='ignore'):
            side = (-b - np.sqrt(np.maximum(discriminant, 0))) / a
            top = (self.base[1] + self.height - origin[1]) / directions[:, 1]
        side_y = origin[1] + side * directions[:, 1] - self.base[1]
        side = np.where((discriminant >= 0) & (side > 0) & (side_y >= 0) & (side_y <= self.height),
                        side, np.inf)
        top_xz = origin[[0, 2]] + top[:, None] * flat - self.base[[0, 2]]
        top = np.where((top > 0) & ((top_xz ** 2).sum(1) <= self.radius ** 2), top, np.inf)
        return np.minimum(side, top)

    def surface(self, points):
        offset = points - self.base
        on_top = offset[:, 1] > self.height - 1e-6
        radial = offset * np.array([1.0, 0.0, 1.0]) / self.radius
        normals = np.where(on_top[:, None], UP, radial)
        uv = np.stack([np.arctan2(offset[:, 2], offset[:, 0]), offset[:, 1]], 1)
        return normals, uv


class Scene:
    """A camera in a room with objects: everything `render` needs, drawn from one generator."""

    def __init__(self, rng, height, width, style):
        self.camera = scaled_camera(height, width)
        self.size = (height, width)
        self.style = style
        self.room = rng.uniform((3.0, 2.4, 3.5), (6.0, 3.2, 7.0))       # x (width), y (up), z
        room_x, room_y, room_z = self.room
        self.position = np.array([rng.uniform(0.3, 0.7) * room_x, rng.uniform(1.0, 1.7),
                                  rng.uniform(0.2, 0.8)])
        self.yaw, pitch = np.radians(rng.uniform(-30, 30)), np.radians(rng.uniform(-25, 5))
        self.forward = np.array([np.sin(self.yaw) * np.cos(pitch), np.sin(pitch),
                                 np.cos(self.yaw) * np.cos(pitch)])
        self.right = np.cross(self.forward, UP)
        self.right /= np.linalg.norm(self.right)
        self.down = np.cross(self.forward, self.right)
        elevation, azimuth = np.radians(rng.uniform(30, 80)), rng.uniform(0, 2 * np.pi)
        self.light = np.array([np.cos(elevation) * np.cos(azimuth), np.sin(elevation),
                               np.cos(elevation) * np.sin(azimuth)])
        self.ambient, self.exposure = rng.uniform(0.35, 0.55), rng.uniform(0.9, 1.15)

        wall = wall_appearance(rng)
        self.surfaces = [
            Plane((0, 0, 0), (0, 1, 0), (1, 0, 0), FLOOR, floor_appearance(rng)),
            Plane((0, room_y, 0), (0, -1, 0), (1, 0, 0), CEILING, ceiling_appearance(rng)),
            Plane((0, 0, 0), (1, 0, 0), (0, 0, 1), WALL, wall),
            Plane((room_x, 0, 0), (-1, 0, 0), (0, 0, 1), WALL, wall),
            Plane((0, 0, 0), (0, 0, 1), (1, 0, 0), WALL, wall),
            Plane((0, 0, room_z), (0, 0, -1), (1, 0, 0), WALL, wall),
        ]
        self._footprints = []
        self._wall_items = []
        # Classes that share a geometry are placed in random order, so that neither gets the
        # emptier room more often.
        containers = [BOX] * rng.integers(0, 3) + [CRATE] * rng.integers(0, 3)
        for label in rng.permutation(containers):
            self._add_container(rng, label)
        for _ in range(rng.integers(0, 3)):
            radius = rng.uniform(0.1, 0.3)
            spot = self._floor_spot(rng, radius)
            if spot is not None:
                self.surfaces.append(Sphere((spot[0], radius, spot[1]), radius, BALL,
                                            ball_appearance(rng)))
        for _ in range(rng.integers(0, 2)):
            radius = rng.uniform(0.1, 0.25)
            spot = self._floor_spot(rng, radius)
            if spot is not None:
                self.surfaces.append(Cylinder((spot[0], 0, spot[1]), radius, rng.uniform(0.3, 1.0),
                                              UNLABELED, clutter_appearance(rng)))
        wall_items = [POSTER] * rng.integers(1, 3) + [PANEL] * rng.integers(1, 3)
        for label in rng.permutation(wall_items):
            self._add_wall_item(rng, label)

    def _add_container(self, rng, label):
        """A box or a crate: the same place and orientation distributions; the same sizes unless
        the crate cue is 'both'."""
        low_crate = label == CRATE and self.style.crate_cue == 'both'
        size = rng.uniform(*(LOW_CRATE_SIZE_M if low_crate else BOX_SIZE_M))
        yaw = rng.uniform(0, np.pi / 2)
        appearance = box_appearance(rng) if label == BOX else crate_appearance(rng)
        spot = self._floor_spot(rng, np.hypot(size[0], size[2]) / 2)
        if spot is not None:
            self.surfaces.append(Box((spot[0], size[1] / 2, spot[1]), size, yaw, label, appearance))

    def _floor_spot(self, rng, radius, tries=20):
        """(x, z) of a free floor spot in view, 1-4.5 m from the camera, or None."""
        half_fov = np.arctan(self.size[1] / 2 / self.camera[0, 0])
        margin = radius + 0.05
        for _ in range(tries):
            angle = self.yaw + rng.uniform(-0.8, 0.8) * half_fov
            distance = rng.uniform(1.0, 4.5)
            x = self.position[0] + distance * np.sin(angle)
            z = self.position[2] + distance * np.cos(angle)
            inside = margin <= x <= self.room[0] - margin and margin <= z <= self.room[2] - margin
            free = all(np.hypot(x - other_x, z - other_z) > margin + other_radius
                       for other_x, other_z, other_radius in self._footprints)
            if inside and free:
                self._footprints.append((x, z, radius))
                return x, z
        return None

    def _add_wall_item(self, rng, label, tries=20):
        """A poster or a panel on the far or a side wall, centre in view. Both draw size and place
        from the same distributions; panels stand out from the wall when their cue includes depth,
        and look like boards when it includes appearance (else both show printed artwork)."""
        room_x, room_y, room_z = self.room
        walls = (  # (point on the wall, inward normal, along-wall axis, along-wall range)
            ((0, 0, room_z), (0, 0, -1), (1, 0, 0), (0, room_x)),
            ((0, 0, 0), (1, 0, 0), (0, 0, 1), (self.position[2] + 1.0, room_z)),
            ((room_x, 0, 0), (-1, 0, 0), (0, 0, 1), (self.position[2] + 1.0, room_z)))
        cue = self.style.panel_cue if label == PANEL else None
        size = rng.uniform((0.4, 0.4), (1.2, 1.0))
        albedo = board_appearance(rng) if cue in ('appearance', 'both') else print_appearance(rng)
        offset = rng.uniform(*PANEL_OFFSET_M) if cue in ('depth', 'both') else POSTER_OFFSET_M
        for _ in range(tries):
            wall = rng.choice(3, p=(0.5, 0.25, 0.25))
            point, normal, axis, (low, high) = (np.asarray(v, float) for v in walls[wall])
            margin = size[0] / 2 + PANEL_OFFSET_M[1] + 0.05
            if high - low <= 2 * margin:
                continue
            along = rng.uniform(low + margin, high - margin)
            lowest = 0.3 + size[1] / 2
            elevation = rng.uniform(lowest, max(lowest, min(room_y - 0.15 - size[1] / 2, 2.1)))
            centre = point * np.abs(normal) + axis * along + UP * elevation + normal * offset
            overlaps = any(w == wall and abs(along - a) < (size[0] + s[0]) / 2 + 0.1
                           and abs(elevation - e) < (size[1] + s[1]) / 2 + 0.1
                           for w, a, e, s in self._wall_items)
            if not overlaps and self._in_view(centre):
                self._wall_items.append((wall, along, elevation, size))
                self.surfaces.append(Quad(centre, normal, axis, size, label, albedo))
                return

    def _in_view(self, point):
        relative = point - self.position
        depth = relative @ self.forward
        if depth <= 0.5:
            return False
        column = self.camera[0, 0] * (relative @ self.right) / depth + self.camera[0, 2] - 1
        row = self.camera[1, 1] * (relative @ self.down) / depth + self.camera[1, 2] - 1
        return 0 <= column < self.size[1] and 0 <= row < self.size[0]

    def ray_directions(self):
        """(H*W, 3) world directions whose camera-frame z is 1, so that the hit distance along
        them is the depth. Pixel centres are numbered from 1, as utils.hha assumes."""
        height, width = self.size
        (fx, _, cx), (_, fy, cy) = self.camera[:2]
        columns, rows = np.meshgrid(np.arange(1, width + 1) - cx, np.arange(1, height + 1) - cy)
        return ((columns / fx).reshape(-1, 1) * self.right + (rows / fy).reshape(-1, 1) * self.down
                + self.forward)


def render(scene, rng):
    """Returns rgb (H, W, 3) uint8 in RGB order, depth (H, W) float32 metres with 0 at holes,
    label (H, W) uint8 and instances (H, W) int32 (index into scene.surfaces)."""
    height, width = scene.size
    directions = scene.ray_directions()
    distances = np.stack([surface.intersect(scene.position, directions)
                          for surface in scene.surfaces])
    instances = np.argmin(distances, axis=0)
    depth = distances[instances, np.arange(len(instances))]
    points = scene.position + depth[:, None] * directions

    colour = np.zeros((len(depth), 3))
    labels = np.zeros(len(depth), np.uint8)
    for index, surface in enumerate(scene.surfaces):
        hit = instances == index
        if not hit.any():
            continue
        normals, uv = surface.surface(points[hit])
        # Light the side that faces the camera (quads are two-sided).
        normals = normals * np.where((normals * directions[hit]).sum(1) > 0, -1.0, 1.0)[:, None]
        shading = scene.ambient + (1 - scene.ambient) * np.clip(normals @ scene.light, 0, None)
        colour[hit] = surface.albedo(uv) * shading[:, None]
        labels[hit] = surface.label
    colour = colour * scene.exposure + rng.normal(0, 0.015, colour.shape)
    rgb = np.clip(np.rint(colour * 255), 0, 255).astype(np.uint8).reshape(height, width, 3)

    depth = depth.reshape(height, width)
    measured = depth * (1 + scene.style.depth_noise * rng.normal(size=depth.shape))
    # A sensor returns nothing rather than a negative depth (strong noise can push it below 0).
    measured[sensor_holes(depth, rng, scene.style.hole_rate) | (measured <= 0)] = 0
    return (rgb, measured.astype(np.float32), labels.reshape(height, width),
            instances.reshape(height, width).astype(np.int32))


def sensor_holes(depth, rng, hole_rate):
    """Where a depth sensor returns nothing: random blobs (up to `hole_rate` of the image), the far
    side of depth edges (the shadow of the nearer surface), and points too far away."""
    height, width = depth.shape
    coarse = rng.normal(size=(max(2, height // 10), max(2, width // 10))).astype(np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    blobs = field > np.quantile(field, 1 - rng.uniform(0.0, hole_rate))
    nearest_neighbour = cv2.erode(depth.astype(np.float32), np.ones((3, 3), np.uint8))
    shadows = (depth - nearest_neighbour > 0.05 * depth) & (rng.random(depth.shape) < 0.7)
    return blobs | shadows | (depth > MAX_DEPTH_M)


class RenderedScene(NamedTuple):
    rgb: np.ndarray         # (H, W, 3) uint8, RGB order
    depth: np.ndarray       # (H, W) float32 metres, 0 = no measurement
    hha: np.ndarray         # (H, W, 3) uint8, utils.hha's channel order
    label: np.ndarray       # (H, W) uint8, 0 = unlabeled, 1..8 = CLASS_NAMES
    instances: np.ndarray   # (H, W) int32, index into scene.surfaces
    scene: Scene


def make_scene(seed, index, height=120, width=160, style=PRESETS['depth_decisive']):
    """Scene `index` of the dataset drawn with `seed` in `style`."""
    rng = np.random.default_rng((seed, index))
    scene = Scene(rng, height, width, style)
    rgb, depth, label, instances = render(scene, rng)
    return RenderedScene(rgb, depth, inpainted_hha(depth, scene.camera), label, instances, scene)


def _write_png(path, image):
    if not cv2.imwrite(path, image):
        raise OSError(f"could not write '{path}'")


def _write_scene(job):
    root, name, seed, index, height, width, style = job
    rendered = make_scene(seed, index, height, width, style)
    depth_mm = np.rint(rendered.depth * 1000).astype(np.uint16)
    _write_png(os.path.join(root, 'RGB', name + '.png'), rendered.rgb[..., ::-1])
    _write_png(os.path.join(root, 'Depth', name + '.png'), depth_mm)
    _write_png(os.path.join(root, 'HHA', name + '.png'), rendered.hha[..., ::-1])
    _write_png(os.path.join(root, 'Label', name + '.png'), rendered.label)
    return name


def _clear_dataset_folder(root, overwrite):
    """Refuses a folder that already holds files unless `overwrite`; then removes the dataset
    written there before (DATASET_ENTRIES; nothing else), so that no stale scene survives."""
    if not os.path.isdir(root) or not os.listdir(root):
        return
    if not overwrite:
        raise FileExistsError(f"'{root}' already holds files")
    for entry in DATASET_ENTRIES:
        path = os.path.join(root, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def make_synthetic_dataset(root, num_train=200, num_test=50, height=120, width=160, seed=0,
                           style=PRESETS['depth_decisive'], workers=None, progress=None,
                           overwrite=False):
    """Writes num_train + num_test scenes in `style` in the official layout under `root`: RGB/,
    Depth/, HHA/, Label/ (NAME.png each) and train.txt / test.txt (bare names). A folder that
    already holds files raises FileExistsError unless `overwrite`, which first removes the dataset
    there. `workers` processes render (default: all CPUs); `progress` wraps the iterator of
    finished names (e.g. tqdm)."""
    if num_train < 1 or num_test < 1 or height < 16 or width < 16:
        raise ValueError(f'expected num_train, num_test >= 1 and an image of at least 16x16, got '
                         f'num_train={num_train}, num_test={num_test}, {height}x{width}')
    _clear_dataset_folder(root, overwrite)
    total = num_train + num_test
    digits = max(4, len(str(total - 1)))
    names = [f'{index:0{digits}d}' for index in range(total)]
    for folder in ('RGB', 'Depth', 'HHA', 'Label'):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    jobs = [(root, name, seed, index, height, width, style) for index, name in enumerate(names)]
    workers = min(workers or os.cpu_count() or 1, total)
    wrap = progress or (lambda iterator, **_: iterator)
    if workers > 1:
        with Pool(workers) as pool:
            for _ in wrap(pool.imap_unordered(_write_scene, jobs, chunksize=4), total=total):
                pass
    else:
        for _ in wrap(map(_write_scene, jobs), total=total):
            pass
    for split, split_names in (('train', names[:num_train]), ('test', names[num_train:])):
        with open(os.path.join(root, f'{split}.txt'), 'w') as f:
            f.write('\n'.join(split_names) + '\n')


def ensure_synthetic_dataset(cfg, workers=None):
    """Writes the dataset a config names (synthetic_preset, synthetic_seed, its image counts and
    size) to its dataset_path unless the training split is already there, which is used as it is.
    Returns True when it wrote; configs of real datasets (synthetic_preset None) are left alone.
    A folder that holds files but no split (an interrupted generation) raises FileExistsError.
    Processes that start at once (two grids, say) take turns on a lock file beside the folder: one
    writes, the others then find the split and use it."""
    split = os.path.join(cfg.dataset_path, cfg.train_source)
    if cfg.synthetic_preset is None or os.path.isfile(split):
        return False
    root = os.path.abspath(cfg.dataset_path)
    os.makedirs(os.path.dirname(root), exist_ok=True)
    with open(os.path.join(os.path.dirname(root), f'.{os.path.basename(root)}.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # released when the file closes or the process dies
        if os.path.isfile(split):
            return False
        print(f'generating {cfg.num_train_imgs} + {cfg.num_eval_imgs} synthetic scenes '
              f'(preset {cfg.synthetic_preset}, seed {cfg.synthetic_seed}) in {cfg.dataset_path}', flush=True)
        try:
            make_synthetic_dataset(cfg.dataset_path, cfg.num_train_imgs, cfg.num_eval_imgs, cfg.image_height,
                                   cfg.image_width, cfg.synthetic_seed, PRESETS[cfg.synthetic_preset], workers)
        except FileExistsError as error:
            raise FileExistsError(f'{error} but no {cfg.train_source}: remove it, or regenerate it with '
                                  f'tools/make_synthetic.py --overwrite') from None
    return True
