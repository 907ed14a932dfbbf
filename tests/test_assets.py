"""The shipped procedural assets (assets/*.glb, built by tools/make_asset.py): they load, normalize and render, and
each is a good text-to-3D training object: front and back look clearly different, the front is not its own mirror
image, and side silhouettes differ between objects (so the "<name>, <view> view" captions are informative).

Thresholds measured at 32×32 (elevation 0, distance 3, fov 40, white background, albedo):
front/back mean |Δrgb|: robot 0.070, car 0.060, penguin 0.222, mushroom house 0.059 -> bound 0.03.
front vs its horizontal mirror: robot 0.037, car 0.020, penguin 0.142, mushroom house 0.031 -> bound 0.01.
side-view (azimuth 90) alpha IoU between objects: at most 0.63 (penguin / mushroom house; car / robot 0.26)
-> bound 0.75.
"""

import importlib.util
import itertools
from pathlib import Path

import pytest
import torch

from dreamcore.cameras import orbit_cameras
from dreamcore.meshes.io import bounding_box, load_mesh, normalize
from dreamcore.meshes.render import render_mesh

ROOT = Path(__file__).resolve().parents[1]
ASSETS = sorted((ROOT / "assets").glob("*.glb"))
EXPECTED = {"robot.glb", "car.glb", "penguin.glb", "mushroom_house.glb"}
RES = 32
FRONT_BACK_MIN = 0.03
MIRROR_MIN = 0.01
SIDE_IOU_MAX = 0.75


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _load_make_asset():
    spec = importlib.util.spec_from_file_location("make_asset", ROOT / "tools" / "make_asset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def renders():
    """{file name: RenderOutput} of the views front (azimuth 0), side (90), back (180) at 32×32."""
    cams = orbit_cameras(torch.zeros(3), torch.tensor([0.0, 90.0, 180.0]), torch.full((3,), 3.0),
                         torch.full((3,), 40.0))
    out = {}
    for path in ASSETS:
        asset, _ = normalize(load_mesh(path))
        out[path.name] = render_mesh(asset, cams, RES, RES, background=torch.ones(3))
    return out


def test_the_shipped_assets_are_small_coloured_meshes():
    assert EXPECTED <= {p.name for p in ASSETS}
    for path in ASSETS:
        assert path.stat().st_size < 300_000, path.name
        asset = load_mesh(path)
        assert 500 < asset.faces.shape[0] < 10_000, path.name
        assert asset.vertex_colors is not None, path.name
        lo, hi = bounding_box(asset)
        assert 1.5 < float((hi - lo).max()) < 2.2, path.name  # about 1.6-2 units, Y up, around the origin
        assert float(((hi + lo) / 2).abs().max()) < 0.2, path.name


def test_front_and_back_differ(renders):
    for name, out in renders.items():
        front, back = out.rgb[0], out.rgb[2]
        assert float((front - back).abs().mean()) > FRONT_BACK_MIN, name


def test_front_is_not_its_own_mirror_image(renders):
    for name, out in renders.items():
        front = out.rgb[0]
        assert float((front - front.flip(1)).abs().mean()) > MIRROR_MIN, name


def test_side_silhouettes_differ_between_objects(renders):
    for (a, ra), (b, rb) in itertools.combinations(renders.items(), 2):
        sa, sb = ra.alpha[1, ..., 0] > 0.5, rb.alpha[1, ..., 0] > 0.5
        iou = float((sa & sb).sum()) / float((sa | sb).sum())
        assert iou < SIDE_IOU_MAX, (a, b, iou)


def test_make_asset_reproduces_the_shipped_files():
    module = _load_make_asset()
    assert set(module.FILE_NAMES.values()) == EXPECTED
    for name, file_name in module.FILE_NAMES.items():
        data = module.glb_bytes(module.BUILDERS[name]())
        assert data == (ROOT / "assets" / file_name).read_bytes(), file_name
