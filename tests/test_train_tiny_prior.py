"""tools/train_tiny_prior.py: a --quick run on two procedural vertex-coloured meshes (16 px, a 0.1 M-parameter UNet,
a few steps) writes a diffusers-format folder that diffusers/transformers load offline, with SD's schedule, a
word-level tokenizer, the evaluation figures, and identical weights when run twice with the same seed."""

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
    threads = torch.get_num_threads()
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        assert ttp.main(_argv(meshes, tmp / "a")) == 0
        assert ttp.main(_argv(meshes, tmp / "b")) == 0
    finally:
        torch.set_num_threads(threads)
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old
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


def test_same_seed_gives_identical_weights(runs):
    from safetensors.torch import load_file

    a, b, _ = runs
    for rel in WEIGHT_FILES:
        wa, wb = load_file(str(a / rel)), load_file(str(b / rel))
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), rel


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
