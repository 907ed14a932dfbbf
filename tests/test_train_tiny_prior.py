"""tools/train_tiny_prior.py: a --quick run on two procedural vertex-coloured meshes (16 px, a 0.1 M-parameter UNet,
a few steps) writes a diffusers-format folder that diffusers/transformers load offline, with SD's schedule, a
word-level tokenizer, the evaluation figures, and identical weights when run twice with the same seed."""

import contextlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("train_tiny_prior", ROOT / "tools" / "train_tiny_prior.py")
ttp = importlib.util.module_from_spec(_spec)
sys.modules.setdefault(_spec.name, ttp)  # dataclasses look their module up while the file executes
_spec.loader.exec_module(ttp)

PROMPTS = ("a red tower", "a blue cup")
WEIGHT_FILES = ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors")


def _colored(mesh, rgb):
    import trimesh  # noqa: F401

    mesh.visual.vertex_colors = np.tile(np.array(list(rgb) + [255], np.uint8), (len(mesh.vertices), 1))
    return mesh


def _meshes(folder: Path) -> list[Path]:
    """Two asymmetric vertex-coloured meshes: a red tower with a yellow door at the front (+Z), a blue cup with a
    white handle on +X."""
    import trimesh

    tower = _colored(trimesh.creation.box((0.6, 1.6, 0.6)), (220, 40, 30))
    door = _colored(trimesh.creation.box((0.3, 0.5, 0.1)), (250, 220, 40))
    door.apply_translation([0, -0.5, 0.33])
    cup = _colored(trimesh.creation.cylinder(0.5, 0.8, sections=24), (40, 80, 220))
    cup.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    handle = _colored(trimesh.creation.box((0.3, 0.4, 0.12)), (245, 245, 245))
    handle.apply_translation([0.6, 0, 0])
    paths = [folder / "tower.ply", folder / "cup.ply"]
    trimesh.util.concatenate([tower, door]).export(paths[0])
    trimesh.util.concatenate([cup, handle]).export(paths[1])
    return paths


@contextlib.contextmanager
def offline_keeping_threads():
    """The tool's runs offline (HF_HUB_OFFLINE=1), with the test process's torch thread count and environment
    restored afterwards (the tool sets its own threads)."""
    threads = torch.get_num_threads()
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def _argv(meshes, out):
    args = []
    for path, prompt in zip(meshes, PROMPTS):
        args += ["--object", f"{path}:{prompt}"]
    return args + ["--out", str(out), "--quick", "--seed", "3", "--threads", "1", "--resolution", "16",
                   "--unet-channels", "8,16,16", "--steps", "4", "--batch", "8", "--views-per-object", "32",
                   "--eval-views-per-object", "16", "--eval-samples", "2", "--ddim-steps", "4"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two --quick runs with the same seed (threads restored afterwards)."""
    tmp = tmp_path_factory.mktemp("tiny_prior")
    meshes = _meshes(tmp)
    with offline_keeping_threads():
        assert ttp.main(_argv(meshes, tmp / "a")) == 0
        assert ttp.main(_argv(meshes, tmp / "b")) == 0
    return tmp / "a", tmp / "b", meshes


def test_folder_layout(runs):
    out, _, _ = runs
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "DreamcoreTinyPipeline" and index["_diffusers_version"]
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"] == ["transformers", "PreTrainedTokenizerFast"]
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"]
    for rel in ("unet/config.json", "text_encoder/config.json", "tokenizer/tokenizer.json",
                "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json", "dreamcore_prior.json",
                "report.md", "samples.png", *WEIGHT_FILES):
        assert (out / rel).is_file(), rel
    assert ttp.folder_mb(out) < 25.0
    assert "prompt acc" in (out / "report.md").read_text()


def test_parts_load_offline_and_run(runs, monkeypatch):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    out, _, _ = runs
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    unet = UNet2DConditionModel.from_pretrained(str(out), subfolder="unet", local_files_only=True)
    text = CLIPTextModel.from_pretrained(str(out), subfolder="text_encoder", local_files_only=True)
    tok = AutoTokenizer.from_pretrained(str(out), subfolder="tokenizer", local_files_only=True)
    sched = DDPMScheduler.from_pretrained(str(out), subfolder="scheduler", local_files_only=True)
    assert unet.config.in_channels == unet.config.out_channels == 3 and unet.config.sample_size == 16
    ids = tok(PROMPTS[0] + ", front view", padding="max_length", max_length=tok.model_max_length,
              truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        cond = text(ids)[0]
        assert cond.shape == (1, tok.model_max_length, unet.config.cross_attention_dim)
        eps = unet(torch.zeros(1, 3, 16, 16), torch.tensor([500]), encoder_hidden_states=cond).sample
    assert eps.shape == (1, 3, 16, 16) and torch.isfinite(eps).all()
    assert sched.config.prediction_type == "epsilon"
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(sched.alphas_cumprod.double(), torch.cumprod(1.0 - betas, 0), atol=1e-6)


def test_tokenizer_knows_the_captions_and_maps_unknown_words_to_unk(runs):
    from transformers import AutoTokenizer

    out, _, _ = runs
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"), local_files_only=True)
    length = tok.model_max_length
    assert length == 16
    meta = json.loads((out / "dreamcore_prior.json").read_text())
    assert meta["captions"] == [f"{p}, {v} view" for p in PROMPTS for v in ("front", "side", "back", "overhead")]
    for caption in meta["captions"]:
        ids = tok(caption).input_ids
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True).replace(" ,", ",") == caption
    assert tok("A RED Tower").input_ids == tok("a red tower").input_ids  # lower-cases itself
    ids = tok("a purple zebra, front view!").input_ids
    assert ids.count(tok.unk_token_id) == 3  # purple, zebra, "!"
    empty = tok("", padding="max_length", max_length=length).input_ids
    assert empty == [tok.bos_token_id, tok.eos_token_id] + [tok.pad_token_id] * (length - 2)


def test_report_holds_the_evaluation(runs):
    out, _, meshes = runs
    meta = json.loads((out / "dreamcore_prior.json").read_text())
    assert [o["prompt"] for o in meta["objects"]] == list(PROMPTS)
    assert [o["sha256"] for o in meta["objects"]] == [ttp.sha256_file(p) for p in meshes]
    ev = meta["evaluation"]
    for key in ("prompt_accuracy", "view_accuracy"):
        assert 0.0 <= ev[key] <= 1.0
    assert len(ev["per_caption"]) == 8
    for row in ev["per_caption"]:
        assert 0.0 <= row["prompt_accuracy"] <= 1.0 and 0.0 <= row["view_accuracy"] <= 1.0
        assert np.isfinite(row["psnr_named"]) and np.isfinite(row["psnr_other"])
    assert set(ev["x0_mse"]) == {"20", "400", "950"}
    assert all(v["cond"] >= 0 for v in ev["x0_mse"].values())
    assert meta["timings"]["train_s_per_step"] > 0 and meta["timings"]["render_images_per_s"] > 0
    assert meta["settings"]["elevation_range"] == [-10.0, 80.0]


def assert_same_weights(a: Path, b: Path, files) -> None:
    from safetensors.torch import load_file

    for rel in files:
        wa, wb = load_file(str(a / rel)), load_file(str(b / rel))
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), rel


def test_same_seed_gives_identical_weights(runs):
    a, b, _ = runs
    assert_same_weights(a, b, WEIGHT_FILES)


def test_fitted_background_scoring_finds_the_render():
    """A held-out render on any solid background is its own nearest render (the background is fitted)."""
    g = torch.Generator().manual_seed(0)
    color = torch.rand(6, 3, 8, 8, generator=g)
    alpha = (torch.rand(6, 1, 8, 8, generator=g) > 0.4).float()
    color = color * alpha
    bg = torch.rand(6, 3, generator=g)
    mse, fitted = ttp.fitted_mse(ttp.composite(color, alpha, bg), color, alpha)
    assert torch.equal(mse.argmin(1), torch.arange(6))
    assert torch.allclose(fitted[torch.arange(6), torch.arange(6)], bg, atol=1e-4)


def test_eval_only_rescores_a_saved_folder(runs):
    _, out, _ = runs
    before = json.loads((out / "dreamcore_prior.json").read_text())
    threads = torch.get_num_threads()
    try:
        assert ttp.main(["--eval-only", str(out), "--threads", "1", "--eval-samples", "1", "--ddim-steps", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    after = json.loads((out / "dreamcore_prior.json").read_text())
    assert after["evaluation"]["samples"] == 8 and before["evaluation"]["samples"] == 16
    assert after["settings"] == before["settings"]


# ------------------------------------------------------------------------------------------------ --views N
MV_WEIGHT_FILES = ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors")


@pytest.fixture(scope="module")
def mv_runs(runs, tmp_path_factory):
    """Two --views 4 --quick runs with the same seed, scored against the 2D run's folder as the baseline."""
    tmp = tmp_path_factory.mktemp("tiny_mv_prior")
    two_d, _, meshes = runs
    with offline_keeping_threads():
        for name in ("a", "b"):
            assert ttp.main(_argv(meshes, tmp / name) + ["--views", "4", "--baseline-2d", str(two_d)]) == 0
    return tmp / "a", tmp / "b", meshes


def test_multi_view_folder_layout_and_unet_loads(mv_runs, monkeypatch):
    from dreamcore.cameras import orbit_cameras, view_groups
    from dreamcore.priors.mv_cameras import camera_condition
    from dreamcore.priors.mv_unet import MultiViewUNet

    out, _, _ = mv_runs
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "DreamcoreTinyMultiViewPipeline"
    assert index["unet"] == ["dreamcore", "MultiViewUNet"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"] and "vae" not in index
    for rel in ("unet/config.json", "text_encoder/config.json", "tokenizer/tokenizer.json", "data_mean.safetensors",
                "scheduler/scheduler_config.json", "dreamcore_prior.json", "report.md", "samples.png",
                *MV_WEIGHT_FILES):
        assert (out / rel).is_file(), rel
    assert ttp.folder_mb(out) < 30.0
    unet = MultiViewUNet.from_pretrained(out / "unet")
    cfg = unet.config
    assert (cfg.image_size, cfg.in_channels, cfg.out_channels, cfg.camera_dim) == (16, 3, 3, 16)
    assert tuple(cfg.channel_mult) == (1, 2, 2) and cfg.model_channels == 8
    assert tuple(cfg.attention_resolutions) == (2, 4) and cfg.num_heads == 4
    cams = view_groups(orbit_cameras(torch.tensor([20.0]), torch.tensor([0.0]), torch.tensor([3.2]),
                                     torch.tensor([40.0])), 4)
    with torch.no_grad():
        pred = unet(torch.zeros(4, 3, 16, 16), torch.full((4,), 500), torch.zeros(4, 16, cfg.context_dim),
                    camera=camera_condition(cams), num_frames=4)
    assert pred.shape == (4, 3, 16, 16) and torch.isfinite(pred).all()


def test_multi_view_report_holds_the_evaluation(mv_runs):
    out, _, meshes = mv_runs
    meta = json.loads((out / "dreamcore_prior.json").read_text())
    assert meta["views"] == 4 and meta["front_azimuth"] == 90.0
    assert meta["captions"] == list(PROMPTS)  # plain prompts: the camera carries the view
    assert meta["settings"]["views"] == 4 and meta["settings"]["attention_resolutions"] == [2, 4]
    assert [o["sha256"] for o in meta["objects"]] == [ttp.sha256_file(p) for p in meshes]
    ev = meta["evaluation"]
    assert ev["views"] == 4 and ev["groups_per_object"] == 2 and ev["groups"] == 4 and ev["samples"] == 16
    assert 0.0 <= ev["prompt_accuracy"] <= 1.0
    assert np.isfinite(ev["consistency_psnr"]) and np.isfinite(ev["psnr_other"])
    base = ev["baseline_2d"]  # the 2D quick run knows the same prompts at the same resolution
    assert 0.0 <= base["prompt_accuracy"] <= 1.0 and np.isfinite(base["consistency_psnr"])
    assert base["unknown_words"] == 0
    assert [r["prompt"] for r in ev["per_object"]] == list(PROMPTS)
    for row in ev["per_object"]:
        assert row["groups"] == 2 and 0.0 <= row["prompt_accuracy"] <= 1.0
        assert np.isfinite(row["consistency_psnr"]) and np.isfinite(row["baseline_2d_consistency_psnr"])
    assert set(ev["x0_mse"]) == {"20", "400", "950"}
    assert meta["timings"]["train_s_per_step"] > 0
    report = (out / "report.md").read_text()
    assert "consistency PSNR" in report and "2D baseline" in report


def test_multi_view_same_seed_gives_identical_weights(mv_runs):
    a, b, _ = mv_runs
    assert_same_weights(a, b, MV_WEIGHT_FILES)


def test_multi_view_eval_only_rescores_a_saved_folder(mv_runs):
    _, out, _ = mv_runs
    before = json.loads((out / "dreamcore_prior.json").read_text())
    threads = torch.get_num_threads()
    try:
        assert ttp.main(["--eval-only", str(out), "--threads", "1", "--eval-samples", "1", "--ddim-steps", "2",
                         "--no-baseline"]) == 0
    finally:
        torch.set_num_threads(threads)
    after = json.loads((out / "dreamcore_prior.json").read_text())
    assert after["evaluation"]["groups"] == 2 and before["evaluation"]["groups"] == 4
    assert after["evaluation"]["baseline_2d"]["note"].startswith("skipped")
    assert after["settings"] == before["settings"] and after["views"] == 4


def test_batch_must_hold_whole_view_groups():
    with pytest.raises(SystemExit, match="--batch 6 is not a multiple of --views 4"):
        ttp.main(["--object", "nowhere.glb:a thing", "--out", "unused", "--views", "4", "--batch", "6", "--quick"])


def test_multi_view_step_shares_timestep_and_keeps_groups_together():
    """One timestep per group, each view with its own camera, the views of a group contiguous."""
    g = torch.Generator().manual_seed(0)
    n, groups = 4, 5
    data = ttp.GroupSet(torch.rand(groups * n, 3, 8, 8, generator=g), torch.rand(groups * n, 1, 8, 8, generator=g),
                        torch.randn(groups * n, 16, generator=g), torch.zeros(groups * n), torch.zeros(groups * n),
                        torch.arange(groups) % 2, n)
    seen = {}

    def unet(x, t, context, camera=None, num_frames=1):
        seen.update(x=x, t=t, context=context, camera=camera, num_frames=num_frames)
        return torch.zeros_like(x)

    s = ttp.Settings(batch=12, views=4, caption_dropout=0.0)
    cond_ids = torch.arange(3)[:, None].expand(3, 5)  # object 0, object 1, empty prompt
    loss = ttp.train_step_mv(unet, lambda ids: (ids[:, :, None].float().expand(-1, -1, 6),),
                             ttp.ddpm_scheduler("epsilon"), data, cond_ids, s, g)
    assert torch.isfinite(loss) and seen["num_frames"] == 4 and seen["x"].shape == (12, 3, 8, 8)
    t = seen["t"].view(3, 4)
    assert (t == t[:, :1]).all()
    rows = [int(torch.nonzero((data.camera == c).all(1))[0]) for c in seen["camera"]]
    group = torch.tensor(rows).view(3, 4)
    assert (group // n == group[:, :1] // n).all() and (group % n == torch.arange(n)).all()
    caption = seen["context"][:, 0, 0].view(3, 4)
    assert torch.equal(caption, data.obj[group[:, 0] // n].float()[:, None].expand(3, 4))


def test_group_scoring_finds_the_object():
    """A group made of one object's renders on one solid background is scored as that object (background fitted
    over the group's views)."""
    g = torch.Generator().manual_seed(1)
    n_obj, groups, n = 3, 6, 4
    alpha = (torch.rand(n_obj, groups * n, 1, 8, 8, generator=g) > 0.4).float()
    color = torch.rand(n_obj, groups * n, 3, 8, 8, generator=g) * alpha
    group_obj = torch.arange(groups) % n_obj
    bg = torch.rand(groups, 3, generator=g)
    view_obj = group_obj.repeat_interleave(n)
    k = torch.arange(groups * n)
    samples = ttp.composite(color[view_obj, k], alpha[view_obj, k], bg.repeat_interleave(n, 0))
    sc = ttp.score_groups(samples, group_obj, color, alpha, n)
    assert sc["prompt_hit"].eq(1).all() and (sc["psnr_named"] > 60).all() and (sc["psnr_other"] < 30).all()
    assert torch.allclose(sc["bg"][torch.arange(groups), group_obj], bg, atol=1e-4)


def test_init_from_continues_a_multi_view_folder_and_refuses_a_mismatched_one(mv_runs, tmp_path):
    """--init-from starts from the folder's weights (recorded in its settings): a 1-step continuation stays far
    nearer its source than a fresh model of the same seed; other prediction types and 2D runs are refused."""
    from safetensors.torch import load_file

    src, _, meshes = mv_runs
    threads = torch.get_num_threads()
    try:
        base = _argv(meshes, tmp_path / "cont") + ["--views", "4", "--no-baseline", "--seed", "5", "--steps", "1"]
        assert ttp.main(base + ["--init-from", str(src)]) == 0
        assert ttp.main(_argv(meshes, tmp_path / "fresh") + ["--views", "4", "--no-baseline", "--seed", "5",
                                                             "--steps", "1"]) == 0
        with pytest.raises(SystemExit, match="prediction_type|predicts"):
            ttp.main(base[:-2] + ["--steps", "1", "--prediction-type", "v_prediction", "--init-from", str(src)])
        with pytest.raises(SystemExit, match="multi-view"):
            ttp.main(_argv(meshes, tmp_path / "x") + ["--init-from", str(src)])
    finally:
        torch.set_num_threads(threads)
    meta = json.loads((tmp_path / "cont" / "dreamcore_prior.json").read_text())
    assert meta["settings"]["init_from"] == str(src)
    rel = "unet/diffusion_pytorch_model.safetensors"
    s, c, f = (load_file(str(p / rel)) for p in (src, tmp_path / "cont", tmp_path / "fresh"))
    dist = lambda a, b: sum(float((a[k] - b[k]).pow(2).sum()) for k in a)  # noqa: E731
    assert dist(c, s) < 0.1 * dist(f, s)


# ------------------------------------------------------------------------------------------------ --image-conditioning
ASSET_OBJECTS = (("robot.glb", "a toy robot"), ("car.glb", "a toy car"))


def _image_argv(out):
    args = []
    for name, prompt in ASSET_OBJECTS:
        args += ["--object", f"{ROOT / 'assets' / name}:{prompt}"]
    return args + ["--out", str(out), "--quick", "--seed", "2", "--threads", "1", "--resolution", "16",
                   "--unet-channels", "8,16,16", "--steps", "4", "--batch", "8", "--views-per-object", "32",
                   "--eval-views-per-object", "16", "--eval-samples", "2", "--ddim-steps", "4", "--views", "4",
                   "--no-baseline", "--image-conditioning"]


@pytest.fixture(scope="module")
def image_runs(tmp_path_factory):
    """Two --quick --views 4 --image-conditioning runs with the same seed on two objects of assets/."""
    root = tmp_path_factory.mktemp("tiny_mv_image_prior")
    with offline_keeping_threads():
        for name in ("a", "b"):
            assert ttp.main(_image_argv(root / name)) == 0
    return root / "a", root / "b"


@pytest.fixture
def image_run(image_runs):
    return image_runs[0]


def _without_timings(ev: dict) -> dict:
    ev = json.loads(json.dumps(ev))
    for key in ("sampling_s", "sampling_s_per_group", "seconds"):
        ev.pop(key, None)
    ev["image_conditioning"].pop("sampling_s")
    return ev


def test_image_conditioned_runs_are_reproducible_and_eval_only_rescores_them_the_same(image_runs):
    a, b = image_runs
    assert_same_weights(a, b, MV_WEIGHT_FILES)
    ev_a = json.loads((a / "dreamcore_prior.json").read_text())["evaluation"]
    before = json.loads((b / "dreamcore_prior.json").read_text())["evaluation"]
    assert _without_timings(ev_a) == _without_timings(before)
    threads = torch.get_num_threads()
    try:
        assert ttp.main(["--eval-only", str(b), "--threads", "1", "--quick", "--eval-samples", "2", "--ddim-steps",
                         "4", "--no-baseline"]) == 0
    finally:
        torch.set_num_threads(threads)
    after = json.loads((b / "dreamcore_prior.json").read_text())["evaluation"]
    assert _without_timings(after) == _without_timings(before)


def test_image_conditioned_folder_records_its_reference_frame_and_both_evaluations(image_run):
    from dreamcore.priors.mv_unet import MultiViewUNet

    unet = MultiViewUNet.from_pretrained(image_run / "unet")
    assert unet.config.reference_frame is True and unet.config.reference_camera == "own"
    assert unet.has_reference_frame and unet.config.ip_dim == 0
    meta = json.loads((image_run / "dreamcore_prior.json").read_text())
    assert meta["settings"]["image_conditioning"] is True and meta["settings"]["image_dropout"] == 0.5
    assert "WHITE" in meta["integration"]["reference_frame"] and "all-zero" in meta["integration"]["dropped_image"]
    ev = meta["evaluation"]
    # the text-only figures (image dropped), as for a text-only folder ...
    assert 0.0 <= ev["prompt_accuracy"] <= 1.0 and np.isfinite(ev["consistency_psnr"])
    # ... and the same groups given a held-out picture of the named object
    block = ev["image_conditioning"]
    for key in ("with_image", "without_image"):
        assert 0.0 <= block[key]["prompt_accuracy"] <= 1.0 and np.isfinite(block[key]["consistency_psnr"])
    assert block["without_image"]["consistency_psnr"] == ev["consistency_psnr"]
    assert block["consistency_gain_db"] == pytest.approx(block["with_image"]["consistency_psnr"]
                                                         - ev["consistency_psnr"])
    assert [r["prompt"] for r in block["per_object"]] == [p for _, p in ASSET_OBJECTS]
    for r in block["per_object"]:
        assert r["groups"] == 2 and set(r["with_image"]) == set(r["without_image"]) == {"prompt_accuracy",
                                                                                          "consistency_psnr"}
    assert [ref["object"] for ref in block["references"]] == [0, 0, 1, 1]
    for row in ev["x0_mse"].values():
        assert set(row) == {"cond", "uncond", "cond_image", "uncond_image"}
    report = (image_run / "report.md").read_text()
    assert "image-conditioned" in report and "With the picture vs. without" in report
    assert "reference_frame" in report and "over WHITE" in report


def test_image_conditioned_folder_loads_in_the_multiview_prior_and_the_picture_changes_the_prediction(image_run,
                                                                                                      tmp_path):
    from dreamcore.cameras import orbit_cameras, sample_orbit
    from dreamcore.priors.multiview import MultiViewPrior

    prior = MultiViewPrior(MultiViewPrior.Config(name="multiview", model=str(image_run),
                                                 cache_dir=str(tmp_path / "cache")))
    assert prior.accepts_image and prior.resolution == 16
    g = torch.Generator().manual_seed(0)
    cams = prior.view_group(sample_orbit(1, g))
    x = torch.randn(4, 3, 16, 16, generator=g)
    t = torch.full((4,), 500)
    dropped = prior.encode_prompt("a toy robot").cond["default"]
    prior.set_reference_image(torch.rand(16, 16, 3, generator=g),
                              orbit_cameras(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([3.2]),
                                            torch.tensor([40.0])))
    given = prior.encode_prompt("a toy robot").cond["default"]
    assert dropped[0, -1, 0] == 0.0 and given[0, -1, 0] == 1.0
    with torch.no_grad():
        e_dropped = prior.predict_noise(x, t, dropped.expand(4, -1, -1), cameras=cams)
        e_given = prior.predict_noise(x, t, given.expand(4, -1, -1), cameras=cams)
    assert torch.isfinite(e_given).all() and (e_given - e_dropped).abs().amax() > 1e-6


def test_init_from_refuses_to_continue_an_image_folder_as_a_text_only_one(image_run, tmp_path):
    argv = [a for a in _image_argv(tmp_path / "x") if a != "--image-conditioning"]
    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit, match="image-conditioned folder .* cannot be continued as a text-only"):
            ttp.main(argv + ["--init-from", str(image_run)])
        with pytest.raises(SystemExit, match="--image-conditioning is a multi-view option"):
            ttp.main(["--object", "nowhere.glb:a thing", "--out", "unused", "--image-conditioning", "--quick"])
    finally:
        torch.set_num_threads(threads)


def _image_data(groups=6, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ttp.GroupSet(torch.rand(groups * n, 3, 8, 8, generator=g), torch.rand(groups * n, 1, 8, 8, generator=g),
                        torch.randn(groups * n, 16, generator=g), torch.zeros(groups * n), torch.zeros(groups * n),
                        torch.arange(groups) % 2, n)


def _recording_unet(seen, garbage=0.0):
    """A stand-in UNet with a reference frame: records its inputs, predicts zeros for the views and ``garbage``
    in the reference rows."""
    def unet(x, t, context, camera=None, num_frames=1, ip_img=None):
        seen.update(x=x, t=t, context=context, camera=camera, num_frames=num_frames, ip_img=ip_img)
        out = torch.zeros_like(x)
        out[num_frames - 1::num_frames] = garbage
        return out
    unet.has_reference_frame = True
    return unet


def _image_step(data, s, unet, seed=1):
    cond_ids = torch.arange(3)[:, None].expand(3, 5)  # object 0, object 1, empty prompt
    return ttp.train_step_mv(unet, lambda ids: (ids[:, :, None].float().expand(-1, -1, 6),),
                             ttp.ddpm_scheduler("epsilon"), data, cond_ids, s, torch.Generator().manual_seed(seed))


def test_image_training_step_puts_the_reference_last_and_keeps_it_out_of_the_loss():
    """Each group of 4 views gets a 5th, last frame: a view of the same object from another group, over white,
    with that view's camera, the group's timestep and caption; the loss ignores the reference rows."""
    n, data = 4, _image_data()
    s = ttp.Settings(batch=12, views=n, caption_dropout=0.0, image_conditioning=True, image_dropout=0.0)
    seen = {}
    loss = _image_step(data, s, _recording_unet(seen))
    assert torch.isfinite(loss) and seen["num_frames"] == n + 1 and seen["x"].shape == (15, 3, 8, 8)
    assert seen["ip_img"].shape == (3, 3, 8, 8)
    t = seen["t"].view(3, n + 1)
    assert (t == t[:, :1]).all()  # the reference row has the group's timestep
    ctx = seen["context"][:, 0, 0].view(3, n + 1)
    assert (ctx == ctx[:, :1]).all()  # ... and its caption
    cams = seen["camera"].view(3, n + 1, 16)
    for k in range(3):
        group = int(torch.nonzero((data.camera == cams[k, 0]).all(1))[0]) // n
        img = int(torch.nonzero((data.camera == cams[k, n]).all(1))[0])
        assert data.obj[img // n] == data.obj[group] and img // n != group  # same object, another group's camera
        white = ttp.composite(data.color[img:img + 1], data.alpha[img:img + 1], torch.ones(1, 3))[0] * 2 - 1
        assert torch.equal(seen["ip_img"][k], white)
    # garbage predicted in the reference rows changes nothing: they are not in the loss
    garbage = _image_step(data, s, _recording_unet({}, garbage=1e6))
    assert torch.equal(loss, garbage)
    # the same draws with and without --image-conditioning up to the reference (drawn last)
    text_only = ttp.Settings(batch=12, views=n, caption_dropout=0.0)
    seen_text = {}

    def plain(x, t, context, camera=None, num_frames=1):
        seen_text.update(x=x, t=t)
        return torch.zeros_like(x)
    _image_step(data, text_only, plain)
    assert torch.equal(seen_text["t"], seen["t"].view(3, n + 1)[:, :n].reshape(-1))


def test_dropped_references_are_exact_zeros_for_frame_and_camera():
    n, data = 4, _image_data(groups=8)
    seen = {}
    s = ttp.Settings(batch=16, views=n, image_conditioning=True, image_dropout=1.0)
    _image_step(data, s, _recording_unet(seen))
    assert torch.equal(seen["ip_img"], torch.zeros(4, 3, 8, 8))
    assert torch.equal(seen["camera"].view(4, n + 1, 16)[:, n], torch.zeros(4, 16))
    # half dropped: exactly the dropped ones are zero, frame and camera together
    gi = torch.arange(8).repeat(8)
    x, cam, drop = ttp.reference_batch(data, gi, torch.Generator().manual_seed(3), 0.5)
    assert 0 < int(drop.sum()) < drop.numel()
    assert torch.equal(x[drop], torch.zeros_like(x[drop])) and torch.equal(cam[drop], torch.zeros_like(cam[drop]))
    assert (x[~drop].flatten(1).abs().amax(1) > 0).all() and (cam[~drop].abs().amax(1) > 0).all()


def test_a_text_only_folder_is_continued_with_the_image_condition_all_its_weights_carried_over(tmp_path):
    """The reference frame adds no parameters: --image-conditioning --init-from a text-only folder starts from
    every one of its weights (a 1-step continuation stays near it) and ends with the image UNet config."""
    from safetensors.torch import load_file

    text_argv = [a for a in _image_argv(tmp_path / "text") if a != "--image-conditioning"]
    with offline_keeping_threads():
        assert ttp.main(text_argv + ["--steps", "2", "--no-baseline"]) == 0
        assert ttp.main(_image_argv(tmp_path / "image") + ["--steps", "1", "--no-baseline", "--seed", "3",
                                                           "--init-from", str(tmp_path / "text")]) == 0
    config = json.loads((tmp_path / "image" / "unet" / "config.json").read_text())
    assert config["reference_frame"] is True and config["reference_camera"] == "own"
    rel = "unet/diffusion_pytorch_model.safetensors"
    src, cont = load_file(str(tmp_path / "text" / rel)), load_file(str(tmp_path / "image" / rel))
    assert set(src) == set(cont)
    moved = sum(float((src[k] - cont[k]).pow(2).sum()) for k in src)
    scale = sum(float(src[k].pow(2).sum()) for k in src)
    assert moved < 1e-3 * scale


def test_groups_that_keep_their_picture_drop_the_caption_at_their_own_rate():
    """--image-caption-dropout: the caption of a group with its picture is dropped at that rate (1: every such
    group is picture-only), the groups without the picture keep caption_dropout (0 here: all captioned)."""
    n, data = 4, _image_data(groups=8)
    s = ttp.Settings(batch=64, views=n, caption_dropout=0.0, image_conditioning=True, image_dropout=0.5,
                     image_caption_dropout=1.0)
    seen = {}
    _image_step(data, s, _recording_unet(seen))
    g = 64 // n
    captions = seen["context"][:, 0, 0].view(g, n + 1)[:, 0]  # the caption index of each group (2 = empty)
    has_picture = seen["camera"].view(g, n + 1, 16)[:, n].abs().amax(1) > 0
    assert 0 < int(has_picture.sum()) < g
    assert (captions[has_picture] == 2).all() and (captions[~has_picture] != 2).all()
    s0 = ttp.Settings(batch=64, views=n, caption_dropout=0.0, image_conditioning=True, image_dropout=0.5,
                      image_caption_dropout=0.0)
    seen0 = {}
    _image_step(data, s0, _recording_unet(seen0))
    assert (seen0["context"][:, 0, 0] != 2).all()
    with pytest.raises(SystemExit, match="--image-caption-dropout 1.5"):
        ttp.main(["--object", f"{ROOT / 'assets' / 'robot.glb'}:a toy robot", "--out", "unused", "--views", "4",
                  "--image-conditioning", "--image-caption-dropout", "1.5", "--quick"])
