"""Build the procedural toy assets in ``assets/``: brightly coloured objects made from trimesh primitives.

Conventions shared by every object: Y up, the object's front faces +Z, about 1.6-2 units in size around the
origin, vertex colours (white factor × COLOR_0) plus optional small procedural textures, a few thousand faces,
and deterministic output (fixed geometry, numpy-drawn textures). Every object is chunky (parts at least ~0.15
units thick) with big flat areas of saturated colour so it stays recognisable at 32×32, and front/back and
left/right are asymmetric (the training captions say "a <name>, <front|side|back|overhead> view" and the
text-to-3D runs are scored for Janus artefacts):

- ``robot`` -> ``assets/robot.glb`` (~3k faces, three materials): a boxy humanoid. Vertex-coloured parts
  (body with a vertical colour gradient, legs, feet, arms, hands, ears, neck, a green backpack on the back
  only), one textured material (a procedurally drawn atlas with the face screen: eyes, a wink, a smile; and
  the chest panel: coloured buttons, one per corner, so flips and mirrors are visible) and a plain red factor
  material (the antenna ball). Its left arm (+X) is raised.
- ``car`` -> ``assets/car.glb`` (~1.2k faces): a blue toy car, long along Z, on four black wheels with grey
  hubcaps, a yellow roof with a white racing stripe on the car's right-hand (+X) half and a green suitcase on
  its left (−X) half. Front: yellow headlights, a dark grille, a light-blue windshield with the driver's dark
  silhouette on the +X half. Back: an orange rear panel, red tail lights, a black spare wheel, a dark rear
  window, an exhaust on −X. Sides: light-blue windows, a white number disc on the +X door, an orange stripe
  along −X.
- ``penguin`` -> ``assets/penguin.glb`` (~4.5k faces): a chubby penguin with a black back, head and
  flippers; a white belly and a white face mask (with black eyes), an orange beak and orange feet on the
  front only; a red scarf whose tail (yellow-banded) hangs down the front on its left (+X); its right flipper
  (−X) is raised in a wave.
- ``mushroom-house`` -> ``assets/mushroom_house.glb`` (~3k faces): a cottage in a mushroom: a big red dome
  cap with white spots (beige underneath), a pale cream stem-house with a brown arched door, a light-blue
  window (on the +X side of the front) and a stone path on the front (+Z), a grey chimney through the cap
  (on the −X side) and dark-green ivy on the back (−Z), all on a green grass disc.

Usage: ``python tools/make_asset.py [--object robot|car|penguin|mushroom-house|all] [--out PATH]``
(default: the robot to ``assets/robot.glb``; ``--out`` only with a single object; otherwise each object is
written to ``assets/<file name>``, see FILE_NAMES).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Union

import numpy as np
import torch
import trimesh

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dreamcore.meshes.asset import Material, MeshAsset  # noqa: E402
from dreamcore.meshes.io import asset_to_trimesh  # noqa: E402

TEX_H, TEX_W = 64, 128  # robot atlas: left half face screen, right half chest panel
MAT_VERTEX, MAT_TEXTURE, MAT_RED = 0, 1, 2

Color = Union[tuple, np.ndarray, Callable[[np.ndarray], np.ndarray]]


# ----------------------------------------------------------------------------------------------- texture
def _disk(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def draw_atlas() -> np.ndarray:
    """[64, 128, 3] float32 sRGB atlas, row 0 = top. Left 64×64: face screen; right 64×64: chest panel."""
    img = np.zeros((TEX_H, TEX_W, 3), np.float32)
    yy, xx = np.mgrid[0:TEX_H, 0:TEX_W].astype(np.float32) + 0.5
    # face screen: light cyan with a dark frame
    face = xx < 64
    img[face] = (0.10, 0.15, 0.30)
    img[face & (xx > 4) & (xx < 60) & (yy > 4) & (yy < 60)] = (0.70, 0.95, 1.00)
    img[_disk(yy, xx, 24, 19, 7)] = (0.05, 0.05, 0.10)  # image-left eye (the robot's right eye): open
    img[_disk(yy, xx, 22, 17, 2.5)] = (1.0, 1.0, 1.0)  # its highlight
    img[(np.abs(yy - 24) < 2) & (np.abs(xx - 45) < 8)] = (0.05, 0.05, 0.10)  # image-right eye: a wink
    smile = (np.abs(np.hypot(yy - 34, xx - 32) - 16) < 2.5) & (yy > 42) & face
    img[smile] = (0.90, 0.10, 0.20)
    img[_disk(yy, xx, 40, 50, 5)] = (1.00, 0.55, 0.70)  # one pink cheek, image-right only
    # chest panel: yellow, a coloured button in each corner, a white bar in the middle
    panel = xx >= 64
    img[panel] = (0.15, 0.15, 0.18)
    img[panel & (xx > 67) & (xx < 125) & (yy > 3) & (yy < 61)] = (1.00, 0.85, 0.15)
    img[_disk(yy, xx, 14, 78, 8)] = (0.95, 0.10, 0.10)  # top-left red
    img[_disk(yy, xx, 14, 114, 8)] = (0.10, 0.80, 0.20)  # top-right green
    img[_disk(yy, xx, 50, 78, 8)] = (0.15, 0.30, 1.00)  # bottom-left blue
    img[(np.abs(yy - 50) < 6) & (np.abs(xx - 114) < 8)] = (0.60, 0.20, 0.80)  # bottom-right purple square
    img[(np.abs(yy - 32) < 3) & (xx > 74) & (xx < 118)] = (1.0, 1.0, 1.0)  # middle bar
    return img


# ---------------------------------------------------------------------------------------------- geometry
def _placed(mesh: trimesh.Trimesh, translate=(0.0, 0.0, 0.0), rotate: np.ndarray | None = None) -> trimesh.Trimesh:
    mesh = mesh.copy()
    if rotate is not None:
        mesh.apply_transform(rotate)
    mesh.apply_translation(translate)
    return mesh


_AXIS_FROM_Z = {  # rotations taking trimesh's +Z-aligned primitives (cylinder, cone, capsule, torus) to an axis
    "z": None,
    "y": trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]),
    "x": trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]),
    "-z": trimesh.transformations.rotation_matrix(np.pi, [1, 0, 0]),
}


def _box(extents, center, subdivisions: int = 0) -> trimesh.Trimesh:
    mesh = trimesh.creation.box(extents=extents)
    for _ in range(subdivisions):
        mesh = mesh.subdivide()
    return _placed(mesh, center)


def _cylinder(radius: float, height: float, center, axis: str = "y", sections: int = 24) -> trimesh.Trimesh:
    mesh = trimesh.creation.cylinder(radius=radius, height=height, sections=sections)  # along z
    return _placed(mesh, center, _AXIS_FROM_Z[axis])


def _sphere(radius: float, center, subdivisions: int = 2) -> trimesh.Trimesh:
    return _placed(trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius), center)


def _ellipsoid(radii, center, subdivisions: int = 2, rotate: np.ndarray | None = None) -> trimesh.Trimesh:
    """An icosphere scaled to ``radii`` (x, y, z), then rotated (about its centre) and moved to ``center``."""
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)
    mesh.apply_scale(np.asarray(radii, np.float64))
    return _placed(mesh, center, rotate)


def _cone(radius: float, height: float, base_center, axis: str = "z", sections: int = 16) -> trimesh.Trimesh:
    """A cone whose base disc is centred at ``base_center`` and whose tip points along ``axis``."""
    return _placed(trimesh.creation.cone(radius=radius, height=height, sections=sections), base_center,
                   _AXIS_FROM_Z[axis])


def _torus(major: float, minor: float, center, axis: str = "y", sections: tuple[int, int] = (24, 8)):
    mesh = trimesh.creation.torus(major, minor, major_sections=sections[0], minor_sections=sections[1])
    return _placed(mesh, center, _AXIS_FROM_Z[axis])


def _rot(angle_deg: float, axis) -> np.ndarray:
    return trimesh.transformations.rotation_matrix(np.deg2rad(angle_deg), axis)


def _align_y(direction) -> np.ndarray:
    """4x4 rotation taking +Y to ``direction``."""
    return trimesh.geometry.align_vectors(np.array([0.0, 1.0, 0.0]), np.asarray(direction, np.float64))


def _quad(x0: float, x1: float, y0: float, y1: float, z: float, u0: float, u1: float, v0: float, v1: float):
    """A +Z facing rectangle with glTF UVs: top-left corner (x0, y1) -> (u0, v0)."""
    vertices = np.array([[x0, y1, z], [x1, y1, z], [x1, y0, z], [x0, y0, z]], np.float64)
    uvs = np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]], np.float64)
    faces = np.array([[0, 2, 1], [0, 3, 2]], np.int64)  # counter-clockwise seen from +Z
    return vertices, faces, uvs


def _gradient(mesh: trimesh.Trimesh, bottom, top) -> np.ndarray:
    """Per-vertex colours blending ``bottom`` -> ``top`` with height."""
    y = mesh.vertices[:, 1]
    t = ((y - y.min()) / max(float(np.ptp(y)), 1e-9))[:, None]
    return (1 - t) * np.asarray(bottom) + t * np.asarray(top)


def _regions(base, *rules: tuple[Callable[[np.ndarray], np.ndarray], tuple]) -> Callable[[np.ndarray], np.ndarray]:
    """A per-vertex colour function: ``base`` everywhere, then each ``(mask_fn(vertices) -> [V] bool, colour)``
    painted over it in order (later rules win)."""

    def paint(vertices: np.ndarray) -> np.ndarray:
        colors = np.tile(np.asarray(base, np.float64), (len(vertices), 1))
        for mask_fn, color in rules:
            colors[mask_fn(vertices)] = color
        return colors

    return paint


class Parts:
    """Placed primitives collected into one MeshAsset: each part brings vertices, faces, optional UVs,
    per-vertex colours and a material index; parts without UVs get (0, 0) when any part has UVs."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, int]] = []

    def add(self, mesh: trimesh.Trimesh, color: Color, material: int = MAT_VERTEX) -> None:
        """Add a mesh coloured by a constant RGB, a [V, 3] array, or a function of its [V, 3] vertices."""
        vertices = np.asarray(mesh.vertices)
        if callable(color):
            color = color(vertices)
        colors = np.broadcast_to(np.asarray(color, np.float64), (len(vertices), 3))
        self.parts.append((vertices, np.asarray(mesh.faces), None, colors, material))

    def add_raw(self, vertices, faces, uvs, colors, material: int) -> None:
        self.parts.append((vertices, faces, uvs, colors, material))

    def asset(self, materials: list[Material]) -> MeshAsset:
        parts = self.parts
        offsets = np.cumsum([0] + [len(p[0]) for p in parts])
        vertices = np.concatenate([p[0] for p in parts])
        faces = np.concatenate([p[1] + o for p, o in zip(parts, offsets[:-1])])
        uvs = None
        if any(p[2] is not None for p in parts):
            uvs = np.concatenate([p[2] if p[2] is not None else np.zeros((len(p[0]), 2)) for p in parts])
        colors = np.concatenate([p[3] for p in parts])
        face_material = np.concatenate([np.full(len(p[1]), p[4], np.int64) for p in parts])

        def as_f32(a):
            return None if a is None else torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

        return MeshAsset(
            vertices=as_f32(vertices),
            faces=torch.from_numpy(faces.astype(np.int64)),
            uvs=as_f32(uvs),
            vertex_colors=as_f32(colors),
            face_material=torch.from_numpy(face_material),
            materials=materials,
        )


# ------------------------------------------------------------------------------------------------ robot
def build_robot() -> MeshAsset:
    """The robot as one MeshAsset (display colours)."""
    parts = Parts()
    add = parts.add

    body = _box((0.80, 0.70, 0.50), (0.0, -0.05, 0.0), subdivisions=3)
    add(body, _gradient(body, (0.10, 0.35, 0.95), (0.25, 0.80, 1.00)))
    head = _box((0.62, 0.46, 0.46), (0.0, 0.58, 0.0), subdivisions=2)
    add(head, (0.80, 0.82, 0.90))
    add(_cylinder(0.09, 0.12, (0.0, 0.33, 0.0)), (0.35, 0.35, 0.40))  # neck
    for side in (-1.0, 1.0):
        add(_box((0.22, 0.46, 0.26), (0.19 * side, -0.63, 0.0), subdivisions=1), (0.60, 0.30, 0.90))  # legs
        add(_box((0.26, 0.10, 0.36), (0.19 * side, -0.90, 0.05), subdivisions=1), (1.00, 0.80, 0.10))  # feet
        add(_cylinder(0.07, 0.12, (0.36 * side, 0.58, 0.0), axis="x"), (1.00, 0.45, 0.70))  # ears
    # arms: the robot's right arm (−X) hangs down, its left arm (+X) is raised
    add(_cylinder(0.08, 0.50, (-0.50, -0.10, 0.0)), (1.00, 0.55, 0.10))
    add(_sphere(0.11, (-0.50, -0.42, 0.0)), (0.30, 0.85, 0.30))
    add(_cylinder(0.08, 0.50, (0.50, 0.45, 0.0)), (1.00, 0.55, 0.10))
    add(_sphere(0.11, (0.50, 0.76, 0.0)), (0.30, 0.85, 0.30))
    # backpack with two exhausts, back side only
    add(_box((0.50, 0.45, 0.16), (0.0, 0.0, -0.33), subdivisions=1), (0.20, 0.75, 0.35))
    for side in (-1.0, 1.0):
        add(_cylinder(0.05, 0.12, (0.13 * side, -0.25, -0.33)), (0.55, 0.55, 0.60))
    # antenna: a stalk (vertex colour) and a ball (plain red material)
    add(_cylinder(0.02, 0.16, (0.0, 0.88, 0.0), sections=12), (0.35, 0.35, 0.40))
    add(_sphere(0.07, (0.0, 0.98, 0.0)), (1.0, 1.0, 1.0), MAT_RED)
    # textured quads just in front of the head and the body (0.004 off the surface)
    half_texel_u, half_texel_v = 1.0 / TEX_W, 1.0 / TEX_H
    for (x0, x1, y0, y1, z), (u0, u1) in [
        ((-0.24, 0.24, 0.39, 0.77, 0.234), (0.0, 0.5)),  # face screen
        ((-0.27, 0.27, -0.30, 0.24, 0.254), (0.5, 1.0)),  # chest panel
    ]:
        v, f, uv = _quad(x0, x1, y0, y1, z, u0 + half_texel_u, u1 - half_texel_u, half_texel_v, 1 - half_texel_v)
        parts.add_raw(v, f, uv, np.ones((4, 3)), MAT_TEXTURE)

    return parts.asset([
        Material(),
        Material(texture=torch.from_numpy(draw_atlas())),
        Material(base_color=(0.95, 0.10, 0.10)),
    ])


# -------------------------------------------------------------------------------------------------- palette
# display (sRGB) colours shared by the new objects
CAR_BLUE = (0.10, 0.35, 0.95)
BLACK = (0.06, 0.06, 0.08)
WHITE = (0.97, 0.97, 0.97)
YELLOW = (1.00, 0.85, 0.10)
ORANGE = (1.00, 0.50, 0.05)
RED = (0.92, 0.06, 0.08)
LIGHT_BLUE = (0.55, 0.88, 1.00)
GREY = (0.60, 0.60, 0.66)
DARK = (0.13, 0.13, 0.17)
SUITCASE_GREEN = (0.15, 0.70, 0.30)
PENGUIN_BLACK = (0.07, 0.07, 0.10)
CAP_RED = (0.90, 0.08, 0.08)
CREAM = (0.98, 0.91, 0.72)
BEIGE = (0.93, 0.78, 0.55)
BROWN = (0.45, 0.24, 0.08)
GRASS = (0.30, 0.80, 0.20)
IVY = (0.04, 0.45, 0.10)
STONE = (0.62, 0.60, 0.58)


# -------------------------------------------------------------------------------------------------- car
def build_car() -> MeshAsset:
    """A toy car, 1.95 long (Z) × 1.25 wide × 1.3 tall, front at +Z (display colours, one vertex-coloured
    material)."""
    parts = Parts()
    add = parts.add
    # body, cabin, roof
    add(_box((1.00, 0.42, 1.72), (0.0, -0.22, 0.0)), CAR_BLUE)
    add(_box((0.86, 0.36, 0.92), (0.0, 0.16, -0.12)), CAR_BLUE)  # cabin: y -0.02..0.34, z -0.58..0.34
    add(_box((0.94, 0.10, 1.00), (0.0, 0.38, -0.12)), YELLOW)  # roof
    # a white racing stripe over hood, roof and trunk on the car's right-hand half (+X)
    for z0, z1, y in ((0.34, 0.86, -0.005), (-0.62, 0.38, 0.43), (-0.86, -0.58, -0.005)):
        add(_box((0.22, 0.03, z1 - z0), (0.22, y + 0.015, 0.5 * (z0 + z1))), WHITE)
    # a green suitcase strapped to the roof, on the car's left (−X) and towards the back
    add(_box((0.36, 0.20, 0.46), (-0.20, 0.53, -0.28)), SUITCASE_GREEN)
    add(_box((0.38, 0.21, 0.07), (-0.20, 0.535, -0.28)), BROWN)  # its strap
    # wheels (black, chunky) with grey hubcaps
    for sx in (-1.0, 1.0):
        for sz in (-1.0, 1.0):
            add(_cylinder(0.26, 0.24, (0.47 * sx, -0.42, 0.52 * sz), axis="x"), BLACK)
            add(_cylinder(0.12, 0.04, (0.60 * sx, -0.42, 0.52 * sz), axis="x", sections=16), GREY)
    # windows: light-blue windshield (front) with the driver's dark silhouette on the +X half, light-blue side
    # windows, a dark rear window
    add(_box((0.76, 0.27, 0.04), (0.0, 0.16, 0.35)), LIGHT_BLUE)
    add(_box((0.30, 0.16, 0.03), (0.19, 0.10, 0.375)), DARK)  # the driver (on the car's right, +X): shoulders
    add(_box((0.16, 0.10, 0.03), (0.19, 0.22, 0.375)), DARK)  # and head
    for sx in (-1.0, 1.0):
        add(_box((0.04, 0.24, 0.74), (0.44 * sx, 0.17, -0.12)), LIGHT_BLUE)
    add(_box((0.72, 0.24, 0.04), (0.0, 0.17, -0.60)), DARK)
    # front (+Z): yellow headlights, dark grille, grey bumper
    for sx in (-1.0, 1.0):
        add(_box((0.24, 0.17, 0.05), (0.33 * sx, -0.13, 0.875)), YELLOW)
    add(_box((0.38, 0.19, 0.04), (0.0, -0.17, 0.87)), DARK)
    add(_box((1.04, 0.11, 0.10), (0.0, -0.39, 0.86)), GREY)
    # back (−Z): orange rear panel, red tail lights, black spare wheel with a grey hub, grey bumper, exhaust
    add(_box((0.96, 0.34, 0.04), (0.0, -0.21, -0.87)), ORANGE)
    for sx in (-1.0, 1.0):
        add(_box((0.22, 0.14, 0.05), (0.35 * sx, -0.11, -0.895)), RED)
    add(_cylinder(0.21, 0.14, (0.0, -0.20, -0.95), axis="z"), BLACK)
    add(_cylinder(0.09, 0.03, (0.0, -0.20, -1.03), axis="z", sections=16), GREY)
    add(_box((1.04, 0.11, 0.10), (0.0, -0.39, -0.86)), GREY)
    add(_cylinder(0.075, 0.16, (-0.30, -0.47, -0.90), axis="z", sections=12), GREY)  # exhaust (−X)
    # sides: a white number disc on the +X door, an orange stripe along −X
    add(_cylinder(0.17, 0.03, (0.505, -0.21, 0.02), axis="x"), WHITE)
    add(_box((0.03, 0.10, 1.10), (-0.505, -0.17, 0.02)), ORANGE)
    return parts.asset([Material()])


# ---------------------------------------------------------------------------------------------- penguin
def build_penguin() -> MeshAsset:
    """A chubby penguin, 1.95 tall, front at +Z (display colours, one vertex-coloured material)."""
    parts = Parts()
    add = parts.add
    # body: black, with a white belly on the front only
    belly = lambda v: (v[:, 2] > 0.05) & ((v[:, 0] / 0.46) ** 2 + ((v[:, 1] + 0.28) / 0.62) ** 2 < 1.0)  # noqa: E731
    add(_ellipsoid((0.62, 0.72, 0.56), (0.0, -0.18, 0.0), subdivisions=3), _regions(PENGUIN_BLACK, (belly, WHITE)))
    # head: black, a white face mask on the front
    face = lambda v: (v[:, 2] > 0.12) & ((v[:, 0] / 0.31) ** 2 + ((v[:, 1] - 0.56) / 0.24) ** 2 < 1.0)  # noqa: E731
    add(_sphere(0.40, (0.0, 0.58, 0.02), subdivisions=3), _regions(PENGUIN_BLACK, (face, WHITE)))
    for sx in (-1.0, 1.0):
        add(_sphere(0.07, (0.13 * sx, 0.65, 0.36), subdivisions=1), PENGUIN_BLACK)  # eyes
    add(_cone(0.12, 0.26, (0.0, 0.53, 0.34), axis="z"), ORANGE)  # beak
    # orange feet poking out in front
    for sx in (-1.0, 1.0):
        add(_ellipsoid((0.18, 0.08, 0.26), (0.21 * sx, -0.88, 0.22), subdivisions=2), ORANGE)
    # flippers: the penguin's left (+X) hangs at its side, its right (−X) is raised in a wave
    for pivot, tip_angle in (((0.50, 0.10, 0.0), 20.0), ((-0.48, 0.14, 0.0), -135.0)):
        a = np.deg2rad(tip_angle)
        tip = np.array([np.sin(a), -np.cos(a), 0.0])  # rest direction (0, −1, 0) turned about +Z
        flipper = _ellipsoid((0.11, 0.38, 0.22), np.asarray(pivot) + 0.32 * tip, subdivisions=2,
                             rotate=_rot(tip_angle, [0, 0, 1]))
        add(flipper, PENGUIN_BLACK)
    add(_cone(0.16, 0.26, (0.0, -0.72, -0.46), axis="-z", sections=12), PENGUIN_BLACK)  # tail
    # a red scarf round the neck; its tail hangs down the front on the penguin's left (+X)
    scarf = _torus(0.40, 0.12, (0.0, 0.0, 0.0))
    scarf.apply_scale((1.0, 1.0, 0.92))
    add(_placed(scarf, (0.0, 0.33, 0.02)), RED)
    add(_placed(_box((0.20, 0.46, 0.11), (0.0, 0.0, 0.0)), (0.25, 0.06, 0.47), _rot(-8.0, [0, 0, 1])), RED)
    add(_placed(_box((0.22, 0.09, 0.12), (0.0, 0.0, 0.0)), (0.22, -0.15, 0.47), _rot(-8.0, [0, 0, 1])), YELLOW)
    return parts.asset([Material()])


# ------------------------------------------------------------------------------------------ mushroom house
CAP_CENTER, CAP_R, CAP_RY, CAP_SQUASH = 0.15, 0.95, 0.62, 0.30  # dome: ellipsoid, lower half squashed
STEM_Y0, STEM_Y1, STEM_R0, STEM_R1 = -0.80, 0.10, 0.52, 0.40  # tapered stem: radius R0 at Y0 to R1 at Y1


def _stem_radius(y: float) -> float:
    t = (y - STEM_Y0) / (STEM_Y1 - STEM_Y0)
    return STEM_R0 + t * (STEM_R1 - STEM_R0)


def _on_stem(azimuth_deg: float, y: float, depth: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A point on the stem's surface (pushed out by ``depth``) and its outward horizontal normal; azimuth 0 = +Z,
    90 = +X."""
    a = np.deg2rad(azimuth_deg)
    n = np.array([np.sin(a), 0.0, np.cos(a)])
    return n * (_stem_radius(y) + depth) + np.array([0.0, y, 0.0]), n


def build_mushroom_house() -> MeshAsset:
    """A mushroom cottage, 2.0 tall, door at +Z (display colours, one vertex-coloured material)."""
    parts = Parts()
    add = parts.add
    add(_cylinder(0.92, 0.14, (0.0, -0.87, 0.0), sections=32), GRASS)  # grass disc, top at y = −0.80
    # the stem-house: a cream cylinder tapered towards the top
    stem = _cylinder(1.0, STEM_Y1 - STEM_Y0, (0.0, 0.5 * (STEM_Y0 + STEM_Y1), 0.0), sections=32)
    v = stem.vertices.copy()
    v[:, [0, 2]] *= np.array([_stem_radius(y) for y in v[:, 1]])[:, None]
    stem.vertices = v
    add(stem, CREAM)
    # the cap: a red dome (beige underneath)
    cap = _ellipsoid((CAP_R, CAP_RY, CAP_R), (0.0, CAP_CENTER, 0.0), subdivisions=3)
    v = cap.vertices.copy()
    low = v[:, 1] < CAP_CENTER
    v[low, 1] = CAP_CENTER + (v[low, 1] - CAP_CENTER) * CAP_SQUASH
    cap.vertices = v
    add(cap, _regions(CAP_RED, (lambda p: p[:, 1] < CAP_CENTER - 0.02, BEIGE)))
    # white spots: flattened spheres on the dome, (polar angle from the top, azimuth, radius)
    for theta, phi, r in ((0, 0, 0.24), (58, 25, 0.19), (50, 110, 0.17), (62, 175, 0.20), (52, 250, 0.18),
                          (64, 315, 0.16), (30, 200, 0.13)):
        t, p = np.deg2rad(theta), np.deg2rad(phi)
        point = np.array([CAP_R * np.sin(t) * np.sin(p), CAP_CENTER + CAP_RY * np.cos(t),
                          CAP_R * np.sin(t) * np.cos(p)])
        normal = (point - [0.0, CAP_CENTER, 0.0]) / np.array([CAP_R, CAP_RY, CAP_R]) ** 2
        normal /= np.linalg.norm(normal)
        add(_ellipsoid((r, 0.05, r), point, subdivisions=1, rotate=_align_y(normal)), WHITE)
    # front (+Z): an arched brown door, a light-blue window with a brown frame on the +X side, a stone path
    pos, _ = _on_stem(0.0, -0.60)
    add(_box((0.32, 0.40, 0.12), pos), BROWN)
    pos, _ = _on_stem(0.0, -0.40)
    add(_cylinder(0.16, 0.12, pos, axis="z"), BROWN)
    for depth, size, color in ((0.0, 0.30, BROWN), (0.04, 0.20, LIGHT_BLUE)):
        pos, _ = _on_stem(48.0, -0.30, depth)
        add(_placed(trimesh.creation.box(extents=(size, size, 0.10)), pos, _rot(48.0, [0, 1, 0])), color)
    add(_box((0.30, 0.03, 0.42), (0.0, -0.79, 0.70)), STONE)
    # back (−Z): a grey chimney through the cap (on the −X side) and ivy climbing the stem
    add(_box((0.22, 0.56, 0.22), (-0.30, 0.76, -0.40)), GREY)
    add(_box((0.30, 0.09, 0.30), (-0.30, 1.04, -0.40)), DARK)
    for az, y, r in ((150, -0.62, 0.21), (185, -0.60, 0.22), (220, -0.58, 0.20), (165, -0.38, 0.21),
                     (200, -0.36, 0.21), (235, -0.30, 0.17), (140, -0.22, 0.16), (180, -0.15, 0.19),
                     (215, -0.10, 0.17)):
        pos, n = _on_stem(float(az), y)
        add(_ellipsoid((r, 0.07, r), pos, subdivisions=1, rotate=_align_y(n)), IVY)
    return parts.asset([Material()])


# ---------------------------------------------------------------------------------------------- writing
BUILDERS: dict[str, Callable[[], MeshAsset]] = {
    "robot": build_robot,
    "car": build_car,
    "penguin": build_penguin,
    "mushroom-house": build_mushroom_house,
}
FILE_NAMES = {"robot": "robot.glb", "car": "car.glb", "penguin": "penguin.glb", "mushroom-house": "mushroom_house.glb"}


def glb_bytes(asset: MeshAsset) -> bytes:
    """The GLB file of an asset (glTF colours: factors and COLOR_0 linear, textures sRGB)."""
    return asset_to_trimesh(asset, linear_colors=True).export(file_type="glb")


def write_asset(name: str, path: Path | None = None) -> Path:
    """Build object ``name`` (a key of BUILDERS) and write its GLB to ``path`` (default assets/<file name>)."""
    path = Path(path) if path is not None else ROOT / "assets" / FILE_NAMES[name]
    data = glb_bytes(BUILDERS[name]())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_robot(path: Path) -> None:
    """Write the robot GLB."""
    write_asset("robot", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--object", choices=[*BUILDERS, "all"], default="robot")
    parser.add_argument("--out", type=Path, default=None,
                        help="output path (a single object only; default assets/<file name>)")
    args = parser.parse_args()
    names = list(BUILDERS) if args.object == "all" else [args.object]
    if args.out is not None and len(names) > 1:
        parser.error("--out needs a single --object")
    for name in names:
        path = write_asset(name, args.out)
        print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KB)")


if __name__ == "__main__":
    main()
