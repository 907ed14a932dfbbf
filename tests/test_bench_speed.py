"""The speed benchmark tool: its plan (budgets as fractions of each recipe's steps, SIR's overrides, cheapest
first), the verdict against SDS's full run (reached / not reached, the 1/5 calls and wall-clock ratios), the report
and picture from rows, and a run of the tool at a few steps that writes rows and reuses them (at these sizes it
checks the tool, not the methods)."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import bench_speed as bench  # noqa: E402


def test_the_plan_scales_each_recipes_steps_and_gives_sir_its_overrides():
    jobs = bench.plan(["reference-nerf", "learned-nerf"], ["sds", "sir"], {"sds": [0.5, 1.0], "sir": [0.1]}, 1)
    by = {(j["setting"], j["method"], j["steps"]) for j in jobs}
    assert ("reference-nerf", "sds", 1000) in by and ("reference-nerf", "sds", 500) in by  # demo.yaml: 1000 steps
    assert ("reference-nerf", "sir", 100) in by and ("learned-nerf", "sir", 80) in by  # text-nerf: 800
    sir = {j["setting"]: j["overrides"] for j in jobs if j["method"] == "sir"}
    # the reference prior keeps the recipe's pixel subsets; the tiny priors need whole images
    assert "guidance.name=sir" in sir["reference-nerf"] and "system.rays_per_view=0" not in sir["reference-nerf"]
    assert "guidance.name=sir" in sir["learned-nerf"] and "system.rays_per_view=0" in sir["learned-nerf"]
    long = bench.plan(["learned-nerf"], ["sir-long"], {"sds": [1.0], "sir": [0.5]}, 1)
    assert [j["steps"] for j in long] == [400] and "guidance.round_steps=40" in long[0]["overrides"]
    assert "guidance.name=sir" in long[0]["overrides"]
    sds = next(j for j in jobs if j["method"] == "sds")
    assert not any(o.startswith("guidance.name") for o in sds["overrides"])
    fracs = [j["steps"] / j["full_steps"] for j in jobs]
    assert fracs == sorted(fracs)  # the cheapest budgets first


def _pt(steps, full, psnr, calls, secs):
    return {"steps": steps, "full_steps": full, "glb_psnr": psnr, "prior_calls": calls, "train_seconds": secs}


def test_the_verdict_takes_sirs_cheapest_point_at_sdss_full_run_quality():
    sds = [_pt(250, 1000, 20.0, 250, 25.0), _pt(1000, 1000, 24.0, 1000, 100.0)]
    sir = [_pt(50, 1000, 22.0, 60, 10.0), _pt(100, 1000, 24.5, 150, 20.0), _pt(200, 1000, 25.0, 300, 40.0)]
    v = bench.verdict(sds, sir, 0.0)
    assert v["status"] == "pass" and v["sir"]["steps"] == 100
    assert abs(v["calls_ratio"] - 0.15) < 1e-9 and abs(v["wall_ratio"] - 0.2) < 1e-9
    assert bench.verdict(sds, sir[2:], 0.0)["status"] == "FAIL"  # 300 calls: 0.3 of SDS's
    assert bench.verdict(sds, sir[:1], 0.0)["status"] == "not reached"
    assert bench.verdict(sds, sir[:1], 2.0)["status"] == "pass"  # within a 2 dB tolerance
    assert bench.verdict(sds[:1], sir, 0.0)["status"] == "incomplete"  # no full SDS run yet


def test_the_report_and_picture_come_from_the_rows(tmp_path):
    rows = []
    for method, steps, psnr, calls, secs in (("sds", 500, 20.0, 500, 50.0), ("sds", 1000, 24.0, 1000, 100.0),
                                             ("sir", 100, 24.2, 140, 30.0)):
        for seed in range(2):
            rows.append({"setting": "reference-nerf", "method": method, "steps": steps, "full_steps": 1000,
                         "seed": seed, "glb_psnr": psnr + seed, "glb_iou": 0.9, "scene_psnr": psnr,
                         "scene_iou": 0.9, "prior_calls": calls, "prior_rows": 4 * calls, "train_seconds": secs,
                         "seconds_per_step": secs / steps})
    text, data = bench.report(rows, 0.0, "note")
    assert "## reference-nerf" in text and "| sir | 100 | 2 | 140 |" in text
    assert "Target (sir): **pass**" in text and "0.140× its prior calls" in text
    assert data["points"]["reference-nerf/sir"][0]["glb_psnr"] == 24.7  # the median over the two seeds
    bench.draw(data["points"], tmp_path / "speed.png")
    from PIL import Image

    img = Image.open(tmp_path / "speed.png")
    assert img.size == (640, 200)
    import numpy as np

    assert len(np.unique(np.asarray(img.convert("RGB")).reshape(-1, 3), axis=0)) > 3  # axes, two series


def test_the_tool_runs_writes_rows_and_reuses_them(tmp_path):
    small = ["camera.batch_size=2", "camera.resolution=16", "representation.n_levels=4",
             "representation.log2_table_size=12", "export.resolution=32", "export.texture_size=32",
             "export.isosurface_search=[]", "eval.views=2", "eval.resolution=16", "eval.janus_views=2",
             "prior.bank_views=4"]
    args = ["--settings", "reference-nerf", "--methods", "sds,sir", "--sds-fractions", "0.004", "--sir-fractions", "0.004",
            "--threads", "1", "--work", str(tmp_path / "runs"), "--rows", str(tmp_path / "rows"),
            "--out", str(tmp_path / "speed.md"), "--sir-set", "guidance.round_steps=2", "--sir-set",
            "guidance.denoise_steps=4", "--sir-set", "guidance.init_steps=2", *small]
    assert bench.main(args) == 0
    text = (tmp_path / "speed.md").read_text()
    rows = sorted(p.name for p in (tmp_path / "rows").glob("*.json"))
    assert rows == ["reference-nerf-sds-4-0.json", "reference-nerf-sir-4-0.json"]
    sir = json.loads((tmp_path / "rows" / rows[1]).read_text())
    sds = json.loads((tmp_path / "rows" / rows[0]).read_text())
    assert sds["prior_calls"] == 4  # one call a step (CFG's rows in it)
    assert sir["prior_calls"] > 4 and sir["glb_psnr"] is not None and sir["steps"] == 4  # two rounds' targets
    assert "| sir | 4 | 1 |" in text and "| sds | 4 | 1 |" in text
    # a second invocation reuses the row (no run folder is made again)
    import shutil

    shutil.rmtree(tmp_path / "runs")
    assert bench.main(args) == 0
    assert not (tmp_path / "runs" / "reference-nerf-sir-4-0").exists()
