"""The editing benchmark tool (tools/bench_edit.py): the target it builds (the source's faces in the box replaced by
a closed shape of another colour, nothing changed outside the box), its scores on synthetic images and meshes (the
box's screen footprint, masked PSNR and IoU, the GLB's vertices outside the box against the source's surface), the
config hash of the edits it plans (the planned merge is the one ``dreamcore edit`` makes), the report's floors, and
a --quick run end to end that writes rows, the report, its picture and the docs section, then is reused by a second
invocation (at --quick sizes: this checks the tool, not the editing methods)."""

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import bench_edit as bench  # noqa: E402

ROBOT_BOX = bench.OBJECTS["robot"]["box"]


def cells(report: str, *first: str) -> list[str]:
    """The cells of the report's first table row that starts with ``first``."""
    rows = [[c.strip() for c in x.split("|")[1:-1]] for x in report.splitlines() if x.startswith("|")]
    return next(r for r in rows if r[:len(first)] == list(first))


def grid_asset(n: int = 4):
    """A closed unit cube [-1, 1]³ cut into n × n quads per side (two triangles each), one vertex-coloured
    material (red)."""
    import trimesh

    from dreamcore.meshes.asset import Material, MeshAsset

    m = trimesh.creation.box(extents=(2.0, 2.0, 2.0))
    while len(m.faces) < 12 * n * n:
        m = m.subdivide()
    v = torch.tensor(m.vertices, dtype=torch.float32)
    return MeshAsset(vertices=v, faces=torch.tensor(m.faces, dtype=torch.int64),
                     vertex_colors=torch.tensor([[0.9, 0.1, 0.1]]).expand(len(v), 3).clone(),
                     materials=[Material()])


# -- the pair ------------------------------------------------------------------------------------------------------
def test_the_target_replaces_the_faces_in_the_box_by_a_closed_shape_of_its_own_colour():
    asset = grid_asset()  # faces 0.5 × 0.5: on the +z side a box over x, y ∈ [−0.5, 0.5] holds 8 whole triangles
    box = (-0.5, -0.5, 0.5, 0.5, 0.5, 1.4)
    target, info = bench.build_target(asset, box, "box", (0.1, 0.2, 0.9))
    centroids = asset.vertices[asset.faces].mean(1)
    inside = bench.inside_box(centroids, box[:3], box[3:])
    assert info == {"removed_faces": int(inside.sum()), "added_faces": 12, "spill": 0.0} and info["removed_faces"] == 8
    assert len(target.faces) == len(asset.faces) - 8 + 12
    kept = target.faces[: len(asset.faces) - 8]
    assert torch.equal(kept, asset.faces[~inside])  # the rest of the source as it was, vertex for vertex
    filler = target.vertices[target.faces[-12:]].reshape(-1, 3)
    assert torch.allclose(filler.amin(0), torch.tensor(box[:3]))
    assert torch.allclose(filler.amax(0), torch.tensor(box[3:]))
    assert target.materials[-1].base_color == (0.1, 0.2, 0.9) and bool((target.face_material[-12:] == 1).all())
    assert bool((target.face_material[:-12] == 0).all())
    from dreamcore.metrics import watertight_report

    assert watertight_report(target.vertices[len(asset.vertices):], target.faces[-12:] - len(asset.vertices))[
        "watertight"]
    # the inscribed ellipsoid instead; a box whose removed faces reach out of it says by how much
    _, sphere = bench.build_target(asset, box, "sphere")
    assert sphere["added_faces"] > 12
    _, spill = bench.build_target(asset, (-0.6, -0.6, 0.5, 0.6, 0.6, 1.4), "box")
    assert spill["removed_faces"] == 8 and spill["spill"] == 0.0
    _, spill = bench.build_target(asset, (-0.4, -0.4, 0.5, 0.4, 0.4, 1.4), "box")
    assert spill["spill"] > 0.09
    with pytest.raises(SystemExit, match="no face"):
        bench.build_target(asset, (2.0, 2.0, 2.0, 3.0, 3.0, 3.0))


def test_the_robots_target_differs_from_the_robot_only_where_rays_meet_its_box(tmp_path, capsys):
    obj = bench.write_target(bench.parse_object("robot"), tmp_path)
    assert "warning" not in capsys.readouterr().out  # every removed face lies in the box (spill 0)
    assert obj["spill"] == 0.0 and obj["removed_faces"] > 50 and Path(obj["target_path"]).is_file()
    before = Path(obj["target_path"]).stat().st_mtime_ns
    assert bench.write_target(bench.parse_object("robot"), tmp_path)["target_path"] == obj["target_path"]
    assert Path(obj["target_path"]).stat().st_mtime_ns == before  # the same bytes: the file is left alone
    from dreamcore.meshes.io import load_mesh

    target = load_mesh(obj["target_path"])  # as dreamcore reads it: the block's own deep-blue material
    assert any(np.allclose(m.base_color, bench.OBJECTS["robot"]["color"], atol=0.01) for m in target.materials)
    scoring = {**bench.SCORING, "views": 6, "resolution": 48}
    cams = bench.scoring_cameras(scoring)
    lo, hi = bench.scene_box(obj)
    mask = bench.footprint(cams, 48, lo, hi, 2)
    a = bench.mesh_renders(bench.mesh_in_scene(obj["path"], obj), cams, 48)
    b = bench.mesh_renders(bench.mesh_in_scene(obj["target_path"], obj), cams, 48)
    assert 0.01 < float(mask.double().mean()) < 0.2
    assert float((a.rgb - b.rgb).abs()[~mask].max()) == 0.0 and float((a.alpha - b.alpha).abs()[~mask].max()) == 0.0
    assert float((a.rgb - b.rgb).abs()[mask].mean()) > 0.05  # and it does differ inside (a blue block)


def test_objects_are_named_or_given_with_their_box_and_prompts(tmp_path):
    robot = bench.parse_object("robot")
    assert robot["box"] == ROBOT_BOX and Path(robot["path"]).is_absolute() and robot["target"] != robot["source"]
    assert bench.box_region(robot) == "box:-0.31,-0.32,0.05,0.31,0.241,0.35"
    custom = bench.parse_object("assets/car.glb:-0.2,0.3,-0.5,0.2,0.7,0:a toy car:a toy car with a red case")
    assert custom["name"] == "car" and custom["box"] == (-0.2, 0.3, -0.5, 0.2, 0.7, 0.0)
    assert (custom["source"], custom["target"]) == ("a toy car", "a toy car with a red case")
    assert bench.parse_object("assets/car.glb:0,0,0,1,1,1")["source"] == bench.CUSTOM["source"]
    for bad, match in (("teapot", "one of robot"), ("nowhere.glb:0,0,0,1,1,1", "no mesh file"),
                       ("assets/car.glb:0,0,0,1,1", "six numbers"), ("assets/car.glb:0,0,0,-1,1,1", "six numbers"),
                       ("assets/car.glb:0,0,0,1,1,1:same:same", "must differ")):
        with pytest.raises(SystemExit, match=match):
            bench.parse_object(bad)


# -- the scores ----------------------------------------------------------------------------------------------------
def test_the_footprint_holds_every_pixel_that_sees_the_box():
    from dreamcore.cameras import orbit_cameras
    from dreamcore.meshes.asset import Material, MeshAsset

    lo, hi = torch.tensor([-0.3, -0.2, -0.1]), torch.tensor([0.2, 0.4, 0.3])
    verts, faces = bench.filling_shape(lo.tolist(), hi.tolist(), "box")
    box = MeshAsset(vertices=torch.tensor(verts, dtype=torch.float32), faces=torch.tensor(faces),
                    materials=[Material(base_color=(0.0, 0.0, 1.0))])
    cams = orbit_cameras(torch.tensor([20.0, -10.0, 60.0]), torch.tensor([0.0, 130.0, 250.0]),
                         torch.full((3,), 3.2), torch.full((3,), 40.0))
    for s in (1, 2):
        mask = bench.footprint(cams, 40, lo, hi, s)
        seen = bench.mesh_renders(box, cams, 40, supersample=s).alpha > 0
        assert bool(seen.any()) and not bool((seen & ~mask).any())  # nothing that sees the box is outside it
        assert int((mask & ~seen).sum()) <= 0.1 * int(seen.sum())  # and it is not much more than the box
    assert bool((bench.footprint(cams, 40, lo, hi, 2) >= bench.footprint(cams, 40, lo, hi, 1)).all())
    far = bench.footprint(cams, 40, torch.tensor([5.0, 5.0, 5.0]), torch.tensor([6.0, 6.0, 6.0]), 2)
    assert not bool(far.any())


def test_masked_psnr_and_iou_on_synthetic_images():
    a = torch.zeros(2, 8, 8, 3)
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, 2:5, 2:6] = True
    b = a.clone()
    b[mask] = 0.1  # inside: MSE 0.01 → 20 dB; outside: identical
    assert bench.masked_mse(a, b, mask) == pytest.approx(0.01)
    assert bench.psnr_of(0.01) == pytest.approx(20.0) and bench.psnr_of(0.0) == bench.PSNR_CAP
    assert bench.psnr_of(None) is None and bench.masked_mse(a, b, torch.zeros_like(mask)) is None
    alpha_a, alpha_b = torch.zeros(2, 8, 8), torch.zeros(2, 8, 8)
    alpha_a[:, 2:5, 2:4], alpha_b[:, 2:5, 3:6] = 1.0, 1.0  # in the mask: 6 and 9 pixels per view, 3 in common
    assert bench.masked_iou(alpha_a, alpha_b, mask) == pytest.approx(3 / 12)
    assert bench.masked_iou(torch.zeros(2, 8, 8), torch.zeros(2, 8, 8), mask) == 1.0
    alpha_b[:, 7, 7] = 1.0  # outside the mask: not counted
    assert bench.masked_iou(alpha_a, alpha_b, mask) == pytest.approx(3 / 12)
    s = bench.region_scores(b, alpha_a, a, alpha_b, b, mask)
    assert s["inside_psnr"] == pytest.approx(20.0) and s["inside_iou"] == pytest.approx(0.25)
    assert s["outside_mse"] == 0.0 and s["outside_psnr"] == bench.PSNR_CAP
    assert s["footprint"] == pytest.approx(12 / 64)
    kept = b.clone()
    kept[~mask] = 0.01  # outside the footprint off by 0.01 → 40 dB
    assert bench.region_scores(b, alpha_a, a, alpha_b, kept, mask)["outside_psnr"] == pytest.approx(40.0)


def test_the_glb_check_measures_the_vertices_outside_the_box_against_the_source_surface():
    source = grid_asset(8)  # the cube [-1, 1]³: diagonal 2√3
    diag = 2 * math.sqrt(3)
    v = source.vertices.clone()
    box = (-0.5, -0.5, 0.5, 0.5, 0.5, 1.5)
    inside = bench.inside_box(v, box[:3], box[3:])
    v[inside] += torch.tensor([0.0, 0.0, 0.4])  # the edit: inside the box, anything goes
    out = torch.nonzero(~inside).flatten()
    moved = torch.nonzero(~inside & (v[:, 2] < 0)).flatten()[:10]  # far from the box: they stay outside it
    v[moved] *= 1 + 0.01 * diag  # pushed out of the surface (|x|∞ = 1) by 1 % of the diagonal (√3 % at a corner)
    s = bench.glb_outside(v, source.vertices, source.faces, box)
    assert s["glb_outside_vertices"] == len(out)
    assert s["glb_outside_within"] == pytest.approx(1 - 10 / len(out))
    assert 0.0099 < s["glb_outside_max"] < 0.0174 and s["glb_outside_p99"] <= s["glb_outside_max"]
    same = bench.glb_outside(source.vertices, source.vertices, source.faces, box)
    assert same["glb_outside_within"] == 1.0 and same["glb_outside_p99"] == pytest.approx(0.0, abs=1e-7)
    empty = bench.glb_outside(v[inside], source.vertices, source.faces, box)  # every vertex in the box
    assert empty["glb_outside_vertices"] == 0 and empty["glb_outside_within"] is None


# -- what runs and the report --------------------------------------------------------------------------------------
def test_the_plan_hashes_each_edit_by_its_settings_and_the_meshes_content(tmp_path):
    obj = bench.write_target(bench.parse_object("robot"), tmp_path / "meshes")
    scoring = {**bench.SCORING, **bench.QUICK_SCORING}

    def plan(o, **kw):
        args = {"reps": ["nerf", "gaussians"], "methods": ["dds", "sds"], "regions": ["box", "none"], "seeds": 1,
                "steps": None, "extra": [], "scoring": scoring, **kw}
        return {j["name"]: j for j in bench.plan([o], args["reps"], args["methods"], args["regions"], args["seeds"],
                                                 tmp_path / "runs", True, args["steps"], None, args["extra"],
                                                 args["scoring"])}

    jobs = plan(obj)
    assert list(jobs)[:5] == ["robot-nerf-source-0", "robot-nerf-dds-box-0", "robot-nerf-sds-box-0",
                              "robot-nerf-dds-none-0", "robot-nerf-sds-none-0"]
    assert len(jobs) == 10 and len({j["config_hash"] for j in jobs.values()}) == 10
    e = jobs["robot-nerf-dds-box-0"]
    assert e["region_spec"] == bench.box_region(obj) and jobs["robot-nerf-dds-none-0"]["region_spec"] is None
    assert "guidance.guidance_scale=1.0" in e["overrides"] and e["source"] == "robot-nerf-source-0"
    src = jobs["robot-gaussians-source-0"]
    assert "refine.config=" in src["overrides"] and src["recipe"] == "reference-gaussians"
    meshes = json.loads(next(o for o in src["overrides"] if o.startswith("prior.reference.meshes="))
                        .split("=", 1)[1])
    assert list(meshes) == [obj["source"], obj["target"]]  # the source first: the scene frame is A's
    assert plan(obj) == jobs  # the same inputs, the same hashes
    for changed in (plan(obj, steps=50), plan(obj, extra=["optimizer.lr=0.02"]),
                    plan(obj, scoring={**scoring, "seed": 1})):
        assert all(changed[n]["config_hash"] != jobs[n]["config_hash"] for n in jobs if jobs[n]["kind"] == "edit")
    # the same target built in another folder is the same pair; one of another colour is another: every run is new
    moved = bench.write_target(bench.parse_object("robot"), tmp_path / "elsewhere")
    assert {n: j["config_hash"] for n, j in plan(moved).items()} == {n: j["config_hash"] for n, j in jobs.items()}
    recoloured = bench.write_target({**bench.parse_object("robot"), "color": (0.9, 0.1, 0.1)}, tmp_path / "red")
    other = plan(recoloured)
    assert all(other[n]["config_hash"] != jobs[n]["config_hash"] for n in jobs)
    # the edit tree is the merge dreamcore edit makes: the source's settings under the recipe's
    tree = bench.edit_tree(e, bench.source_tree(jobs["robot-nerf-source-0"]), "abc")
    assert tree["system"]["name"] == "edit" and tree["system"]["region"] == e["region_spec"]
    assert tree["guidance"]["name"] == "dds" and tree["guidance"]["guidance_scale"] == 1.0
    assert tree["system"]["rays_per_view"] == 48 and tree["init"]["from_run"] == {"source_config_hash": "abc"}


def summary_rows():
    base = {"object": "robot", "representation": "nerf", "seed": 0, "commit": "abc", "seconds": 100.0}
    source = {**base, "kind": "source", "method": "source", "region": "", "inside_iou": 0.95, "inside_psnr": 14.0,
              "recon_psnr": 31.0, "recon_iou": 0.96, "footprint": 0.05}
    good = {**base, "kind": "edit", "method": "dds", "region": "box", "inside_iou": 0.93, "inside_psnr": 27.0,
            "outside_psnr": bench.PSNR_CAP, "outside_mse": 0.0, "glb_outside_within": 0.995,
            "glb_outside_p99": 0.004, "glb_inside_iou": 0.9, "glb_inside_psnr": 22.0, "glb_outside_psnr": 40.0,
            "glb_outside_mse": 1e-4, "glb_outside_max": 0.02}
    drift = {**good, "region": "none", "outside_psnr": 28.0, "outside_mse": 10 ** -2.8, "glb_outside_p99": 0.02,
             "seconds": 400.0}
    slow = {**good, "method": "sds", "seed": 1, "seconds": 500.0}
    return [source, good, drift, {**good, "method": "sds"}, slow, {**good, "method": "sds", "seed": 2}]


def test_the_report_marks_the_floors_and_shows_identical_pixels_as_infinite():
    rows, report = bench.summarize(summary_rows())
    assert [(r["method"], r["region"]) for r in rows] == [("source", ""), ("dds", "box"), ("sds", "box"),
                                                          ("dds", "none")]
    assert cells(report, "source (no edit)") == ["source (no edit)", "–", "0.950", "14.00", "∞", "100.0 %",
                                                 "0.00 %", "100", "1", "abc", "–"]
    assert cells(report, "dds", "box")[2:8] == ["0.930", "27.00", "∞", "99.5 %", "0.40 %", "100"]
    assert cells(report, "dds", "box")[-1] == "pass"
    assert cells(report, "dds", "none")[-1] == "FAIL: outside PSNR, GLB outside, s/edit"
    assert cells(report, "dds", "none")[4] == "28.00"
    sds = cells(report, "sds", "box")
    assert sds[7] == "100" and sds[8] == "3" and sds[-1] == "pass"  # the median of 100, 500, 100 s over 3 seeds
    assert "reconstruction PSNR 31.00 dB" in report and "16 held-out cameras" in report
    glb = cells(report, "robot", "nerf", "dds", "box")  # the GLB table
    assert glb[4:7] == ["0.900", "22.00", "40.00"] and glb[-1] == "2.00 %"
    failed = bench.summarize(summary_rows() + [{"object": "robot", "representation": "gaussians", "kind": "edit",
                                                "method": "pds", "region": "box", "seed": 0, "error": "boom"}])[1]
    assert cells(failed, "pds", "box")[-1] == "FAIL: no finished run (1 failed)"


def test_the_picture_shows_source_target_and_every_edit_side_by_side(tmp_path):
    obj = bench.write_target(bench.parse_object("robot"), tmp_path / "meshes")
    pic = {**bench.PICTURE, "resolution": 24}
    rows = []
    for i, (kind, method, region) in enumerate((("source", "source", ""), ("edit", "dds", "box"),
                                                ("edit", "dds", "none"))):
        strip = np.full((24, 3 * 24, 3), 40 * (i + 1), np.uint8)
        Image.fromarray(strip).save(tmp_path / f"{i}.png")
        rows.append({"object": "robot", "representation": "nerf", "kind": kind, "method": method, "region": region,
                     "seed": 0, "picture": f"{i}.png"})
    bench.picture(tmp_path / "edit.png", rows, {"robot": obj}, tmp_path, bench.SCORING, pic)
    img = np.asarray(Image.open(tmp_path / "edit.png").convert("RGB"))
    assert img.shape[0] == 14 + 24 + 3 * 24 + 6
    x = [4 + k * (24 + 4) + 12 for k in range(4)]  # source, target, dds/box, dds/none
    y = 14 + 24 + 12
    assert tuple(img[y, x[0]]) == (40, 40, 40) and tuple(img[y, x[2]]) == (80, 80, 80)
    assert tuple(img[y, x[3]]) == (120, 120, 120)
    target = img[14 + 24: 14 + 24 + 3 * 24, 4 + 28: 4 + 28 + 24]  # A′ rendered at the three cameras
    assert (target < 200).any(axis=-1).mean() > 0.05


# -- the whole tool ------------------------------------------------------------------------------------------------
@pytest.mark.slow  # a whole benchmark pipeline (~40 s): CI's slow pass
def test_quick_run_writes_rows_report_picture_and_docs_then_reuses_them(tmp_path, capsys):
    work, out = tmp_path / "work", tmp_path / "edit.md"
    page = tmp_path / "benchmarks.md"
    shutil.copy(ROOT / "docs" / "benchmarks.md", page)  # the real page has the tool's markers
    argv = ["--quick", "--threads", "1", "--work", str(work), "--out", str(out)]
    assert bench.main(argv + ["--docs", str(page)]) == 0
    first = capsys.readouterr().out
    assert "robot: box box:-0.31,-0.32,0.05,0.31,0.241,0.35" in first
    assert "3 runs planned (2 edits), 3 run and scored in" in first and "0 failed" in first
    names = ["robot-nerf-source-0", "robot-nerf-dds-box-0", "robot-nerf-dds-none-0"]
    rows = {p.stem: json.loads(p.read_text()) for p in (work / "rows").glob("*.json")}
    assert sorted(rows) == sorted(names)
    for name, row in rows.items():
        assert (work / "rows" / row["picture"]).is_file() and row["config_hash"] and row["threads"] == 1
        assert all(k in row for k in ("inside_iou", "inside_psnr", "outside_psnr", "seconds", "commit"))
    box, none = rows["robot-nerf-dds-box-0"], rows["robot-nerf-dds-none-0"]
    assert box["outside_mse"] == 0.0  # a NeRF edit in the box: rays that miss it see the source itself
    assert none["outside_mse"] > 0.0 and 0.0 <= box["glb_outside_within"] <= 1.0
    # the planned merge of an edit's config is the one dreamcore edit makes from the real source folder
    from dreamcore.config import to_tree
    from dreamcore.runner.edit import edit_config

    obj = bench.write_target(bench.parse_object("robot"), work / "meshes")
    jobs = {j["name"]: j for j in bench.plan([obj], ["nerf"], ["dds"], ["box", "none"], 1, work, True, None, None,
                                             [], {**bench.SCORING, **bench.QUICK_SCORING})}
    for name in names[1:]:
        job, src = jobs[name], jobs[names[0]]
        real = to_tree(edit_config(job["source_dir"], job["prompt"], job["source_prompt"], job["region_spec"],
                                   config=job["recipe"], overrides=job["overrides"], run_dir=tmp_path / "x"))
        planned = bench.edit_tree(job, bench.source_tree(src), src["source_hash"])
        real["init"]["from_run"], real["run"]["dir"] = planned["init"]["from_run"], planned["run"]["dir"]
        assert real["run"].pop("threads") == 1 and planned["run"].pop("threads") == 0  # the source ran on 1
        assert real == planned
        assert job["config_hash"] == rows[name]["config_hash"]
    text = out.read_text()
    assert cells(text, "dds", "box")[4] == "∞" and cells(text, "dds", "box")[-1].startswith(("pass", "FAIL"))
    assert cells(text, "source (no edit)")[0] == "source (no edit)"
    data = json.loads(out.with_suffix(".json").read_text())
    assert len(data["runs"]) == 3 and data["objects"][0]["box"] == list(ROBOT_BOX)
    assert Image.open(out.with_suffix(".png")).size[1] == 14 + 24 + 3 * 32 + 6
    docs = page.read_text()
    assert "| dds | box |" in docs and "No rows yet" not in docs and "## Prior benchmark" in docs
    stamps = {p.name: p.stat().st_mtime_ns for p in (work / "rows").iterdir()}
    # a second invocation finds every row with its hash: nothing runs, the same table comes out
    assert bench.main(argv) == 0
    again = capsys.readouterr().out
    assert "0 run and scored" in again and "3 reused from rows" in again
    assert {p.name: p.stat().st_mtime_ns for p in (work / "rows").iterdir()} == stamps
    assert out.read_text().split("This invocation")[0] == text.split("This invocation")[0]
    # more steps for the edits: new edits, the source's row and folder reused
    assert bench.main(argv + ["--steps", "3", "--regions", "box"]) == 0
    third = capsys.readouterr().out
    assert "1 run and scored" in third and "source robot-nerf-source-0" not in third
