"""The text-only benchmark tool: which recipe runs on which prior (multi-view recipes on the multi-view prior
only), object accuracy on assets whose answer is known, its cache in the run folder, the floors of each kind of
row, the multi-view recipes' PSNR gain over their 2D ones, the picture's rows, and a --smoke run of text-nerf and
text-mv-nerf with a tiny random multi-view folder that writes the table and picture and is reused by a second run
(at --smoke sizes: this checks the tool, not the methods)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import bench_text_to_3d as bench  # noqa: E402

ASSETS = {name: str(ROOT / "assets" / f"{name}.glb") for name in ("robot", "car", "penguin", "mushroom_house")}
OBJECTS = [{"prompt": f"a toy {n}", "path": p} for n, p in ASSETS.items()]


def normalized_glb(name: str, path: Path) -> Path:
    """A shipped object written as a run on the learned or multi-view prior writes its GLB: in the scene frame."""
    from dreamcore.meshes.io import asset_to_trimesh, load_mesh, normalize

    asset_to_trimesh(normalize(load_mesh(ASSETS[name]))[0], linear_colors=True).export(path)
    return path


# -- which runs ------------------------------------------------------------------------------------------------
def test_multiview_recipes_run_on_the_multiview_prior_only_and_2d_recipes_never_do(tmp_path):
    jobs = bench.plan(list(bench.RECIPES), ["sds"], list(bench.PRIORS), OBJECTS[:1], 1, tmp_path / "2d",
                      tmp_path / "mv", tmp_path / "runs")
    assert {(j["recipe"], j["prior"]) for j in jobs} == {
        ("text-nerf", "learned"), ("text-nerf", "reference"), ("text-gaussians", "learned"),
        ("text-gaussians", "reference"), ("text-mv-nerf", "multiview"), ("text-mv-gaussians", "multiview")}
    mv = next(j for j in jobs if j["recipe"] == "text-mv-nerf")
    assert "prior.name=multiview" in mv["overrides"] and f"prior.model={tmp_path / 'mv'}" in mv["overrides"]
    assert not any(o.startswith("guidance.name=") for o in mv["overrides"])  # its own guidance, its own settings
    learned = next(j for j in jobs if j["recipe"] == "text-nerf" and j["prior"] == "learned")
    assert f"prior.model={tmp_path / '2d'}" in learned["overrides"]
    # --smoke: one whole 4-view group per step for the multi-view recipes, one view for the 2D ones
    assert "camera.batch_size=4" in bench.smoke_overrides("text-mv-gaussians")
    assert "camera.batch_size=1" in bench.smoke_overrides("text-gaussians")


def test_a_missing_multiview_folder_leaves_its_rows_out_unless_they_were_asked_for(tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    assert bench.usable_priors(list(bench.RECIPES), list(bench.PRIORS), missing, asked=False) == ["learned",
                                                                                                  "reference"]
    assert "left out" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no multi-view prior"):
        bench.usable_priors(["text-mv-nerf"], list(bench.PRIORS), missing, asked=True)
    with pytest.raises(SystemExit, match="no multi-view prior"):  # before any run
        bench.main(["--mv-prior-folder", str(missing), "--work", str(tmp_path / "runs"), "--out",
                    str(tmp_path / "t.md")])
    assert not (tmp_path / "runs").exists()
    # 2D recipes alone never need it
    assert bench.usable_priors(["text-nerf"], list(bench.PRIORS), missing, asked=True) == list(bench.PRIORS)


def test_the_default_objects_are_the_first_prior_folder_that_lists_them(tmp_path):
    objects = bench.default_objects(tmp_path, ROOT / "assets" / "tiny-prior")
    assert [o["prompt"] for o in objects][:2] == ["a toy robot", "a toy car"]
    with pytest.raises(SystemExit, match="--object"):
        bench.default_objects(tmp_path)


# -- object accuracy -----------------------------------------------------------------------------------------------
def test_object_accuracy_is_one_for_the_object_itself_and_zero_for_another(tmp_path):
    paths = list(ASSETS.values())
    for name in ASSETS:
        glb = normalized_glb(name, tmp_path / f"{name}.glb")
        assert bench.object_accuracy(glb, ASSETS[name], paths, "learned") == 1.0
    # a reference-prior run writes its GLB in the mesh's own frame: the shipped file itself
    nearest = []
    assert bench.object_accuracy(Path(ASSETS["car"]), ASSETS["car"], paths, "reference", nearest) == 1.0
    assert nearest == [ASSETS["car"]] * bench.ACCURACY["views"]
    # the car asked for as the penguin is never nearer to the penguin than to the car
    assert bench.object_accuracy(tmp_path / "car.glb", ASSETS["penguin"], paths, "learned") == 0.0
    assert bench.object_accuracy(tmp_path / "car.glb", ASSETS["car"], [ASSETS["car"]], "learned") is None


def test_object_accuracy_is_kept_in_the_run_folder_and_recomputed_only_for_other_objects(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(ASSETS["robot"], run / "model.glb")
    result = {"dir": str(run), "prior": "reference", "object_path": ASSETS["robot"]}
    assert bench.run_object_accuracy(result, OBJECTS[:2]) == 1.0
    cache = run / "object_accuracy.json"
    saved = json.loads(cache.read_text())
    assert saved["nearest"] == ["a toy robot"] * bench.ACCURACY["views"]
    saved["object_accuracy"] = 0.5  # a marker: read back, not computed again
    cache.write_text(json.dumps(saved))
    assert bench.run_object_accuracy(result, OBJECTS[:2]) == 0.5
    assert bench.run_object_accuracy(result, OBJECTS) == 1.0  # other objects: computed again
    assert bench.run_object_accuracy(result, OBJECTS[:1]) is None  # one object: undefined
    assert bench.run_object_accuracy({**result, "error": "boom"}, OBJECTS) is None


# -- the report ----------------------------------------------------------------------------------------------------
def fake(recipe, prior, obj, **m):
    base = {"glb_iou": 0.95, "glb_psnr": 20.0, "glb_janus": 0.0, "object_accuracy": 1.0, "seconds": 100.0}
    return {"recipe": recipe, "guidance": "sds", "prior": prior, "object": obj, "seed": 0,
            "dir": f"/nonexistent/{recipe}-{prior}-{obj}", **base, **m}


def cells(report: str, *first: str, columns: int = 0) -> list[str]:
    """The cells of the report's first table row that starts with ``first`` (and has ``columns`` cells)."""
    rows = [[c.strip() for c in x.split("|")[1:-1]] for x in report.splitlines() if x.startswith("|")]
    return next(r for r in rows if r[:len(first)] == list(first) and (not columns or len(r) == columns))


def test_the_report_has_object_accuracy_the_floors_of_each_kind_of_row_and_the_multiview_gain():
    results = [fake("text-nerf", "learned", "a toy robot", glb_psnr=16.0, object_accuracy=0.5),
               fake("text-mv-nerf", "multiview", "a toy robot", glb_psnr=19.5),
               fake("text-nerf", "learned", "a toy car", glb_psnr=18.5, glb_janus=0.1),
               fake("text-mv-nerf", "multiview", "a toy car", glb_psnr=19.0, glb_janus=0.01),
               fake("text-mv-gaussians", "multiview", "a toy car", object_accuracy=None),
               fake("text-gaussians", "reference", "a toy car")]  # no learned row: no gaussians gain
    rows, report = bench.summarize(results, OBJECTS[:2], 1)
    header = cells(report, "recipe", "guidance", "prior", "object")
    assert "obj acc" in header
    acc = header.index("obj acc")
    robot_2d = cells(report, "text-nerf", "sds", "learned", "a toy robot")
    assert robot_2d[acc] == "0.50" and robot_2d[-1] == "FAIL: PSNR"  # the 2D floors: no object accuracy floor
    assert cells(report, "text-nerf", "sds", "learned", "a toy car")[-1] == "pass"
    assert cells(report, "text-mv-nerf", "sds", "multiview", "a toy robot")[-1] == "pass"  # no PSNR floor
    assert cells(report, "text-mv-nerf", "sds", "multiview", "a toy car")[-1] == "FAIL: Janus"  # Janus 0
    assert cells(report, "text-mv-gaussians", "sds", "multiview", "a toy car")[-1] == "FAIL: obj acc"
    per_method = cells(report, "text-nerf", "sds", "learned", columns=8)
    assert cells(report, "recipe", "guidance", "prior", "IoU")[6] == "obj acc"
    assert per_method[6] == "0.75" and per_method[-1] == "1/2"  # mean over the objects
    gains = bench.gain_rows(rows)
    assert [(g["recipe"], g["baseline"], g["object"], round(g["gain"], 2), g["pass"]) for g in gains] == [
        ("text-mv-nerf", "text-nerf", "a toy car", 0.5, False), ("text-mv-nerf", "text-nerf", "a toy robot", 3.5, True)]
    assert cells(report, "text-mv-nerf", "text-nerf", "sds", "a toy robot")[-2:] == ["+3.50", "pass"]
    assert cells(report, "text-mv-nerf", "text-nerf", "sds", "a toy car")[-2:] == ["+0.50", "FAIL"]
    # a multi-view run asking for a Janus of 0.004 passes (0 at the report's precision); 0.2 IoU misses
    assert bench.floor_failures({**fake("text-mv-nerf", "multiview", "x"), "glb_janus": 0.004}) == []
    assert bench.floor_failures({**fake("text-mv-nerf", "multiview", "x"), "glb_iou": 0.85}) == ["IoU"]


def test_the_picture_has_the_true_objects_on_top_and_a_labelled_row_per_method(tmp_path):
    import numpy as np
    from PIL import Image

    results = []
    for recipe, prior in (("text-nerf", "learned"), ("text-mv-nerf", "multiview"), ("text-mv-gaussians", "multiview")):
        run = tmp_path / recipe
        run.mkdir()
        normalized_glb("robot", run / "model.glb")
        results.append({**fake(recipe, prior, "a toy robot"), "dir": str(run)})
    path = tmp_path / "p.png"
    res = 20
    bench.picture(path, results, OBJECTS[:1], 1, res=res)
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[0] == 4 * (res + 4) + 14  # the true objects, then three methods
    label_w = img.shape[1] - (bench.RING * res + 6)
    rows = [img[14 + i * (res + 4):14 + i * (res + 4) + res] for i in range(4)]
    assert all((row[:, label_w:] < 250).any() for row in rows)  # frames on every row
    assert all((row[:, :label_w] < 128).any() for row in rows)  # and a label
    # the methods sorted by recipe name: the multi-view rows render the same GLB as the true object's row
    assert np.array_equal(rows[1][:, label_w:], rows[0][:, label_w:])


# -- a smoke run of the tool -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_text_to_3d_benchmark_writes_its_table_and_picture(tmp_path):
    pytest.importorskip("diffusers")
    sys.path.insert(0, str(ROOT / "tests"))
    import tiny_diffusers

    mv = tiny_diffusers.save_multiview(tmp_path / "tiny-mv", latent=False)
    out = tmp_path / "text_to_3d.md"
    # one 2D recipe and its multi-view counterpart (the pairing of all four: the test of plan() above)
    cmd = [sys.executable, str(ROOT / "tools" / "bench_text_to_3d.py"), "--smoke", "--mv-prior-folder", str(mv),
           "--recipes", "text-nerf,text-mv-nerf", "--object", "assets/robot.glb:a toy robot",
           "--object", "assets/car.glb:a toy car", "--work", str(tmp_path / "runs"), "--out", str(out), "--jobs", "2"]
    env = {**os.environ, "DREAMCORE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = out.read_text()
    acc = cells(text, "recipe", "guidance", "prior", "object").index("obj acc")
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()
            if line.startswith("| text-") and line.count("|") > 12]
    assert {tuple(r[:4]) for r in rows} == {("text-nerf", "sds", "learned", "a toy robot"),
                                            ("text-nerf", "sds", "reference", "a toy robot"),
                                            ("text-mv-nerf", "sds", "multiview", "a toy robot")}
    assert all(0.0 <= float(r[acc]) <= 1.0 for r in rows)  # against the car too, though only the robot ran
    data = json.loads(out.with_suffix(".json").read_text())
    assert len(data["runs"]) == 3 and all("glb_janus" in r for r in data["runs"])
    assert [(g["recipe"], g["baseline"], g["object"]) for g in data["gains"]] == [
        ("text-mv-nerf", "text-nerf", "a toy robot")]
    assert cells(text, "text-mv-nerf", "text-nerf", "sds", "a toy robot")
    caches = {r["name"]: Path(r["dir"]) / "object_accuracy.json" for r in data["runs"]}
    stamps = {name: c.stat().st_mtime_ns for name, c in caches.items()}
    from PIL import Image

    picture = Image.open(out.with_suffix(".png"))
    assert picture.size[0] > 200 and picture.size[1] == 4 * (40 + 4) + 14  # the true objects + 3 methods
    # a second run reuses the finished run folders and their object accuracy instead of training again
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    data2 = json.loads(out.with_suffix(".json").read_text())
    assert "3 runs planned, 0 run in" in again.stdout  # nothing trained again
    assert all(r["seconds"] > 0 for r in data2["runs"])  # with the wall time they took
    assert {name: c.stat().st_mtime_ns for name, c in caches.items()} == stamps
    assert [r["object_accuracy"] for r in data2["runs"]] == [r["object_accuracy"] for r in data["runs"]]
    # one row file per run, with its config hash and commit; without the run folders the rows alone make the report
    rows = sorted((tmp_path / "runs" / "rows").glob("*.json"))
    assert [p.stem for p in rows] == sorted(r["name"] for r in data["runs"])
    assert all(json.loads(p.read_text())["config_hash"] for p in rows)
    shutil.rmtree(tmp_path / "runs" / "text-nerf-sds-learned-a_toy_robot-0")
    shutil.rmtree(tmp_path / "runs" / "text-mv-nerf-sds-multiview-a_toy_robot-0")
    third = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert third.returncode == 0, third.stdout[-2000:] + third.stderr[-2000:]
    assert out.read_text().split("This invocation")[0] == text.split("This invocation")[0]
    assert Image.open(out.with_suffix(".png")).size == picture.size
    # a changed setting is a new run: the row is replaced, the others reused
    changed = subprocess.run(cmd + ["guidance.guidance_scale=5.0"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert changed.returncode == 0 and "3 run in" in changed.stdout, changed.stdout[-2000:]


# -- CI's short grid ------------------------------------------------------------------------------------------------
# guards, not the issue's floors: measured 2026-12-07 (2 cores) IoU 0.78-0.90 everywhere; multi-view rows object
# accuracy 1.0 and Janus 0 on all four, the 2D rows Janus 0.375 on the penguin and the house
QUICK_IOU = 0.7
QUICK_MV_ACCURACY = 0.9
QUICK_MV_JANUS = 0.125


@pytest.mark.slow
def test_quick_grid_runs_the_2d_and_multiview_recipes_on_the_four_objects(tmp_path):
    """`--quick` on the shipped priors (~10 min on 2 cores): text-nerf (2D prior) and text-mv-nerf (multi-view prior)
    on the four objects, schedules scaled to 300 of 800 steps, rows beside the runs (not the benchmark's), and the
    multi-view rows keep what the multi-view prior is for: the named object, no Janus."""
    pytest.importorskip("diffusers")
    out = tmp_path / "quick.md"
    cmd = [sys.executable, str(ROOT / "tools" / "bench_text_to_3d.py"), "--quick", "--work", str(tmp_path / "runs"),
           "--out", str(out)]
    env = {**os.environ, "DREAMCORE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "runs" / "rows").glob("*.json")}
    assert set(rows) == {f"{r}-sds-{p}-{o}-0" for r, p in (("text-nerf", "learned"), ("text-mv-nerf", "multiview"))
                         for o in ("a_toy_robot", "a_toy_car", "a_penguin", "a_mushroom_house")}
    assert all(r["steps"] == 300 and r["glb_watertight"] and r["glb_iou"] > QUICK_IOU for r in rows.values())
    for name, r in rows.items():
        if name.startswith("text-mv-nerf"):
            assert r["object_accuracy"] >= QUICK_MV_ACCURACY and r["glb_janus"] <= QUICK_MV_JANUS, (name, r)


# -- rows: one file per finished run, reused by config hash ---------------------------------------------------------
import bench_rows  # noqa: E402


def test_the_config_hash_sees_what_decides_a_run_and_nothing_else(tmp_path):
    prior = tmp_path / "assets" / "prior"
    weights = prior / "unet" / "w.bin"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"\x00" * 64)
    (prior / "report.md").write_text("first report")
    tree = {"prompt": "a toy robot", "run": {"dir": str(tmp_path / "run-a"), "threads": 1, "progress": False,
                                              "steps": 800},
            "prior": {"name": "pixel-diffusion", "model": str(prior)}}
    h = bench_rows.config_hash(tree, tmp_path)

    def changed(**run):
        bench_rows.content_hash.cache_clear()
        t = json.loads(json.dumps(tree))
        t["run"].update(run)
        return bench_rows.config_hash(t, tmp_path)

    assert changed(dir=str(tmp_path / "elsewhere"), threads=2, progress=True) == h  # not the result's business
    assert changed(steps=801) != h
    # the same checkout written relative or absolute, or moved, hashes the same
    rel = json.loads(json.dumps(tree))
    rel["prior"]["model"] = "assets/prior"
    assert bench_rows.config_hash(rel, tmp_path) == h
    moved = tmp_path / "moved"
    shutil.copytree(prior, moved / "assets" / "prior")
    assert bench_rows.config_hash({**tree, "prior": {**tree["prior"], "model": str(moved / "assets" / "prior")}},
                                  moved) == h
    # a name is not a path, even where a file of that name exists
    (tmp_path / "nerf").write_text("x")
    assert bench_rows.canonical_tree({"name": "nerf"}, tmp_path) == {"name": "nerf"}
    # the prior's description may change; its weights may not
    (prior / "report.md").write_text("a rewritten report")
    assert changed() == h
    weights.write_bytes(b"\x01" * 64)
    assert changed() != h


def test_rows_are_written_whole_read_back_and_a_bad_one_is_ignored(tmp_path):
    bench_rows.write_row(tmp_path / "a.json", {"config_hash": "x", "glb_iou": 0.9})
    (tmp_path / "b.json").write_text("{not json")
    (tmp_path / "c.json").write_text(json.dumps({"no": "hash"}))
    rows = bench_rows.load_rows(tmp_path)
    assert [(r["config_hash"], r["glb_iou"]) for r in rows] == [("x", 0.9)]
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_row_with_the_runs_hash_is_reused_without_running_and_another_hash_runs_again(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(
        RuntimeError("ran")))
    job = {"name": "text-nerf-sds-learned-a_toy_robot-0", "recipe": "text-nerf", "guidance": "sds",
           "prior": "learned", "object": "a toy robot", "object_path": ASSETS["robot"], "seed": 0,
           "dir": str(tmp_path / "gone"), "overrides": [], "config_hash": "h1"}
    bench_rows.write_row(tmp_path / "rows" / f"{job['name']}.json", {"config_hash": "h1", "glb_iou": 0.88,
                                                                      "commit": "abc"})
    out = bench.run_one(job, [], 1, OBJECTS, tmp_path / "rows")
    assert out["reused"] and out["glb_iou"] == 0.88 and out["commit"] == "abc" and not calls
    with pytest.raises(RuntimeError, match="ran"):  # the config changed: the run is made again
        bench.run_one({**job, "config_hash": "h2"}, [], 1, OBJECTS, tmp_path / "rows")


def test_a_finished_run_folder_becomes_a_row_with_its_scores_teacher_gap_and_ring(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    normalized_glb("penguin", run / "model.glb")
    (run / "metrics.json").write_text(json.dumps({"glb_iou": 0.9, "glb_psnr": 20.0, "glb_janus": 0.0}))
    (run / "bench_seconds.txt").write_text("123.4\n")
    (run / "bench_commit.txt").write_text("cafe\n")
    (run / "bench_threads.txt").write_text("1\n")
    job = {"name": "text-nerf-sds-learned-a_penguin-2", "recipe": "text-nerf", "guidance": "sds",
           "prior": "learned", "object": "a penguin", "object_path": ASSETS["penguin"], "seed": 2,
           "dir": str(run), "overrides": []}
    teacher = bench.teacher_psnr(ROOT / "assets" / "tiny-prior", "a penguin")
    assert teacher is not None and 10 < teacher < 25
    assert bench.teacher_psnr(ROOT / "assets" / "tiny-prior", "a teapot") is None
    assert bench.teacher_psnr(None, "a penguin") is None
    from dreamcore.config import load_config

    (run / "config.yaml").write_text((ROOT / "configs" / "text-nerf.yaml").read_text())
    job["config_hash"] = bench.folder_hash(run)
    assert job["config_hash"] == bench_rows.config_hash(
        __import__("dreamcore.config", fromlist=["to_tree"]).to_tree(load_config(run / "config.yaml")))
    objects = [{"prompt": "a penguin", "path": ASSETS["penguin"]}, {"prompt": "a toy car", "path": ASSETS["car"]}]
    out = bench.run_one(job, [], 1, objects, tmp_path / "rows", teacher)
    row = json.loads((tmp_path / "rows" / f"{job['name']}.json").read_text())
    assert out["reused"] and row["config_hash"] == job["config_hash"]
    assert row["seconds"] == 123.4 and row["commit"] == "cafe" and row["threads"] == 1
    assert row["object_accuracy"] == 1.0 and row["object_path"] == "assets/penguin.glb"
    assert row["teacher_gap"] == pytest.approx(20.0 - teacher)
    frames = bench.load_ring(tmp_path / "rows" / row["ring"])
    assert tuple(frames.shape) == (bench.RING, bench.RING_RES, bench.RING_RES, 3)
    # the row's ring is the GLB's ring: the picture and the diversity need no run folder
    import torch

    assert torch.allclose(frames, bench.ring_frames(run / "model.glb", bench.RING_RES, "learned"), atol=1 / 255)
    shutil.rmtree(run)
    row["row_file"] = str(tmp_path / "rows" / f"{job['name']}.json")
    assert bench.diversity([row, row]) == 0.0


def test_runs_are_ordered_one_seed_of_everything_first_and_the_budget_starts_only_what_fits(tmp_path):
    jobs = bench.informative_order(bench.plan(["text-nerf", "text-mv-nerf"], ["sds"], ["learned", "multiview"],
                                              OBJECTS[:2], 3, tmp_path, tmp_path, tmp_path))
    assert [j["seed"] for j in jobs] == [0] * 4 + [1] * 4 + [2] * 4
    assert {(j["recipe"], j["object"]) for j in jobs[:4]} == {(r, o["prompt"]) for r in ("text-nerf", "text-mv-nerf")
                                                             for o in OBJECTS[:2]}
    rows = [{"recipe": "text-nerf", "guidance": "sds", "seconds": 300.0},
            {"recipe": "text-nerf", "guidance": "sds", "seconds": 500.0}]
    t0 = bench.time.perf_counter()
    gate = bench.BudgetGate(5.0, rows, t0 - 60.0)  # one minute of five spent
    assert gate.expected(jobs[0]) == 400.0
    assert not gate.may_start({**jobs[0], "recipe": "text-nerf"})  # 60 + 400 s > 300 s
    assert gate.may_start({**jobs[0], "recipe": "text-mv-nerf"})  # no row of it yet: expected 0
    assert bench.BudgetGate(None, rows, t0).may_start(jobs[0])
    # a row already there costs nothing, whatever is left of the budget
    bench_rows.write_row(tmp_path / "rows" / f"{jobs[0]['name']}.json", {"config_hash": "h"})
    spent = bench.BudgetGate(0.0, rows, t0 - 60.0)
    assert spent.may_start({**jobs[0], "config_hash": "h"}, tmp_path / "rows")
    assert not spent.may_start({**jobs[0], "config_hash": "other"}, tmp_path / "rows")
