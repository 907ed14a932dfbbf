"""dreamcore studio end to end, in a real browser (Debian's chromium driven by playwright, headless WebGL through
ANGLE + SwiftShader), server and browser inside a network namespace with loopback alone (the tool re-executes
itself under ``unshare -n``). Tiny reconstruction jobs on the reference prior; prints one JSON object of what it
saw (``--json FILE`` writes it too; ``--screenshot FILE`` keeps the page of the finished job).

Checks: a bad override and a bad upload give their messages and start nothing; two jobs queued from two pages
run one after the other (the second page shows its queue position); the progress bar advances and the preview
image changes; the 3D viewer's canvas draws the model (differs from the empty viewer); the GLB downloads and
passes the Khronos validator (where ``.cache/node`` has it); the gallery's Edit this asset queues an edit of the
finished reconstruction inside a box, which runs to its end; a job whose process is killed is reported in the page
and the app keeps serving; after a server restart the gallery lists that job as resumable, Resume continues it
from its checkpoint and Cancel stops it with the checkpoint saved.

``--showcase FILE`` instead queues one job as an artist would (``--prompt``, ``--recipe``, ``--preset``; default
"a toy robot" on text-mv-nerf at standard quality, no overrides), waits for it to finish and keeps the page then:
the README's picture of the studio.

    python tools/studio_browser.py [--json FILE] [--screenshot FILE] [--work DIR]
    python tools/studio_browser.py --showcase docs/studio.png [--prompt P] [--recipe R] [--preset Q] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from netns import isolated, reexec_isolated, up_interfaces  # noqa: E402

# tiny jobs: the run, export and scoring sizes of any recipe, then those of a NeRF on the reference prior
TINY_RUN = ["run.val_every=10", "run.checkpoint_every=5", "run.log_every=5", "run.val_resolution=32",
            "camera.resolution=32", "camera.batch_size=2", "export.resolution=48", "export.texture_size=128",
            "export.turntable_frames=4", "export.turntable_resolution=64", "eval.views=2", "eval.resolution=32",
            "eval.janus_views=2"]
TINY = [*TINY_RUN, "system.rays_per_view=64", "representation.n_levels=4", "representation.log2_table_size=12",
        "representation.max_resolution=64", "representation.occupancy_resolution=16", "prior.bank_views=4"]
TINY_GAUSSIANS = [*TINY_RUN, "representation.init_points=400", "system.densify.max_gaussians=800"]
PORT = 7871
JOB1_STEPS = 150  # ~8 s of tiny steps: the page (refreshed every 2 s) sees the bar move and the preview change
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox",
                 "--disable-background-networking", "--disable-component-update"]


def chromium() -> str:
    path = os.environ.get("DREAMCORE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise SystemExit("studio_browser: no chromium (apt-get install chromium)")
    return path


def start_server(runs: Path, log: Path, threads: int = 1) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    # SIGINT ignored, as in a process a background shell starts: the studio must stop on the signal regardless
    proc = subprocess.Popen([sys.executable, "-m", "dreamcore.cli", "studio", "--runs", str(runs), "--port", str(PORT),
                             "--threads", str(threads)], cwd=ROOT, env=env, stdout=open(log, "a"), stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    for _ in range(240):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{PORT}/", timeout=1)
            return proc
        except Exception:  # noqa: BLE001 - not up yet
            if proc.poll() is not None:
                raise SystemExit(f"studio_browser: the server exited: {log.read_text()[-2000:]}")
            time.sleep(0.25)
    raise SystemExit("studio_browser: the server did not come up in 60 s")


def stop_server(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> bool:
    """Ask the server to stop with ``sig``; True if it ended on that alone (else it is killed after 60 s)."""
    if proc.poll() is not None:
        return True
    proc.send_signal(sig)
    try:
        proc.wait(timeout=60)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False


def open_page(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 1500})
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(
        (f"http://127.0.0.1:{PORT}", f"ws://127.0.0.1:{PORT}", "data:", "blob:")) else None)
    page.goto(f"http://127.0.0.1:{PORT}/")
    page.wait_for_selector("#generate", timeout=60000)
    return page, outside


def _last_paragraph(text: str) -> str:
    """The message itself (Gradio puts the event's timing, e.g. "0.1s", above it)."""
    parts = [p.strip() for p in text.split("\n") if p.strip()]
    return parts[-1] if parts else ""


def click_for_message(page, button: str, contains: str, timeout_s: float = 20.0) -> str:
    """Click ``button`` and return the page's new message (one that differs from the one before)."""
    before = _last_paragraph(page.inner_text("#message"))
    page.click(button)
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        text = _last_paragraph(page.inner_text("#message"))
        if text and text != before and contains in text:
            return text
        time.sleep(0.2)
    raise SystemExit(f"studio_browser: after {button} the page said {page.inner_text('#message')!r}, "
                     f"not {contains!r}")


def reconstruct(page, mesh: Path, overrides: list[str], known: set[str]) -> str:
    """Queue a reconstruction from the page; returns the new job's name (one not in ``known``, added to it)."""
    page.get_by_role("tab", name="Reconstruct a mesh").click()
    upload(page, mesh)
    page.fill("#recon-overrides textarea", "\n".join(overrides))
    page.click("#reconstruct")
    return _queued(page, known)


def generate(page, prompt: str, recipe: str, preset: str, overrides: list[str], known: set[str]) -> str:
    """Queue a text-to-3D job from the New asset tab; returns its name (one not in ``known``, added to it)."""
    page.get_by_role("tab", name="New asset").click()
    page.fill("#prompt textarea", prompt)
    page.click("#recipe input")
    page.get_by_role("option", name=recipe).first.click()
    page.get_by_label(preset, exact=True).check()
    if not page.is_visible("#overrides textarea"):
        page.get_by_text("Advanced: key=value overrides").click()
    page.fill("#overrides textarea", "\n".join(overrides))
    page.click("#generate")
    return _queued(page, known)


def edit(page, prompt: str, box: tuple, overrides: list[str], known: set[str]) -> tuple[str, str]:
    """Queue an edit of the run the page shows (Gallery tab, Edit this asset) inside ``box`` (x0, y0, z0, x1, y1,
    z1); returns the new job's name (one not in ``known``, added to it) and what the panel said of the run shown
    before it was queued."""
    page.get_by_role("tab", name="Gallery").click()
    if not page.is_visible("#edit-prompt textarea"):
        page.get_by_text("Edit this asset").click()
    t0 = time.time()
    while "Edits " not in page.inner_text("#edit-about") and time.time() - t0 < 20:
        time.sleep(0.2)  # the panel names the finished run once the page has seen it finish
    about = page.inner_text("#edit-about")
    page.fill("#edit-prompt textarea", prompt)
    for corner, value in zip(("x0", "y0", "z0", "x1", "y1", "z1"), box):
        page.fill(f"#edit-{corner} input", str(value))
    page.fill("#edit-overrides textarea", "\n".join(overrides))
    page.click("#edit-generate")
    return _queued(page, known), about


def _queued(page, known: set[str]) -> str:
    t0 = time.time()
    while time.time() - t0 < 20:
        name = job_name(page.inner_text("#message"))
        if name and name not in known:
            known.add(name)
            return name
        time.sleep(0.2)
    raise SystemExit(f"studio_browser: the page did not queue the job: {page.inner_text('#message')!r}")


def upload(page, path: Path) -> None:
    clear = page.query_selector("#upload button[aria-label='Clear']")
    if clear is not None:
        clear.click()
    page.set_input_files("#upload input[type=file]", str(path))
    page.wait_for_selector(f"#upload td.filename[aria-label='{path.name}']", timeout=20000)


def job_status(page) -> dict:
    el = page.query_selector("#job-status")
    return {"status": el.get_attribute("data-status"), "step": int(el.get_attribute("data-step") or 0),
            "total": int(el.get_attribute("data-total") or 0), "text": el.inner_text()}


def preview_src(page) -> str | None:
    img = page.query_selector("#preview img")
    return img.get_attribute("src") if img else None


def wait_for(page, done, timeout_s: float, seen: list | None = None) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        try:
            st = job_status(page)
        except Exception:  # noqa: BLE001 - the element is being replaced
            time.sleep(0.2)
            continue
        if seen is not None:
            seen.append({**st, "preview": preview_src(page), "t": round(time.time() - t0, 1)})
        if done(st):
            return st
        time.sleep(0.5)
    raise SystemExit(f"studio_browser: timed out; last status {job_status(page)}")


def viewer_png(page, path: Path) -> Path:
    page.locator("#viewer").screenshot(path=str(path))
    return path


def differs(a: Path, b: Path) -> dict:
    import numpy as np
    from PIL import Image

    x = np.asarray(Image.open(a).convert("RGB"), dtype=np.float32)
    y = np.asarray(Image.open(b).convert("RGB"), dtype=np.float32)
    h, w = min(x.shape[0], y.shape[0]), min(x.shape[1], y.shape[1])
    d = np.abs(x[:h, :w] - y[:h, :w]).max(-1)
    return {"changed_fraction": round(float((d > 24).mean()), 4), "std": round(float(x.std()), 2)}


def validate(glb: Path) -> dict | None:
    node = shutil.which("node")
    if node is None or not (ROOT / ".cache" / "node" / "node_modules" / "gltf-validator").is_dir():
        return None
    run = subprocess.run([node, str(ROOT / "tools" / "validate_gltf.mjs"), str(glb)], capture_output=True, text=True,
                         timeout=60)
    issues = json.loads(run.stdout)["issues"]
    return {"errors": issues["numErrors"], "warnings": issues["numWarnings"]}


def job_name(text: str) -> str | None:
    import re

    m = re.search(r"Queued ([\w-]+)", text)
    return m.group(1) if m else None


def scenario(work: Path, screenshot: Path | None) -> dict:
    from playwright.sync_api import sync_playwright

    runs, log = work / "runs", work / "server.log"
    res: dict = {}
    t_start = time.time()
    fake = work / "fake.glb"
    fake.write_text("this is not a mesh\n")
    server = start_server(runs, log)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
            a, outside_a = open_page(browser)
            # refused requests: nothing starts
            a.fill("#prompt textarea", "a toy robot")
            a.get_by_text("Advanced: key=value overrides").click()
            a.fill("#overrides textarea", "run.stepz=3")
            res["bad_override"] = click_for_message(a, "#generate", "Not started")
            a.fill("#overrides textarea", "plugins=[evil.py]")
            res["plugins_override"] = click_for_message(a, "#generate", "plugins")
            a.get_by_role("tab", name="Reconstruct a mesh").click()
            upload(a, fake)
            res["bad_upload"] = click_for_message(a, "#reconstruct", "content")
            res["runs_after_refusals"] = sorted(p.name for p in runs.iterdir() if not p.name.startswith("."))
            empty = viewer_png(a, work / "viewer-empty.png")  # the viewer before any model: no canvas yet
            # two jobs from two pages
            robot = ROOT / "assets" / "robot.glb"
            known: set[str] = set()
            job1 = reconstruct(a, robot, [*TINY, f"run.steps={JOB1_STEPS}"], known)  # long enough to watch
            b, outside_b = open_page(browser)
            job2 = generate(b, "a toy robot", "text-gaussians", "draft", [*TINY_GAUSSIANS, "run.steps=20"], known)
            res["page_b_waiting"] = wait_for(b, lambda s: s["status"] in ("queued", "running"), 20)["text"]
            seen: list = []
            wait_for(a, lambda s: s["status"] in ("done", "failed"), 150, seen)
            res["job1_final"] = job_status(a)
            res["job1_steps_seen"] = sorted({s["step"] for s in seen})
            res["job1_previews_seen"] = len({s["preview"] for s in seen if s["preview"]})
            a.wait_for_selector("#downloads a", timeout=30000)
            a.wait_for_selector("#viewer canvas", timeout=30000)
            time.sleep(4)  # the viewer loads the GLB and draws
            res["viewer_canvas"] = True
            res["viewer"] = differs(viewer_png(a, work / "viewer-model.png"), empty)
            if screenshot is not None:
                a.screenshot(path=str(screenshot), full_page=True)
            href = next(h for h in (x.get_attribute("href") for x in a.query_selector_all("#downloads a"))
                        if h and h.endswith("model.glb"))
            url = href if href.startswith("http") else f"http://127.0.0.1:{PORT}{href}"
            glb = work / "downloaded.glb"
            glb.write_bytes(a.request.get(url).body())
            res["download_bytes"] = glb.stat().st_size
            res["download_magic"] = glb.read_bytes()[:4].decode("latin-1")
            res["validator"] = validate(glb)
            res["downloads"] = sorted(Path(h).name for h in (x.get_attribute("href") or "" for x in
                                                              a.query_selector_all("#downloads a")))
            res["command"] = a.input_value("#command textarea")
            wait_for(b, lambda s: s["status"] in ("done", "failed"), 150)
            res["job2_final"] = job_status(b)
            b.wait_for_selector("#downloads a", timeout=30000)
            res["job2_downloads"] = sorted(Path(x.get_attribute("href") or "").name
                                           for x in b.query_selector_all("#downloads a"))
            res["job2_command"] = b.input_value("#command textarea")
            r1 = json.loads((runs / job1 / "studio.json").read_text())
            r2 = json.loads((runs / job2 / "studio.json").read_text())
            res["in_order"] = r2["started"] >= r1["started"] + r1["seconds"] - 1.0
            # the gallery's Edit this asset on the finished reconstruction (page a still shows it)
            res["job1"] = job1
            job_e, res["edit_about"] = edit(a, "a toy robot with a blue chest", (-0.3, 0, -0.3, 0.3, 0.5, 0.3),
                                            [*TINY_RUN, "run.steps=10"], known)
            # the page shows the edit once its next refresh comes (until then, the finished job1): wait for the edit
            res["edit_final"] = wait_for(a, lambda s: "blue chest" in s["text"] and s["status"] in ("done", "failed"),
                                         150)
            a.wait_for_selector("#downloads a", timeout=30000)
            res["edit_command"] = a.input_value("#command textarea")
            res["edit_record"] = json.loads((runs / job_e / "studio.json").read_text())
            # a killed job: reported, the app keeps serving
            job3 = reconstruct(a, robot, [*TINY, "run.steps=400"], known)
            wait_for(a, lambda s: s["status"] == "running" and s["step"] >= 10, 120)
            rec3 = json.loads((runs / job3 / "studio.json").read_text())
            if not rec3.get("pid"):
                raise SystemExit(f"studio_browser: job {job3} runs without a process id: {rec3}")
            os.kill(rec3["pid"], signal.SIGKILL)
            res["killed_at_step"] = job_status(a)["step"]
            res["killed_report"] = wait_for(a, lambda s: s["status"] == "failed", 30)["text"]
            a.reload()
            a.wait_for_selector("#generate", timeout=30000)
            res["serving_after_kill"] = True
            res["outside_requests"] = sorted(set(outside_a + outside_b))
            browser.close()
        res["stopped_on_sigint"] = stop_server(server, signal.SIGINT)  # Ctrl-C, though SIGINT was ignored
        # a restart: the gallery finds the killed job; resume it, then cancel it
        server = start_server(runs, log)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
            c, _ = open_page(browser)
            c.get_by_role("tab", name="Gallery").click()
            c.click("#gallery-refresh")
            time.sleep(1.5)
            table = c.inner_text("#gallery")
            res["gallery_lists"] = {j: j in table for j in (job1, job2, job3)}
            row = table[table.rfind(job3):]  # its row: up to the next run's name (newest first)
            for other in (job1, job2, job_e):
                row = row.split(other)[0]
            res["gallery_job3_row"] = " | ".join(x.strip() for x in row.split() if x.strip())
            res["gallery_job3_resumable"] = "yes" in row
            res["opened"] = click_for_message(c, f'#gallery >> text="{job3}" >> visible=true', "Showing")  # a row opens it
            step_killed = json.loads((runs / job3 / "studio.json").read_text())
            c.click("#resume")
            killed_at = res["killed_at_step"]
            st = wait_for(c, lambda s: s["status"] == "running" and s["step"] > killed_at, 90)
            res["resumed_at_step"] = st["step"]
            log3 = (runs / job3 / "log.txt").read_text()
            res["resume_logged"] = "resume:" in log3
            c.click("#cancel")
            res["cancelled"] = wait_for(c, lambda s: s["status"] == "cancelled", 120)["text"]
            res["checkpoint_kept"] = (runs / job3 / "ckpt").is_dir()
            res["job3_error_before_resume"] = step_killed.get("error")
            browser.close()
    finally:
        res["stopped_on_sigterm"] = stop_server(server)  # docker stop, systemd, kill
    res["seconds"] = round(time.time() - t_start, 1)
    return res


def showcase(work: Path, out: Path, prompt: str, recipe: str, preset: str, timeout_s: float = 3600) -> dict:
    """One job queued from the New asset tab with the page's own settings, the page kept once it has finished
    (the viewer drawing the model); returns the job's final status and its time."""
    from playwright.sync_api import sync_playwright

    runs, log = work / "runs", work / "server.log"
    t_start = time.time()
    server = start_server(runs, log, threads=os.cpu_count() or 1)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
            page, outside = open_page(browser)
            job = generate(page, prompt, recipe, preset, [], set())
            final = wait_for(page, lambda s: s["status"] in ("done", "failed", "cancelled"), timeout_s)
            if final["status"] != "done":
                raise SystemExit(f"studio_browser: the showcase job {job} ended {final['status']}: {final['text']}")
            page.wait_for_selector("#downloads a", timeout=30000)
            page.wait_for_selector("#viewer canvas", timeout=30000)
            time.sleep(6)  # the viewer loads the GLB and draws
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            browser.close()
    finally:
        stop_server(server)
    record = json.loads((runs / job / "studio.json").read_text())
    metrics_file = runs / job / "metrics.json"
    return {"job": job, "status": final["text"], "recipe": recipe, "preset": preset, "prompt": prompt,
            "steps": final["total"], "job_seconds": record.get("seconds"), "outside_requests": sorted(set(outside)),
            "metrics": json.loads(metrics_file.read_text()) if metrics_file.is_file() else None,
            "seconds": round(time.time() - t_start, 1)}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="tools/studio_browser.py")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--screenshot", type=Path, default=None)
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--showcase", type=Path, default=None, help="one standard job; keep the finished page here")
    p.add_argument("--prompt", default="a toy robot")
    p.add_argument("--recipe", default="text-mv-nerf")
    p.add_argument("--preset", default="standard")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if not ns.inside:
        return reexec_isolated(__file__, argv, "studio_browser")
    if not isolated():
        print(f"studio_browser: refusing to serve: interfaces up besides lo: {up_interfaces()}", file=sys.stderr)
        return 2
    work = ns.work or Path(tempfile.mkdtemp(prefix="studio-browser-"))
    shutil.rmtree(work / "runs", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    if ns.showcase is not None:
        res = {"interfaces_up": up_interfaces(), **showcase(work, ns.showcase.resolve(), ns.prompt, ns.recipe,
                                                             ns.preset)}
    else:
        res = {"interfaces_up": up_interfaces(), **scenario(work, ns.screenshot)}
    text = json.dumps(res, indent=2)
    print(text)
    if ns.json:
        ns.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
