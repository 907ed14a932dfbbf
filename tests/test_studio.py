"""The studio's engine room without a browser: every offered recipe with every preset is a valid config, refused
requests leave no run folder, progress is read from the trainer's log lines, and the reproducing command and the
gallery come from the run folders alone."""

from __future__ import annotations

import json
import re
import time

import pytest

from dreamcore.config import config_path, load_config
from dreamcore.errors import DreamcoreError
from dreamcore.studio import runs
from dreamcore.studio.queue import JobQueue
from dreamcore.studio.recipes import IMAGE_RECIPES, PRESETS, RECONSTRUCT_RECIPES, describe, preset_overrides, recipes
from dreamcore.studio.safety import UnsafeInput


def test_every_recipe_with_every_preset_is_a_valid_config():
    offered = recipes() + recipes(RECONSTRUCT_RECIPES) + recipes(IMAGE_RECIPES)
    assert {"text-nerf", "text-mv-gaussians", "reference-nerf", "image-to-3d-nerf"} <= {r.name for r in offered}
    assert recipes()[0].name == "text-mv-nerf"  # the page's default: the multi-view prior (no Janus objects)
    assert all(r.description for r in offered)
    for r in offered:
        plain = load_config(r.path)
        for preset in PRESETS:
            cfg = load_config(r.path, [*preset_overrides(preset, plain), "prompt=a toy robot"])
            if preset == "draft":
                assert cfg.run.steps == min(300, plain.run.steps)
                # the export level searched around the recipe's own, or the recipe's own search kept
                searched = plain.export.surface == "density"
                assert cfg.export.isosurface_search == (plain.export.isosurface_search or ([
                    plain.export.isosurface * f for f in (0.25, 0.5, 1.0, 2.0)] if searched else []))
            if preset == "high":
                assert cfg.run.steps == max(plain.run.steps, min(2 * plain.run.steps, 2000))
    with pytest.raises(DreamcoreError, match="unknown quality preset 'best'"):
        preset_overrides("best", load_config(config_path("text-nerf")))


def test_every_offered_recipe_is_described_in_whole_sentences():
    """The recipe dropdowns show the sentence each config opens with: whole (a comment wraps it over lines), never
    cut at a line's end or a length, and short enough for a dropdown."""
    for r in recipes() + recipes(RECONSTRUCT_RECIPES) + recipes(IMAGE_RECIPES):
        d = r.description
        assert d.endswith((".", "!", "?")) and d[0].isupper(), (r.name, d)
        assert not re.search(r"\b(al|e\.g|i\.e|Sec)\.$", d), (r.name, d)  # an abbreviation ends no sentence
        assert d.count("(") == d.count(")") and d.count('"') % 2 == 0 and d.count("`") % 2 == 0, (r.name, d)
        opening = " ".join(line.lstrip("#").strip() for line in r.path.read_text(encoding="utf-8").splitlines()
                           if line.startswith("#"))
        assert opening.startswith(d), (r.name, d)  # the file's own words, from its first one
        assert len(d) <= 200, (r.name, len(d), d)


def test_a_description_is_the_first_whole_sentence_however_it_wraps(tmp_path):
    cfg = tmp_path / "x.yaml"
    cfg.write_text("# Thing-like text-to-3D (Doe et al. 2024, Sec. 3.1): a NeRF with SDS, e.g. at ω = 7.5,\n"
                   "# \"front view\" prompts (t ∈ [0.02, 0.98]. really) and 1e-3. Defaults from the paper.\n"
                   "#   dreamcore generate --config x.yaml\nprompt: a\n", encoding="utf-8")
    assert describe(cfg) == ("Thing-like text-to-3D (Doe et al. 2024, Sec. 3.1): a NeRF with SDS, e.g. at ω = 7.5, "
                             "\"front view\" prompts (t ∈ [0.02, 0.98]. really) and 1e-3.")
    cfg.write_text("# One sentence only!\n# dreamcore generate --config x.yaml. Ignored.\nprompt: a\n")
    assert describe(cfg) == "One sentence only!"


def test_draft_shortens_the_schedules_with_the_run():
    """text-nerf's 800 steps as a 300-step draft: its timestep anneal and opacity ramp end at the same fraction
    of the run, and a length the page asks for itself is kept."""
    plain = load_config(config_path("text-nerf"))
    draft = load_config(config_path("text-nerf"), preset_overrides("draft", plain))
    assert draft.run.steps == 300
    assert draft.guidance.t_max(300) == pytest.approx(plain.guidance.t_max(800))
    assert draft.guidance.t_max(150) == pytest.approx(plain.guidance.t_max(400))
    assert draft.system.lambda_opaque(75) == pytest.approx(plain.system.lambda_opaque(200))
    short = load_config(config_path("text-nerf"), ["run.steps=30"])
    assert not any(o.startswith("run.time_scale") for o in preset_overrides("draft", short))  # already short


@pytest.fixture
def queue(tmp_path):
    q = JobQueue(tmp_path / "runs", poll_s=0.05)
    yield q
    q.close()


def test_refused_requests_leave_no_run_folder(queue, tmp_path):
    with pytest.raises(DreamcoreError, match="unknown config key 'run.stepz'"):
        queue.submit("a toy robot", "text-nerf", "draft", overrides=["run.stepz=3"])
    with pytest.raises(UnsafeInput, match="plugins cannot be set"):
        queue.submit("a toy robot", "text-nerf", "draft", overrides=["plugins=[x.py]"])
    with pytest.raises(DreamcoreError, match="the prompt is empty"):
        queue.submit("  ", "text-nerf")
    fake = tmp_path / "fake.glb"
    fake.write_text("not a mesh\n")
    with pytest.raises(UnsafeInput, match="judged by its content"):
        queue.submit("x", "reference-nerf", "draft", upload=fake)
    assert list(queue.runs_dir.iterdir()) == []


def test_progress_command_and_gallery_come_from_the_run_folder(tmp_path):
    d = tmp_path / "runs" / "a-robot-1"
    d.mkdir(parents=True)
    (d / "log.txt").write_text("2026-01-01 00:00:00 start: prompt='a robot' steps=100\n"
                               "2026-01-01 00:00:01 step 40/100 sds=0.5 opacity=0.25 s/step=0.200\n")
    p = runs.read_progress(d)
    assert (p.step, p.total, p.loss, p.fraction) == (40, 100, 0.75, 0.4) and p.eta_s == pytest.approx(12.0)
    attempt = (d / "log.txt").stat().st_size  # a resumed attempt: the killed one's steps are not its progress
    with open(d / "log.txt", "a") as f:
        f.write("2026-01-01 00:01:00 resume: prompt='a robot' steps=100\n")
    assert runs.read_progress(d, since=attempt).step == 0
    with open(d / "log.txt", "a") as f:
        f.write("2026-01-01 00:01:01 step 35/100 sds=0.5 s/step=0.200\n")
    assert runs.read_progress(d, since=attempt).step == 35 and runs.read_progress(d).step == 35
    rec = {"name": d.name, "prompt": "a robot", "seed": 3, "recipe": "text-nerf", "dir": str(d),
           "overrides": ["run.steps=100"], "created": time.time(), "status": "running", "pid": 2 ** 22 + 12345}
    runs.write_job(d, rec)
    assert runs.cli_command(rec) == (f"dreamcore generate 'a robot' --config configs/text-nerf.yaml run.steps=100 "
                                     f"run.seed=3 run.dir={d}")
    (d / "ckpt").mkdir()
    (d / "metrics.json").write_text(json.dumps({"glb_psnr": 29.5}))
    [entry] = runs.list_runs(tmp_path / "runs")
    assert entry.status == "interrupted" and entry.resumable  # its process is gone: offered for resume
    assert entry.metrics["glb_psnr"] == 29.5


def test_page_failures_read_as_words_and_their_traceback_goes_to_the_log(tmp_path):
    gr = pytest.importorskip("gradio")
    from dreamcore.studio.app import in_words

    log = tmp_path / "studio-errors.txt"

    def show_result(job):
        raise KeyError("glb_psnr")

    def cancel(job):
        raise DreamcoreError("job x is neither queued nor running")

    with pytest.raises(gr.Error) as caught:
        in_words(gr, show_result, log)("x")
    text = str(caught.value)
    assert "the studio could not do that (show result): KeyError: 'glb_psnr'" in text
    assert "Traceback" not in text and str(log) in text
    assert "Traceback" in log.read_text() and "raise KeyError" in log.read_text()
    with pytest.raises(gr.Error, match="job x is neither queued nor running"):
        in_words(gr, cancel, log)("x")
    assert in_words(gr, lambda job: job * 2, log)(21) == 42


def test_a_staged_upload_is_removed_only_inside_gradios_folder(tmp_path, monkeypatch):
    from dreamcore.studio.app import discard_staged

    stage = tmp_path / ".runs-gradio"  # Gradio's temp dir, beside the runs folder (app.gradio_dir)
    (stage / "abc").mkdir(parents=True)
    staged = stage / "abc" / "robot.glb"
    staged.write_bytes(b"glTF")
    elsewhere = tmp_path / "mine.glb"
    elsewhere.write_bytes(b"glTF")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(stage))
    discard_staged(str(elsewhere))
    discard_staged(str(staged))
    assert elsewhere.is_file() and not staged.exists() and not (stage / "abc").exists()
