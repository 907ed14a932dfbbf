"""The studio's page (Gradio Blocks): a new asset from a prompt, a mesh reconstructed with the reference prior,
the running job's progress (its own bar: step / total, it/s, ETA, loss) and latest validation image refreshed
by a timer, cancel and resume, the finished GLB in a 3D viewer with its turntable, metrics, downloads and the CLI
command, and a gallery of every run in the runs folder. All work happens in the job queue's processes; the page
only reads run folders. Offline: no analytics, no share links, no web fonts."""

from __future__ import annotations

import functools
import html
import os
import signal
import threading
import time
import traceback
import zipfile
from pathlib import Path

from dreamcore.errors import DreamcoreError
from dreamcore.studio import runs
from dreamcore.studio.queue import JobQueue
from dreamcore.studio.recipes import PRESETS, RECONSTRUCT_RECIPES, recipes
from dreamcore.studio.safety import DEFAULT_UPLOAD_LIMIT, MESH_SUFFIXES

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
REFRESH_S = 2.0
UPLOADS = ".uploads"  # under the runs folder: where Gradio stages uploads (and caches files it serves)
ERROR_LOG = "studio-errors.txt"  # under the runs folder: the tracebacks of the page's own failures


def _import_gradio():
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio as gr
    except ImportError:
        raise DreamcoreError("the studio needs Gradio: pip install -e .[studio] (or make studio)") from None
    return gr


def progress_html(st: dict | None) -> str:
    """The job's state as a progress bar with its figures (Gradio's own bar does not survive polling)."""
    if not st:
        return "<div id='job-status'>No job yet: describe an asset and press Generate.</div>"
    p = st["progress"]
    status = st["status"]
    figures = []
    if st.get("position"):
        figures.append(f"position {st['position']} in the queue")
    if p.total:
        figures.append(f"step {p.step} / {p.total}")
    if p.seconds_per_step > 0 and status == "running":
        figures.append(f"{1.0 / p.seconds_per_step:.2f} it/s")
        figures.append(f"ETA {_duration(p.eta_s)}")
    if p.loss is not None:
        figures.append(f"loss {p.loss:.4g}")
    if status == "running" and p.total and p.step >= p.total:
        figures.append("exporting")
    pct = 100.0 * (1.0 if status == "done" else p.fraction)
    error = f"<div class='job-error'>{html.escape(st['error'])}</div>" if st.get("error") else ""
    return (f"<div id='job-status' data-status='{status}' data-step='{p.step}' data-total='{p.total}'>"
            f"<b>{html.escape(st['prompt'])}</b> — {status}<br>{' · '.join(figures)}"
            f"<div class='bar'><div class='fill' style='width:{pct:.1f}%'></div></div>{error}</div>")


def _duration(s: float | None) -> str:
    if s is None:
        return "?"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min"


def result_files(run_dir: Path) -> list[str]:
    """The downloads: model.glb, a zip of model.obj/.mtl/.png, model.ply (Gaussians), config.yaml."""
    out = []
    if (run_dir / "model.glb").is_file():
        out.append(str(run_dir / "model.glb"))
    obj = [run_dir / n for n in ("model.obj", "model.mtl", "model.png") if (run_dir / n).is_file()]
    if obj:
        zpath = run_dir / "model-obj.zip"
        if not zpath.is_file():
            tmp = zpath.with_suffix(".zip.tmp")
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
                for f in obj:
                    zf.write(f, f.name)
            tmp.replace(zpath)
        out.append(str(zpath))
    for name in ("model.ply", "config.yaml"):
        if (run_dir / name).is_file():
            out.append(str(run_dir / name))
    return out


def turntable(run_dir: Path) -> str | None:
    for name in ("turntable.mp4", "turntable.webm", "turntable.gif"):
        if (run_dir / name).is_file():
            return str(run_dir / name)
    return None


def gallery_rows(queue: JobQueue) -> list[list]:
    rows = []
    for r in runs.list_runs(queue.runs_dir):
        pos = queue.position(r.dir.name)
        status = r.status if pos is None else ("running" if pos == 0 else f"queued ({pos})")
        m = r.metrics
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.job.get("created", 0)))
        rows.append([r.dir.name, r.job.get("prompt", ""), r.job.get("recipe", ""), status, when,
                     m.get("glb_psnr"), m.get("glb_iou"), "yes" if r.resumable and pos is None else ""])
    return rows


def gallery_thumbs(queue: JobQueue) -> tuple[list[tuple[str, str]], list[str]]:
    """Thumbnails (each run's newest validation image, captioned prompt · status) and the runs they belong to."""
    thumbs, names = [], []
    for r in runs.list_runs(queue.runs_dir):
        if r.thumbnail is not None:
            thumbs.append((str(r.thumbnail), f"{r.job.get('prompt', '')} · {r.status}"))
            names.append(r.dir.name)
    return thumbs, names


def in_words(gr, fn, log_path: Path):
    """``fn`` as a page handler whose failures read as words: a DreamcoreError's message, or for anything else
    what failed in one line, with its traceback appended to ``log_path`` rather than shown in the page."""

    @functools.wraps(fn)
    def handler(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except DreamcoreError as e:
            raise gr.Error(str(e)) from None
        except Exception as e:  # noqa: BLE001 - the page gets words; the log gets the traceback
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {fn.__name__}\n{traceback.format_exc()}\n")
            raise gr.Error(f"the studio could not do that ({fn.__name__.replace('_', ' ')}): "
                           f"{type(e).__name__}: {e}. The details are in {log_path}.") from None

    return handler


def discard_staged(upload) -> None:
    """Remove Gradio's staged copy of an upload once the queue has its own (or has refused it)."""
    staged = Path(_path(upload)).resolve()
    root = os.environ.get("GRADIO_TEMP_DIR")
    if root and staged.is_file() and staged.is_relative_to(Path(root).resolve()):
        staged.unlink(missing_ok=True)
        try:
            staged.parent.rmdir()  # Gradio gives each upload a folder of its own
        except OSError:
            pass


def build_app(queue: JobQueue):
    gr = _import_gradio()
    text = recipes()
    recon = recipes(RECONSTRUCT_RECIPES)
    css = ("#job-status .bar{height:14px;background:#ddd;border-radius:7px;overflow:hidden;margin-top:6px}"
           "#job-status .fill{height:100%;background:#3b82f6;transition:width .5s}"
           ".job-error{color:#b91c1c;margin-top:6px}")

    def submit(prompt, negative, recipe, preset, seed, overrides, page_job):
        try:
            name = queue.submit(prompt, recipe, preset, int(seed or 0), negative or "", _lines(overrides))
        except DreamcoreError as e:
            return page_job, f"**Not started:** {e}"
        return name, f"Queued `{name}`."

    def submit_mesh(upload, recipe, preset, seed, overrides, page_job):
        if upload is None:
            return page_job, "**Not started:** choose a mesh file (GLB, glTF, OBJ+MTL as a zip, PLY or STL)."
        try:
            prompt = f"reconstruction of {Path(_orig_name(upload)).stem[:60] or 'an uploaded mesh'}"
            name = queue.submit(prompt, recipe, preset, int(seed or 0), "", _lines(overrides), upload=_path(upload))
        except DreamcoreError as e:
            return page_job, f"**Not started:** {e}"
        finally:
            discard_staged(upload)
        return name, (f"Queued `{name}`: the mesh is reconstructed with the closed-form reference prior "
                      "(no diffusion weights needed).")

    def refresh(page_job, shown):
        if not page_job:
            return progress_html(None), gr.skip(), shown, gr.skip()
        try:
            st = queue.status(page_job)
        except DreamcoreError as e:
            return f"<div id='job-status'>{html.escape(str(e))}</div>", gr.skip(), shown, gr.skip()
        val = str(st["validation"]) if st["validation"] else None
        done_now = st["status"] == "done" and shown != page_job
        return (progress_html(st), val if val else gr.skip(), page_job if done_now else shown,
                page_job if done_now else gr.skip())

    def show_result(page_job):
        run_dir = queue.runs_dir / page_job
        st = queue.status(page_job)
        glb = str(run_dir / "model.glb") if (run_dir / "model.glb").is_file() else None
        return (glb, turntable(run_dir), {k: v for k, v in st["metrics"].items() if k != "export"},
                result_files(run_dir), st["command"])

    def act(action, page_job, done: str) -> str:
        """Run a queue action on the page's job; its message, or the queue's refusal in words."""
        try:
            action(page_job)
        except DreamcoreError as e:
            return f"**{e}**"
        return done.format(job=page_job)

    def cancel(page_job):
        return act(queue.cancel, page_job, "Stopping `{job}`: its checkpoint is saved; resume it from here or the "
                                           "gallery.")

    def resume(page_job):
        return act(queue.resume, page_job, "Queued `{job}` again: it resumes from its checkpoint.")

    def open_run(name):
        if not name:
            return gr.skip(), "Choose a run in the gallery first.", gr.skip(), gr.skip()
        return name, f"Showing `{name}`.", "", ""

    def pick_row(data, evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        try:
            name = data.iloc[row, 0] if hasattr(data, "iloc") else data[row][0]
        except (IndexError, KeyError, TypeError):
            name = ""
        return open_run(str(name))

    def pick_thumb(names, evt: gr.SelectData):
        i = evt.index if isinstance(evt.index, int) else (evt.index or [0])[0]
        return open_run(names[i] if names and 0 <= i < len(names) else "")

    def gallery_view():
        rows = gallery_rows(queue)
        pictures, names = gallery_thumbs(queue)
        return rows, gr.update(choices=[r[0] for r in rows]), pictures, names

    pick_thumb.__annotations__["evt"] = gr.SelectData
    pick_row.__annotations__["evt"] = gr.SelectData  # how Gradio knows to pass the event (names are strings here)
    log = queue.runs_dir / ERROR_LOG
    (submit, submit_mesh, refresh, show_result, cancel, resume, open_run, pick_row, pick_thumb, gallery_view) = (
        in_words(gr, f, log) for f in (submit, submit_mesh, refresh, show_result, cancel, resume, open_run,
                                        pick_row, pick_thumb, gallery_view))

    # files Gradio staged or cached (uploads already copied into their run folders) go after a day
    with gr.Blocks(title="dreamcore studio", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        page_job = gr.State("")
        shown = gr.State("")
        gr.Markdown("# dreamcore studio")
        with gr.Tab("New asset"):
            prompt = gr.Textbox(label="Prompt", placeholder="a toy robot", elem_id="prompt")
            negative = gr.Textbox(label="Negative prompt", elem_id="negative")
            recipe = gr.Dropdown([(f"{r.name} — {r.description}", r.name) for r in text], value=text[0].name
                                 if text else None, label="Recipe", elem_id="recipe")
            with gr.Row():
                preset = gr.Radio(list(PRESETS), value="draft", label="Quality", elem_id="preset")
                seed = gr.Number(0, precision=0, label="Seed", elem_id="seed")
            with gr.Accordion("Advanced: key=value overrides (one a line, as on the command line)", open=False):
                overrides = gr.Textbox(lines=3, show_label=False, elem_id="overrides")
            go = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Tab("Reconstruct a mesh"):
            gr.Markdown("Reconstruct an uploaded model with the closed-form reference prior — what runs when no "
                        "diffusion weights are installed. GLB, glTF, PLY, STL, or an OBJ with its MTL and textures "
                        f"as a zip; at most {queue.upload_limit / 2**20:.0f} MB.")
            upload = gr.File(label="Mesh", file_types=[*MESH_SUFFIXES, ".zip"], elem_id="upload")
            recon_recipe = gr.Dropdown([(f"{r.name} — {r.description}", r.name) for r in recon],
                                       value=recon[0].name if recon else None, label="Recipe")
            with gr.Row():
                recon_preset = gr.Radio(list(PRESETS), value="draft", label="Quality")
                recon_seed = gr.Number(0, precision=0, label="Seed")
            recon_overrides = gr.Textbox(lines=2, label="key=value overrides", elem_id="recon-overrides")
            go_mesh = gr.Button("Reconstruct", variant="primary", elem_id="reconstruct")
        with gr.Tab("Gallery"):
            thumb_names = gr.State([])
            thumbs = gr.Gallery(label="Runs (a click opens one)", columns=6, height=240, allow_preview=False,
                                elem_id="gallery-thumbs")
            table = gr.Dataframe(headers=["run", "prompt", "recipe", "status", "created", "GLB PSNR", "GLB IoU",
                                          "resumable"], value=lambda: gallery_rows(queue), interactive=False,
                                 elem_id="gallery")
            with gr.Row():
                choice = gr.Dropdown([], label="Run", allow_custom_value=False, elem_id="gallery-run")
                refresh_btn = gr.Button("Refresh", elem_id="gallery-refresh")
                open_btn = gr.Button("Open", elem_id="gallery-open")
        message = gr.Markdown(elem_id="message")
        status = gr.HTML(progress_html(None))
        with gr.Row():
            cancel_btn = gr.Button("Cancel", elem_id="cancel")
            resume_btn = gr.Button("Resume", elem_id="resume")
        with gr.Row():
            preview = gr.Image(label="Latest validation", type="filepath", interactive=False, elem_id="preview")
            viewer = gr.Model3D(label="model.glb", clear_color=(1.0, 1.0, 1.0, 1.0), elem_id="viewer")
        with gr.Row():
            video = gr.Video(label="Turntable", interactive=False, elem_id="turntable")
            metrics = gr.JSON(label="Metrics", elem_id="metrics")
        files = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="downloads")
        command = gr.Textbox(label="The CLI command that reproduces this", interactive=False, elem_id="command")
        finished = gr.State("")

        go.click(submit, [prompt, negative, recipe, preset, seed, overrides, page_job], [page_job, message])
        go_mesh.click(submit_mesh, [upload, recon_recipe, recon_preset, recon_seed, recon_overrides, page_job],
                      [page_job, message])
        timer = gr.Timer(REFRESH_S)
        timer.tick(refresh, [page_job, shown], [status, preview, shown, finished])
        finished.change(show_result, [finished], [viewer, video, metrics, files, command])
        cancel_btn.click(cancel, [page_job], [message])
        resume_btn.click(resume, [page_job], [message])
        refresh_btn.click(gallery_view, None, [table, choice, thumbs, thumb_names])
        open_btn.click(open_run, [choice], [page_job, message, shown, finished])
        table.select(pick_row, [table], [page_job, message, shown, finished])  # a click on a row opens that run
        thumbs.select(pick_thumb, [thumb_names], [page_job, message, shown, finished])
        demo.load(gallery_view, None, [table, choice, thumbs, thumb_names])
    demo.dreamcore_css = css
    return demo


def _lines(text: str | None) -> list[str]:
    return [ln.strip() for ln in (text or "").splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _path(upload) -> str:
    return upload if isinstance(upload, str) else getattr(upload, "name", str(upload))


def _orig_name(upload) -> str:
    return getattr(upload, "orig_name", None) or Path(_path(upload)).name


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """``user:password``, or a file holding that on its first line."""
    if not text:
        return None
    if ":" not in text and Path(text).is_file():
        text = Path(text).read_text().splitlines()[0].strip()
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise DreamcoreError("--auth takes user:password (or a file whose first line is user:password)")
    return user, password


def serve(host: str = "127.0.0.1", port: int = 7860, runs_dir: str = "runs/studio", auth: str | None = None,
          slots: int = 0, threads: int = 0, upload_mb: float = DEFAULT_UPLOAD_LIMIT / 2**20, block: bool = True):
    """Start the app (and its queue); returns (queue, demo) when ``block`` is False."""
    credentials = parse_auth(auth)
    if host not in ("127.0.0.1", "localhost", "::1") and credentials is None:
        raise DreamcoreError(f"serving on {host} exposes the studio to the network: pass --auth user:password "
                             "(or a file holding it)")
    gr = _import_gradio()
    queue = JobQueue(runs_dir, slots=slots, threads=threads, upload_limit=int(upload_mb * 2**20))
    os.environ["GRADIO_TEMP_DIR"] = str(queue.runs_dir / UPLOADS)  # read when the Blocks and the server are made
    demo = build_app(queue)
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    demo.queue(default_concurrency_limit=8)
    try:
        demo.launch(server_name=host, server_port=port, share=False, auth=credentials, inbrowser=False,
                    prevent_thread_lock=True, allowed_paths=[str(queue.runs_dir)], max_file_size=int(upload_mb * 2**20),
                    theme=theme, css=demo.dreamcore_css, quiet=True, footer_links=[], ssr_mode=False,
                    enable_monitoring=False, mcp_server=False)
    except Exception:
        queue.close()
        raise
    print(f"dreamcore studio: http://{host}:{port} (runs in {queue.runs_dir})", flush=True)
    if not block:
        return queue, demo
    stop = threading.Event()
    # Ctrl-C, and SIGTERM (docker stop, systemd, kill): running jobs save their checkpoints, then the app ends.
    # Set here rather than relying on Python's KeyboardInterrupt, which a process started from a background shell
    # never gets (it inherits SIGINT ignored).
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        demo.close()
        queue.close()
    return queue, demo
