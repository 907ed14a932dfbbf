"""What a batch tells its user: a progress line while it runs, and at the end ``batch.json`` (one record per
job), ``batch.md`` (the same as a table) and ``batch.png`` (a contact sheet: each job's turntable frame or last
validation image under its prompt)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from dreamcore.files import atomic_write_bytes

# the figures batch.md shows when the jobs have them (batch.json keeps them all)
TABLE_FIGURES = ("scene_psnr", "scene_iou", "glb_psnr", "glb_iou", "glb_chamfer_rel", "glb_janus")
TILE = 192


def progress_line(counts: dict[str, int], eta_s: float | None) -> str:
    total = sum(counts.values())
    eta = "" if eta_s is None else f", ETA {_duration(eta_s)}"
    return (f"batch: {counts['done']}/{total} done, {counts['running']} running, {counts['failed']} failed, "
            f"{counts['queued']} queued{eta}")


def _duration(s: float) -> str:
    s = max(0.0, s)
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"


def write_reports(out: Path, records: list[dict], summary: dict, sheet: bool = True) -> None:
    """batch.json and batch.md (rewritten as jobs end), and the contact sheet batch.png when ``sheet``."""
    atomic_write_bytes(out / "batch.json", json.dumps({**summary, "jobs": records}, indent=2).encode())
    atomic_write_bytes(out / "batch.md", markdown(records, summary).encode())
    if sheet:
        atomic_write_bytes(out / "batch.png", contact_sheet(records))


def markdown(records: list[dict], summary: dict) -> str:
    shown = [k for k in TABLE_FIGURES if any(k in (r.get("metrics") or {}) for r in records)]
    head = ["job", "prompt", "seed", "status", "attempts", "time (s)", "steps", *shown, "error"]
    lines = [f"# Batch {summary.get('out', '')}", "",
             f"{summary.get('done', 0)} done, {summary.get('failed', 0)} failed of {len(records)} jobs; "
             f"config `{summary.get('config', '')}`, backend {summary.get('backend', '')}, "
             f"{summary.get('seconds', 0):.0f} s in this invocation.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        m = r.get("metrics") or {}
        status = r.get("status", "?") + (" (earlier)" if r.get("skipped") else "")
        prompt = r["prompt"] + (f" (edit of {Path(r['edit']).name})" if r.get("edit") else "")
        cells = [r["name"], prompt, str(r["seed"]), status, str(r.get("attempts", "")),
                 _num(r.get("seconds")), _num(r.get("steps")), *[_num(m.get(k)) for k in shown],
                 (r.get("error") or "").replace("\n", " ")]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _num(v) -> str:
    if v is None:
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def job_image(run_dir: Path):
    """The job's picture: the first frame of its turntable, else its last validation image, else None."""
    import numpy as np
    from PIL import Image

    for name in ("turntable.mp4", "turntable.gif"):
        path = run_dir / name
        if path.is_file():
            try:
                import imageio.v3 as iio

                frame = np.asarray(iio.imread(path, index=0))
                return Image.fromarray(frame[..., :3].astype(np.uint8))
            except Exception:  # noqa: BLE001 - an unreadable video: fall back to the validation image
                pass
    vals = sorted((run_dir / "val").glob("step-*.png")) if (run_dir / "val").is_dir() else []
    for path in reversed(vals):
        try:
            return Image.open(path).convert("RGB")
        except OSError:
            continue
    return None


def contact_sheet(records: list[dict], columns: int = 0) -> bytes:
    """PNG bytes of a grid: per job its picture (fitted into a TILE² square) above its prompt, seed and status."""
    import io
    import math

    from PIL import Image, ImageDraw, ImageFont

    n = max(len(records), 1)
    columns = columns or min(n, max(1, math.ceil(math.sqrt(n))))
    rows = math.ceil(n / columns)
    caption = 56
    sheet = Image.new("RGB", (columns * TILE, rows * (TILE + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, r in enumerate(records):
        x, y = (i % columns) * TILE, (i // columns) * (TILE + caption)
        image = job_image(Path(r["dir"])) if r.get("status") == "done" else None
        if image is None:
            draw.rectangle([x + 4, y + 4, x + TILE - 5, y + TILE - 5], fill=(225, 225, 225))
            draw.text((x + 12, y + TILE // 2 - 6), r.get("status", "?") if r.get("status") != "done" else "no image",
                      fill=(160, 0, 0) if r.get("status") == "failed" else (90, 90, 90), font=font)
        else:
            image.thumbnail((TILE, TILE))
            sheet.paste(image, (x + (TILE - image.width) // 2, y + (TILE - image.height) // 2))
        text = textwrap.wrap(r["prompt"], 30)[:2] + [f"seed {r['seed']} - {r.get('status', '?')}"]
        for k, line in enumerate(text):
            draw.text((x + 6, y + TILE + 4 + 16 * k), line, fill=(0, 0, 0), font=font)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()
