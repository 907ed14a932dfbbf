"""The image-to-3D benchmark tool: the views and the runs it plans (each prior kind's prior, the picture's camera,
the prompt modes), the pictures it renders (the object at the image loader's own reference camera, framed at its
true fill), the config hash covering the picture's content, the report's floors and multiview-vs-2d table and its
picture, and a --quick run with a tiny random image-conditioned multi-view folder and the shipped 2D tiny prior
that writes rows and the table, then is reused by a second invocation (at --quick sizes: this checks the tool, not
the method)."""

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import bench_image_to_3d as bench  # noqa: E402

ROBOT = {"prompt": "a toy robot", "path": str(ROOT / "assets" / "robot.glb")}
CAR = {"prompt": "a toy car", "path": str(ROOT / "assets" / "car.glb")}
TINY_2D = ROOT / "assets" / "tiny-prior"


def fake_mv(folder: Path, **unet) -> Path:
    """A multi-view prior folder as far as planning reads it: its UNet's config."""
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text(json.dumps({"_class_name": "MultiViewUNet", **unet}))
    return folder


def cells(report: str, *first: str, columns: int = 0) -> list[str]:
    """The cells of the report's first table row that starts with ``first`` (and has ``columns`` cells)."""
    rows = [[c.strip() for c in x.split("|")[1:-1]] for x in report.splitlines() if x.startswith("|")]
    return next(r for r in rows if r[:len(first)] == list(first) and (not columns or len(r) == columns))


# -- which runs ------------------------------------------------------------------------------------------------
def test_views_are_named_or_given_in_degrees():
    assert [bench.parse_view(v) for v in bench.VIEWS.split(",")] == [
        {"view": "front", "azimuth": 0.0, "elevation": 0.0}, {"view": "az45", "azimuth": 45.0, "elevation": 0.0},
        {"view": "back", "azimuth": 180.0, "elevation": 0.0}]
    assert bench.parse_view("side") == {"view": "side", "azimuth": 90.0, "elevation": 0.0}
    assert bench.parse_view("-30:20") == {"view": "az-30_el20", "azimuth": -30.0, "elevation": 20.0}
    for bad in ("top", "45:100", "nan", "1:2:3", ""):
        with pytest.raises(SystemExit, match="--views"):
            bench.parse_view(bad)


def test_the_plan_runs_each_prior_kind_at_each_view_with_its_camera_and_prompt(tmp_path, capsys):
    from dreamcore.config import config_path, load_config

    mv = fake_mv(tmp_path / "mv-image", reference_frame=True, ip_dim=0)
    text_only = fake_mv(tmp_path / "mv-text", ip_dim=0)
    assert bench.image_conditioned(mv) and not bench.image_conditioned(text_only)
    assert bench.image_conditioned(fake_mv(tmp_path / "imagedream", ip_dim=16))  # ImageDream's image prompt
    assert not bench.image_conditioned(tmp_path / "nothing")
    two_d = tmp_path / "2d"
    two_d.mkdir()
    pairs = bench.combos(["multiview", "2d"], ["named", "empty"], two_d, mv, asked=True)
    assert pairs == [("multiview", "named"), ("multiview", "empty"), ("2d", "named")]
    assert "the 2d picture-only rows are left out" in capsys.readouterr().out
    # the picture alone needs a prior that takes the picture
    assert bench.combos(["multiview"], ["named", "empty"], two_d, text_only, asked=True) == [("multiview", "named")]
    assert "takes no picture" in capsys.readouterr().out
    assert bench.combos(["2d", "multiview"], ["named"], two_d, tmp_path / "missing", asked=False) == [("2d", "named")]
    with pytest.raises(SystemExit, match="no multiview prior"):
        bench.combos(["multiview"], ["named"], two_d, tmp_path / "missing", asked=True)

    views = [bench.parse_view(v) for v in ("front", "45", "back")]
    pictures = {("image-to-3d", "a toy robot", v["view"]): {"path": f"/p/{v['view']}.png", "fill": 0.95,
                                                              "framing_iou": 0.9} for v in views}
    jobs = bench.plan(["image-to-3d"], pairs, [ROBOT], views, 2, pictures, two_d, mv, tmp_path / "runs")
    assert len(jobs) == 3 * 3 * 2
    by = {(j["prior"], j["prompt_mode"], j["view"], j["seed"]): j for j in jobs}
    for view, azimuth in (("front", "0"), ("az45", "45"), ("back", "180")):
        for prior, mode in pairs:
            j = by[(prior, mode, view, 1)]
            assert f"image.azimuth={azimuth}" in j["overrides"] and "image.elevation=0" in j["overrides"]
            assert "image.fill=0.95" in j["overrides"] and f"eval.mesh={ROBOT['path']}" in j["overrides"]
            assert j["cli"][:3] == ["--image", f"/p/{view}.png", "--prompt"] and "run.seed=1" in j["overrides"]
    named, empty, flat = (by[("multiview", "named", "back", 0)], by[("multiview", "empty", "back", 0)],
                          by[("2d", "named", "back", 0)])
    assert named["cli"][-1] == "a toy robot" and empty["cli"][-1] == "" and flat["cli"][-1] == "a toy robot"
    assert [j["name"] for j in (named, empty, flat)] == [
        "image-to-3d-multiview-a_toy_robot-back-0", "image-to-3d-multiview_empty-a_toy_robot-back-0",
        "image-to-3d-2d-a_toy_robot-back-0"]
    assert {"prior.name=multiview", f"prior.model={mv}", "image.condition_prior=true"} <= set(named["overrides"])
    assert {"prior.name=pixel-diffusion", f"prior.model={two_d}"} <= set(flat["overrides"])
    # the 2D baseline has text-nerf's view prompts, which the multi-view recipe turns off
    recipe = load_config(config_path("image-to-3d"))
    baseline = load_config(config_path("image-to-3d"), flat["overrides"])
    assert not recipe.views.enabled and baseline.views == load_config(config_path("text-nerf")).views
    assert baseline.views.enabled and baseline.prior.name == "pixel-diffusion" and baseline.image.azimuth == 180
    # --quick: the recipe's toy sizes (both stages), a whole 4-view group for the multi-view prior, 1 view for 2D
    for j, batch in ((named, 4), (flat, 1)):
        quick = bench.quick_overrides("image-to-3d", j["prior"])
        assert f"camera.batch_size={batch}" in quick and bench.QUICK_REFINE in quick
        cfg = load_config(config_path("image-to-3d"), j["overrides"] + quick)
        assert cfg.run.steps == 6 and cfg.camera.batch_size == batch and cfg.refine.overrides
    # seed-major: every prior kind, mode and view at seed 0 first
    order = bench.text.informative_order(jobs)
    assert [j["seed"] for j in order] == [0] * 9 + [1] * 9


def test_the_budget_expects_a_runs_time_from_its_recipe_and_prior_kind(tmp_path):
    rows = [{"recipe": "image-to-3d", "prior": "2d", "seconds": 100.0},
            {"recipe": "image-to-3d", "prior": "multiview", "seconds": 400.0},
            {"recipe": "image-to-3d", "prior": "multiview", "seconds": 500.0}]
    gate = bench.BudgetGate(5.0, rows, time.perf_counter())
    assert gate.expected({"recipe": "image-to-3d", "prior": "multiview"}) == 450.0
    assert gate.expected({"recipe": "image-to-3d", "prior": "2d"}) == 100.0
    assert gate.may_start({"recipe": "image-to-3d", "prior": "2d", "name": "x"})
    assert not gate.may_start({"recipe": "image-to-3d", "prior": "multiview", "name": "x"})


# -- the pictures ----------------------------------------------------------------------------------------------
def test_the_front_picture_is_the_objects_render_at_the_loaders_reference_camera(tmp_path):
    from dreamcore.meshes.io import load_mesh, normalize
    from dreamcore.meshes.render import render_mesh
    from dreamcore.reference_image import ImageConfig, reference_camera

    views = [bench.parse_view("front"), bench.parse_view("back")]
    pics = bench.make_pictures(["image-to-3d"], [ROBOT], views, 256, "measured", tmp_path / "work")
    front, back = (pics[("image-to-3d", "a toy robot", v)] for v in ("front", "back"))
    assert Path(front["path"]).parent == (tmp_path / "work" / "pictures").resolve()
    img = Image.open(front["path"])
    assert img.mode == "RGBA" and img.size == (256, 256)
    rgba = np.asarray(img, dtype=np.float32) / 255.0
    # the loader's default camera (a front view, the recipe's range middles) sees the mesh as the scoring does
    cam = reference_camera(ImageConfig(), (3.0, 3.4), (38.0, 42.0))
    truth = render_mesh(normalize(load_mesh(ROBOT["path"]), 0.9)[0], cam, 256, 256, supersample=2,
                        background=torch.ones(1, 3))
    assert np.abs(rgba[..., 3] - truth.alpha[0, ..., 0].numpy()).max() <= 1.0 / 255
    assert np.abs(rgba[..., :3] - truth.rgb[0].numpy()).max() <= 1.0 / 255
    assert (rgba[rgba[..., 3] == 0, :3] == 1.0).all()  # a white background
    # framed at its own fill (the robot's front: 0.96, reference_image's docstring), the picture lands where the
    # object renders; the back is another picture
    assert front["fill"] == pytest.approx(0.96, abs=0.01) and front["framing_iou"] > 0.9
    assert back["framing_iou"] > 0.9
    assert np.abs(np.asarray(Image.open(back["path"]), np.float32) / 255.0 - rgba).mean() > 0.02
    # the same pictures again: the files are not rewritten
    stamp = Path(front["path"]).stat().st_mtime_ns
    again = bench.make_pictures(["image-to-3d"], [ROBOT], views[:1], 256, "recipe", tmp_path / "work")
    assert Path(front["path"]).stat().st_mtime_ns == stamp
    assert again[("image-to-3d", "a toy robot", "front")]["fill"] == 0.85  # --fill recipe: the recipe's


def test_the_config_hash_covers_the_pictures_content_not_its_place(tmp_path):
    views = [bench.parse_view("front")]
    pics = bench.make_pictures(["image-to-3d"], [ROBOT], views, 64, "measured", tmp_path / "a")
    job = bench.plan(["image-to-3d"], [("2d", "named")], [ROBOT], views, 1, pics, TINY_2D, tmp_path,
                     tmp_path / "runs")[0]
    h = bench.planned_hash(job, [])
    moved = tmp_path / "b" / "picture.png"
    moved.parent.mkdir()
    shutil.copy(job["picture"], moved)
    assert bench.planned_hash({**job, "picture": str(moved)}, []) == h
    other = bench.make_pictures(["image-to-3d"], [ROBOT], views, 72, "measured", tmp_path / "c")
    assert bench.planned_hash({**job, "picture": other[("image-to-3d", "a toy robot", "front")]["path"]}, []) != h
    assert bench.planned_hash(job, ["image.lambda_rgb=1000"]) != h
    assert bench.planned_hash(job, ["run.threads=2"]) == h  # not the result's business
    turned = {**job, "overrides": [o.replace("image.azimuth=0", "image.azimuth=180") for o in job["overrides"]]}
    assert bench.planned_hash(turned, []) != h


# -- the report ------------------------------------------------------------------------------------------------
def fake(prior, view, mode="named", obj="a toy robot", **m):
    base = {"glb_iou": 0.95, "glb_psnr": 21.0, "glb_janus": 0.0, "glb_depth_rel": 0.01, "ref_psnr": 25.0,
            "framing_iou": 0.93, "seconds": 300.0, "commit": "abc"}
    return {"recipe": "image-to-3d", "prior": prior, "prompt_mode": mode, "object": obj, "view": view, "seed": 0,
            "dir": f"/nonexistent/{prior}-{mode}-{view}", **base, **m}


def test_the_report_has_the_floors_per_view_and_multiview_against_2d_side_by_side():
    results = [fake("multiview", "front"), fake("multiview", "front", seed=1, glb_iou=0.91, commit="def"),
               fake("2d", "front", glb_psnr=18.0, glb_janus=0.25),
               fake("multiview", "back", glb_janus=0.004, seconds=700.0),
               fake("multiview", "back", mode="empty", glb_iou=0.5, glb_psnr=12.0),
               {**fake("2d", "back"), "error": "boom"}]
    rows, report = bench.summarize(results, [ROBOT], ["front", "back"])
    header = cells(report, "recipe", "prior", "object", "view")
    assert header[4:10] == ["IoU", "PSNR (dB)", "Janus", "depth err", "ref PSNR (dB)", "framing IoU"]
    front_mv = cells(report, "image-to-3d", "multiview", "a toy robot", "front")
    assert front_mv[4] == "0.930" and front_mv[-3:] == ["2", "abc, def", "pass"]  # the median over two seeds
    assert cells(report, "image-to-3d", "2d", "a toy robot", "front")[-1] == "FAIL: PSNR, Janus"
    assert cells(report, "image-to-3d", "multiview", "a toy robot", "back")[-1] == "FAIL: s/run"  # Janus 0.004: 0
    assert cells(report, "image-to-3d", "multiview (picture only)", "a toy robot", "back")[-1] == "FAIL: IoU, PSNR"
    assert cells(report, "image-to-3d", "2d", "a toy robot", "back")[-1] == "FAIL: no finished run (1 failed)"
    # the rows go front before back, multiview before 2d
    order = [tuple(r[1:4:2]) for r in ([c.strip() for c in x.split("|")[1:-1]] for x in report.splitlines()
                                       if x.startswith("| image-to-3d |") and x.count("|") == 15)]
    assert order == [("multiview", "front"), ("2d", "front"), ("multiview", "back"),
                     ("multiview (picture only)", "back"), ("2d", "back")]
    per = cells(report, "image-to-3d", "multiview", columns=6)
    assert per[-1] == "1/2"
    side = cells(report, "image-to-3d", "a toy robot", "front", columns=9)
    assert side[3:] == ["0.930", "0.950", "21.00", "18.00", "0.00", "0.25"]
    assert cells(report, "image-to-3d", "a toy robot", "back", columns=9)[3:] == ["0.950", "–", "21.00", "–",
                                                                                  "0.00", "–"]
    assert [(p["object"], p["view"]) for p in bench.side_by_side(rows)] == [("a toy robot", "front"),
                                                                            ("a toy robot", "back")]


def test_the_picture_has_the_input_then_each_prior_kinds_ring_per_object_and_view(tmp_path):
    from dreamcore.meshes.io import asset_to_trimesh, load_mesh, normalize

    run = tmp_path / "run"
    run.mkdir()
    asset_to_trimesh(normalize(load_mesh(ROBOT["path"]))[0], linear_colors=True).export(run / "model.glb")
    results = [{**fake(p, "front"), "dir": str(run)} for p in ("2d", "multiview")]
    views = [bench.parse_view("front"), bench.parse_view("back")]
    path, res = tmp_path / "p.png", 20
    bench.picture(path, results, [ROBOT], views, res=res)
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[0] == 14 + 2 * (res + 4)  # a header, then one row per object and view
    blocks = [img[14 + i * (res + 4):14 + i * (res + 4) + res] for i in range(2)]
    ring_w = bench.text.RING * res
    label_w = img.shape[1] - (res + 6) - 2 * (ring_w + 6)
    x_mv, x_2d = label_w + res + 6, label_w + res + 6 + ring_w + 6  # multiview first
    front, back = blocks
    assert (front[:, label_w:label_w + res] < 250).any() and (back[:, label_w:label_w + res] < 250).any()
    assert (front[:, x_mv:x_mv + ring_w] < 250).any() and (front[:, x_2d:x_2d + ring_w] < 250).any()
    assert np.array_equal(front[:, x_mv:x_mv + ring_w], front[:, x_2d:x_2d + ring_w])  # the same GLB
    assert (back[:, x_mv:] == 255).all()  # no run from the back
    assert (front[:, :label_w] < 128).any()  # labelled


# -- a smoke run of the tool -----------------------------------------------------------------------------------
def test_image_to_3d_benchmark_writes_rows_and_its_table_and_reuses_them(tmp_path, monkeypatch, capsys):
    pytest.importorskip("diffusers")
    sys.path.insert(0, str(ROOT / "tests"))
    import tiny_diffusers

    monkeypatch.setenv("DREAMCORE_CACHE", str(tmp_path / "cache"))
    mv = tiny_diffusers.save_multiview(tmp_path / "tiny-frame", latent=False, image="frame")
    work, out = tmp_path / "runs", tmp_path / "image_to_3d.md"
    page = tmp_path / "benchmarks.md"
    page.write_text("# B\n\n<!-- begin bench_image_to_3d (rewritten) -->\nold\n<!-- end bench_image_to_3d -->\n")
    argv = ["--quick", "--mv-prior-folder", str(mv), "--prior-folder", str(TINY_2D), "--object",
            "assets/robot.glb:a toy robot", "--views", "back", "--prompt-mode", "named,empty", "--work", str(work),
            "--out", str(out), "--jobs", "1"]
    assert bench.main(argv) == 0
    first = capsys.readouterr().out
    assert "3 runs planned, 3 run in" in first and "0 failed" in first
    names = ["image-to-3d-multiview-a_toy_robot-back-0", "image-to-3d-multiview_empty-a_toy_robot-back-0",
             "image-to-3d-2d-a_toy_robot-back-0"]
    rows = {p.stem: json.loads(p.read_text()) for p in (work / "rows").glob("*.json")}
    assert sorted(rows) == sorted(names)
    for name, row in rows.items():
        assert (work / "rows" / row["ring"]).is_file() and row["config_hash"] and row["commit"]
        assert row["view"] == "back" and row["azimuth"] == 180.0 and row["threads"] == 1
        assert all(k in row for k in ("glb_iou", "glb_psnr", "glb_janus", "glb_depth_rel", "ref_psnr", "seconds"))
        cfg = (work / name / "config.yaml").read_text()
        assert "azimuth: 180.0" in cfg  # the picture's camera reached the run
    from dreamcore.config import load_config

    assert load_config(work / names[1] / "config.yaml").prompt == ""  # the picture alone
    assert load_config(work / names[2] / "config.yaml").views.enabled  # the 2D baseline's view prompts
    text = out.read_text()
    for prior in ("multiview", "multiview (picture only)", "2d"):
        assert cells(text, "image-to-3d", prior, "a toy robot", "back")[-1].startswith(("pass", "FAIL"))
    assert cells(text, "image-to-3d", "a toy robot", "back", columns=9)
    data = json.loads(out.with_suffix(".json").read_text())
    assert len(data["runs"]) == 3 and len(data["side_by_side"]) == 1
    assert data["pictures"][0]["view"] == "back" and 0 < data["pictures"][0]["framing_iou"] <= 1
    assert Image.open(out.with_suffix(".png")).size[1] == 14 + 1 * (40 + 4)
    stamps = {p.name: p.stat().st_mtime_ns for p in (work / "rows").iterdir()}
    # a second invocation finds every row with its run's hash: nothing runs, and the same table comes out
    assert bench.main(argv + ["--docs", str(page)]) == 0
    again = capsys.readouterr().out
    assert "3 runs planned, 0 run in" in again and "3 reused from rows" in again
    assert {p.name: p.stat().st_mtime_ns for p in (work / "rows").iterdir()} == stamps
    assert out.read_text().split("This invocation")[0] == text.split("This invocation")[0]
    assert "| image-to-3d | 2d | a toy robot | back |" in page.read_text() and "\nold\n" not in page.read_text()
