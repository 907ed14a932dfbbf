"""Build ``assets/robot.glb``: a small, brightly coloured toy robot made from trimesh primitives.

Y up, front facing +Z, about 1.9 units tall around the origin, ~3k faces, three materials:
- vertex-coloured parts (white factor × COLOR_0): body (vertical colour gradient), legs, feet, arms, hands,
  ears, neck, backpack (on the back only);
- one textured material: a procedurally drawn atlas with the face screen (eyes, a wink, a smile) and the
  chest panel (coloured buttons, one per corner, so flips and mirrors are visible);
- a plain red factor material: the antenna ball.
Front/back and left/right are asymmetric: face and chest panel only on +Z, backpack only on −Z, and the
robot's left arm (+X) is raised. The output is deterministic (numpy-drawn texture, fixed geometry).

Usage: ``python tools/make_asset.py [--out assets/robot.glb]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import trimesh

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dreamcore.meshes.asset import Material, MeshAsset  # noqa: E402
from dreamcore.meshes.io import asset_to_trimesh  # noqa: E402

TEX_H, TEX_W = 64, 128  # atlas: left half face screen, right half chest panel
MAT_VERTEX, MAT_TEXTURE, MAT_RED = 0, 1, 2


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


def _box(extents, center, subdivisions: int = 0) -> trimesh.Trimesh:
    mesh = trimesh.creation.box(extents=extents)
    for _ in range(subdivisions):
        mesh = mesh.subdivide()
    return _placed(mesh, center)


def _cylinder(radius: float, height: float, center, axis: str = "y", sections: int = 24) -> trimesh.Trimesh:
    mesh = trimesh.creation.cylinder(radius=radius, height=height, sections=sections)  # along z
    rot = {
        "z": None,
        "y": trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]),
        "x": trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]),
    }[axis]
    return _placed(mesh, center, rot)


def _sphere(radius: float, center, subdivisions: int = 2) -> trimesh.Trimesh:
    return _placed(trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius), center)


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


def build_robot() -> MeshAsset:
    """The robot as one MeshAsset (display colours)."""
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, int]] = []

    def add(mesh: trimesh.Trimesh, color, material: int = MAT_VERTEX) -> None:
        colors = np.broadcast_to(np.asarray(color, np.float64), (len(mesh.vertices), 3))
        parts.append((np.asarray(mesh.vertices), np.asarray(mesh.faces), None, colors, material))

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
        parts.append((v, f, uv, np.ones((4, 3)), MAT_TEXTURE))

    offsets = np.cumsum([0] + [len(p[0]) for p in parts])
    vertices = np.concatenate([p[0] for p in parts])
    faces = np.concatenate([p[1] + o for p, o in zip(parts, offsets[:-1])])
    uvs = np.concatenate([p[2] if p[2] is not None else np.zeros((len(p[0]), 2)) for p in parts])
    colors = np.concatenate([p[3] for p in parts])
    face_material = np.concatenate([np.full(len(p[1]), p[4], np.int64) for p in parts])
    materials = [
        Material(),
        Material(texture=torch.from_numpy(draw_atlas())),
        Material(base_color=(0.95, 0.10, 0.10)),
    ]
    as_f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    return MeshAsset(
        vertices=as_f32(vertices),
        faces=torch.from_numpy(faces.astype(np.int64)),
        uvs=as_f32(uvs),
        vertex_colors=as_f32(colors),
        face_material=torch.from_numpy(face_material),
        materials=materials,
    )


def write_robot(path: Path) -> None:
    """Write the robot GLB (glTF colours: factors and COLOR_0 linear, texture sRGB)."""
    scene = asset_to_trimesh(build_robot(), linear_colors=True)
    data = scene.export(file_type="glb")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "assets" / "robot.glb")
    args = parser.parse_args()
    write_robot(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.1f} KB)")


if __name__ == "__main__":
    main()
