"""The studio's page (Gradio Blocks): a new asset from a prompt, a mesh reconstructed with the reference prior, an
asset from one picture (Image to 3D: PNG, JPEG or WebP, typed by its bytes, size-limited, keyed before it is
queued), the running job's progress (its own bar: step / total, it/s, ETA, loss) and latest validation image
refreshed by a timer, cancel and resume, the finished GLB in a 3D viewer with its turntable, metrics, downloads and the CLI
command, and a gallery of the runs in the runs folder, whose finished NeRF and Gaussians runs can be edited
toward a new prompt (Edit this asset: a new job, optionally only inside a box given by six numbers; the run
itself is kept). All work happens in the job queue's processes; the page only reads run folders. Offline: no
analytics, no share links, no web fonts.

Who sees what: with ``--auth`` each job belongs to the user who made it (``request.username``): the page shows,
opens, cancels, resumes, downloads and deletes only that user's jobs, and its gallery lists only them. Without
``--auth`` the studio serves one user on localhost: every page sees every run (jobs are still recorded with
their page's Gradio session, which the per-page queue limit counts).

What is served: nothing of the runs folder itself. Gradio's temp dir (its upload staging and cache) lives
outside it (:func:`gradio_dir`), ``allowed_paths`` is empty and the runs folder is a blocked path; a file a
handler returns (GLB, turntable, validation image, downloads) is first copied into a folder of its job's under
the temp dir (:class:`Served`), and Gradio serves only such copies. ``studio-errors.txt`` (tracebacks) stays in
the runs folder and is never returned."""

from __future__ import annotations

import dataclasses
import functools
import html
import math
import os
import secrets
import shutil
import signal
import threading
import time
import traceback
import zipfile
from pathlib import Path

from dreamcore.errors import DreamcoreError
from dreamcore.studio import runs
from dreamcore.studio.queue import JobQueue
from dreamcore.studio.recipes import EDIT_RECIPES, IMAGE_RECIPES, PRESETS, RECONSTRUCT_RECIPES, TEXT_RECIPES, recipes
from dreamcore.studio.safety import BOX_CORNERS, MESH_SUFFIXES, PictureRefused, StudioLimits

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
REFRESH_S = 2.0
ERROR_LOG = "studio-errors.txt"  # under the runs folder: the tracebacks of the page's own failures (never served)
SERVED = "jobs"  # under Gradio's temp dir: a folder per job holding the copies of its files the page was sent


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
            f"<b>{html.escape(runs.title(st))}</b> — {status}<br>{' · '.join(figures)}"
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


def gradio_dir(runs_dir: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Gradio's temp dir (``GRADIO_TEMP_DIR``: where it stages uploads and keeps the files it serves), created
    owner-only (0700): ``cache_dir``, or by default ``.<runs name>-gradio`` beside the runs folder. Never inside
    the runs folder (Gradio serves everything under its temp dir) nor holding it."""
    runs_dir = Path(runs_dir).resolve()
    path = (Path(cache_dir).expanduser() if cache_dir else runs_dir.parent / f".{runs_dir.name}-gradio").resolve()
    if path == runs_dir or runs_dir in path.parents or path in runs_dir.parents:
        raise DreamcoreError(f"the studio's cache folder {path} must lie outside the runs folder {runs_dir} (and "
                             "not hold it): Gradio serves what is inside it")
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


class Served:
    """The files the page is sent: copies of a job's files, made when a handler returns them, in a folder of the
    job's own under Gradio's temp dir (``<root>/jobs/<random>``; a name nobody can guess from the job's).
    Gradio serves files inside its temp dir, so it serves these copies and nothing of the runs folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root) / SERVED
        self.folders: dict[str, Path] = {}
        self.lock = threading.Lock()

    def folder(self, name: str) -> Path:
        with self.lock:
            path = self.folders.get(name)
            if path is None:
                path = self.folders[name] = self.root / secrets.token_urlsafe(16)
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            return path

    def copy(self, name: str, path: str | Path | None, as_name: str | None = None) -> str | None:
        """The served copy of job ``name``'s file ``path`` (None when there is none), refreshed when the file
        changed since it was copied."""
        if path is None or not Path(path).is_file():
            return None
        src = Path(path)
        dest = self.folder(name) / (as_name or src.name)
        st = src.stat()
        try:
            have = dest.stat()
            if have.st_size == st.st_size and have.st_mtime_ns == st.st_mtime_ns:
                return str(dest)
        except FileNotFoundError:
            pass
        tmp = dest.with_name(f"{dest.stem}-{secrets.token_hex(4)}.tmp")
        try:
            shutil.copy2(src, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return str(dest)

    def forget(self, name: str) -> None:
        """Remove the copies of job ``name`` (deleted)."""
        with self.lock:
            path = self.folders.pop(name, None)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)


_EXTENTS: dict[tuple, str] = {}


def glb_extent(run_dir: Path) -> str:
    """Where the run's ``model.glb`` lies, as the page tells a user who types an edit's box ("x −0.5 … 0.5,
    y ..."); "" when it has none or it cannot be read. Cached per file version."""
    glb = Path(run_dir) / "model.glb"
    try:
        st = glb.stat()
    except OSError:
        return ""
    key = (str(glb), st.st_mtime_ns, st.st_size)
    if key not in _EXTENTS:
        try:
            from dreamcore.meshes.io import load_mesh

            v = load_mesh(glb).vertices
            lo, hi = v.min(0).values.tolist(), v.max(0).values.tolist()
            _EXTENTS[key] = ", ".join(f"{a} {l:.3g} … {h:.3g}" for a, l, h in zip("xyz", lo, hi))
        except Exception:  # noqa: BLE001 - the page then only lacks the hint
            _EXTENTS[key] = ""
    return _EXTENTS[key]


def edit_subject(queue: JobQueue, name: str, access: str) -> tuple[str, str]:
    """What Edit this asset says about the run shown (``name``) and the source prompt it defaults to."""
    if not name:
        return "Open a finished run (a row of the gallery, or a job of this page) to edit it.", ""
    try:
        st = queue.status(name, access)
    except DreamcoreError:
        return "Open a finished run (a row of the gallery, or a job of this page) to edit it.", ""
    prompt = str(st.get("prompt") or "")
    if st["status"] != "done":
        return f"`{name}` is {st['status']}: an edit starts from a finished run.", prompt
    extent = glb_extent(queue.runs_dir / name)
    where = f" Its model.glb spans {extent}: give the box in those coordinates." if extent else ""
    return f"Edits `{name}` ({html.escape(runs.title(st))}).{where}", prompt


def gallery_rows(queue: JobQueue, owner: str = "") -> list[list]:
    """The gallery's table: the runs of ``owner`` (every run for ``""``)."""
    rows = []
    for r in queue.jobs(owner):
        pos = queue.position(r.dir.name)
        status = r.status if pos is None else ("running" if pos == 0 else f"queued ({pos})")
        m = r.metrics
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.job.get("created", 0)))
        rows.append([r.dir.name, runs.title(r.job), r.job.get("recipe", ""), status, when,
                     m.get("glb_psnr"), m.get("glb_iou"), "yes" if r.resumable and pos is None else ""])
    return rows


def gallery_thumbs(queue: JobQueue, served: Served | None = None,
                   owner: str = "") -> tuple[list[tuple[str, str]], list[str]]:
    """Thumbnails (each run's newest validation image, captioned prompt · status, and before it the picture an
    Image to 3D run was given; served copies with ``served``) and the runs they belong to: the runs of ``owner``
    (every run for ``""``)."""
    thumbs, names = [], []
    for r in queue.jobs(owner):
        if r.picture is not None:
            path = served.copy(r.dir.name, r.picture, input_name(r.picture)) if served else str(r.picture)
            if path:
                thumbs.append((path, f"input picture · {runs.title(r.job)}"))
                names.append(r.dir.name)
        if r.thumbnail is not None:
            path = served.copy(r.dir.name, r.thumbnail) if served else str(r.thumbnail)
            if path:
                thumbs.append((path, f"{runs.title(r.job)} · {r.status}"))
                names.append(r.dir.name)
    return thumbs, names


def input_name(picture: Path) -> str:
    """The name of a run's input picture among the copies the page is sent (beside model.glb, step-N.png)."""
    return f"input-picture{picture.suffix}"


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


def who(request, per_user: bool) -> tuple[str, str]:
    """(the owner a new job records, the owner the page may act for: ``""`` = every job) for the page's request:
    with ``--auth`` (``per_user``) the logged-in user for both; without, its Gradio session and ``""``."""
    if per_user:
        user = getattr(request, "username", None) or ""
        if not user:
            raise DreamcoreError("log in first")
        return user, user
    return (getattr(request, "session_hash", None) or ""), ""


def build_app(queue: JobQueue, served: Served | None = None):
    """The page of ``queue``; the files it is sent are copied by ``served`` (default: into Gradio's temp dir,
    ``GRADIO_TEMP_DIR``, which must be set before this is called). ``queue.per_user`` (``--auth``): each user
    sees and touches only their own jobs."""
    gr = _import_gradio()
    from gradio.utils import get_upload_folder

    served = served or Served(get_upload_folder())
    text = recipes()
    recon = recipes(RECONSTRUCT_RECIPES)
    from_image = recipes(IMAGE_RECIPES)
    edits = recipes(EDIT_RECIPES)
    css = ("#job-status .bar{height:14px;background:#ddd;border-radius:7px;overflow:hidden;margin-top:6px}"
           "#job-status .fill{height:100%;background:#3b82f6;transition:width .5s}"
           ".job-error{color:#b91c1c;margin-top:6px}")

    per_user = queue.per_user

    def submit(prompt, negative, recipe, preset, seed, overrides, page_job, request):
        try:
            owner, _ = who(request, per_user)
            name = queue.submit(prompt, recipe, preset, int(seed or 0), negative or "", _lines(overrides),
                                owner=owner, recipes_offered=TEXT_RECIPES)
        except DreamcoreError as e:
            return page_job, f"**Not started:** {e}"
        return name, f"Queued `{name}`."

    def submit_mesh(upload, recipe, preset, seed, overrides, page_job, request):
        if upload is None:
            return page_job, "**Not started:** choose a mesh file (GLB, glTF, OBJ+MTL as a zip, PLY or STL)."
        try:
            owner, _ = who(request, per_user)
            prompt = f"reconstruction of {Path(_orig_name(upload)).stem[:60] or 'an uploaded mesh'}"
            name = queue.submit(prompt, recipe, preset, int(seed or 0), "", _lines(overrides), upload=_path(upload),
                                owner=owner, recipes_offered=RECONSTRUCT_RECIPES)
        except DreamcoreError as e:
            return page_job, f"**Not started:** {e}"
        finally:
            discard_staged(upload)
        return name, (f"Queued `{name}`: the mesh is reconstructed with the closed-form reference prior "
                      "(no diffusion weights needed).")

    def submit_image(picture, prompt, azimuth, elevation, recipe, preset, seed, overrides, page_job, request):
        """Queue an Image to 3D job: the picture is checked (size, type by its bytes, decoded and keyed) and
        stored in the job's run folder under a name of the server's before anything is queued; nothing of the
        sender's file name is used. Once queued, or refused for what it is, Gradio's staged copy goes and the
        page's file field is cleared; refused for anything else (the view, an override), it stays chosen, to be
        sent again once that is fixed."""
        if picture is None:
            return page_job, "**Not started:** choose a picture (PNG, JPEG or WebP).", gr.skip()
        try:
            owner, _ = who(request, per_user)
            name = queue.submit(prompt or "", recipe, preset, int(seed or 0), "", _lines(overrides),
                                image=_path(picture), azimuth=azimuth, elevation=elevation, owner=owner,
                                recipes_offered=IMAGE_RECIPES)
        except PictureRefused as e:
            discard_staged(picture)
            return page_job, f"**Not started:** {e}", None
        except DreamcoreError as e:
            return page_job, f"**Not started:** {e}", gr.skip()
        except BaseException:
            discard_staged(picture)
            raise
        discard_staged(picture)
        return name, (f"Queued `{name}`: the picture's background is removed and the object is made from it, "
                      "seen from the azimuth and elevation given."), None

    def submit_edit(target, source_prompt, x0, y0, z0, x1, y1, z1, falloff, recipe, preset, seed, overrides,
                    page_job, request):
        """Queue an edit of the run the page shows (by its job name: the queue finds its folder), its region built
        by the server from the six numbers."""
        if not page_job:
            return page_job, "**Not started:** open the run to edit first (a row of the gallery)."
        try:
            owner, _ = who(request, per_user)
            name = queue.submit_edit(page_job, target or "", recipe, preset, int(seed or 0), source_prompt or "",
                                     box=[x0, y0, z0, x1, y1, z1], falloff=falloff, overrides=_lines(overrides),
                                     owner=owner)
        except DreamcoreError as e:
            return page_job, f"**Not started:** {e}"
        return name, f"Queued `{name}`: an edit of `{page_job}`, which is kept as it is."

    def show_subject(page_job, request):
        text, prompt = edit_subject(queue, page_job, who(request, per_user)[1])
        return text, gr.update(placeholder=prompt or "what the asset shows now")

    def show_input(page_job, request):
        """The picture the page's job was given (Image to 3D), beside its result; hidden for other jobs."""
        if not page_job:
            return gr.update(value=None, visible=False)
        try:
            queue.status(page_job, who(request, per_user)[1])
        except DreamcoreError:
            return gr.update(value=None, visible=False)
        picture = runs.input_picture(queue.runs_dir / page_job)
        path = served.copy(page_job, picture, input_name(picture)) if picture is not None else None
        return gr.update(value=path, visible=path is not None)

    def refresh(page_job, shown, request):
        if not page_job:
            return progress_html(None), gr.skip(), shown, gr.skip()
        try:
            st = queue.status(page_job, who(request, per_user)[1])
        except DreamcoreError as e:
            return f"<div id='job-status'>{html.escape(str(e))}</div>", gr.skip(), shown, gr.skip()
        # each validation image keeps its own name (step-N.png): a new one is a new address, so the page redraws
        val = served.copy(page_job, st["validation"]) if st["validation"] else None
        done_now = st["status"] == "done" and shown != page_job
        return (progress_html(st), val if val else gr.skip(), page_job if done_now else shown,
                page_job if done_now else gr.skip())

    def show_result(page_job, request):
        if not page_job:  # another run opened, or this one deleted: nothing shown until it is done
            return None, None, None, None, ""
        st = queue.status(page_job, who(request, per_user)[1])  # another user's job: refused in words
        run_dir = queue.runs_dir / page_job
        files = [served.copy(page_job, f) for f in result_files(run_dir)]
        return (served.copy(page_job, run_dir / "model.glb"), served.copy(page_job, turntable(run_dir)),
                {k: v for k, v in st["metrics"].items() if k != "export"}, [f for f in files if f], st["command"])

    def act(action, page_job, done: str) -> str:
        """Run a queue action on the page's job; its message, or the queue's refusal in words."""
        try:
            action(page_job)
        except DreamcoreError as e:
            return f"**{e}**"
        return done.format(job=page_job)

    def cancel(page_job, request):
        access = who(request, per_user)[1]
        return act(lambda job: queue.cancel(job, access), page_job,
                   "Stopping `{job}`: its checkpoint is saved; resume it from here or the gallery.")

    def resume(page_job, request):
        access = who(request, per_user)[1]
        return act(lambda job: queue.resume(job, access), page_job,
                   "Queued `{job}` again: it resumes from its checkpoint.")

    def delete(page_job, request):
        """Delete the page's job (its run folder, uploads included, and the copies the page was sent)."""
        if not page_job:
            return gr.skip(), "Open a run first (a job of this page, or one from the gallery).", gr.skip(), gr.skip()
        try:
            queue.delete(page_job, who(request, per_user)[1])
        except DreamcoreError as e:
            return gr.skip(), f"**{e}**", gr.skip(), gr.skip()
        served.forget(page_job)
        return "", f"Deleted `{page_job}` and its files.", "", ""

    def open_run(name, request):
        if not name:
            return gr.skip(), "Choose a run in the gallery first.", gr.skip(), gr.skip()
        try:
            queue.status(name, who(request, per_user)[1])
        except DreamcoreError as e:
            return gr.skip(), f"**{e}**", gr.skip(), gr.skip()
        return name, f"Showing `{name}`.", "", ""

    def pick_row(data, evt, request):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        try:
            name = data.iloc[row, 0] if hasattr(data, "iloc") else data[row][0]
        except (IndexError, KeyError, TypeError):
            name = ""
        return open_run(str(name), request)

    def pick_thumb(names, evt, request):
        i = evt.index if isinstance(evt.index, int) else (evt.index or [0])[0]
        return open_run(names[i] if names and 0 <= i < len(names) else "", request)

    def gallery_view(request):
        access = who(request, per_user)[1]
        rows = gallery_rows(queue, access)
        pictures, names = gallery_thumbs(queue, served, access)
        return rows, gr.update(choices=[r[0] for r in rows]), pictures, names

    # How Gradio knows to pass the event and the request: by the parameter's annotation, which it reads with
    # typing.get_type_hints (the names in this module are strings, and gr is not one of its globals: the classes
    # themselves are set). in_words keeps them visible: functools.wraps copies __annotations__ and sets
    # __wrapped__, which inspect.signature follows.
    handlers = (submit, submit_mesh, submit_image, submit_edit, show_subject, show_input, refresh, show_result, cancel,
                resume, delete, open_run, pick_row, pick_thumb, gallery_view)
    for f in handlers:
        f.__annotations__["request"] = gr.Request
    pick_thumb.__annotations__["evt"] = gr.SelectData
    pick_row.__annotations__["evt"] = gr.SelectData
    log = queue.runs_dir / ERROR_LOG
    (submit, submit_mesh, submit_image, submit_edit, show_subject, show_input, refresh, show_result, cancel, resume,
     delete, open_run, pick_row, pick_thumb, gallery_view) = (in_words(gr, f, log) for f in handlers)

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
        with gr.Tab("Image to 3D"):
            gr.Markdown("Make an asset from one picture of an object: a PNG, JPEG or WebP file (told by its content, "
                        f"not its name), at most {queue.image_limit / 2**20:g} MB. Its background is removed (its "
                        "transparency, else a key on the border colour) before the job is queued. Say where the "
                        "picture was taken from: azimuth 0 is the object's front, elevation 0 its height.")
            # no file_types: Gradio would refuse a file by its name; the queue judges the bytes
            picture = gr.File(label="Picture", elem_id="picture")
            image_prompt = gr.Textbox(label="Prompt (optional: the object's name)", placeholder="a toy robot",
                                      elem_id="image-prompt")
            with gr.Row():
                azimuth = gr.Number(0, label="Azimuth of the picture (degrees, -360..360; 0 = front)",
                                    elem_id="azimuth")
                elevation = gr.Number(0, label="Elevation (degrees, -90..90; positive = from above)",
                                      elem_id="elevation")
            image_recipe = gr.Dropdown([(f"{r.name} — {r.description}", r.name) for r in from_image],
                                       value=from_image[0].name if from_image else None, label="Recipe",
                                       elem_id="image-recipe")
            with gr.Row():
                image_preset = gr.Radio(list(PRESETS), value="draft", label="Quality", elem_id="image-preset")
                image_seed = gr.Number(0, precision=0, label="Seed", elem_id="image-seed")
            image_overrides = gr.Textbox(lines=2, label="key=value overrides", elem_id="image-overrides")
            go_image = gr.Button("Make 3D", variant="primary", elem_id="image-generate")
        with gr.Tab("Gallery"):
            thumb_names = gr.State([])
            thumbs = gr.Gallery(label="Runs (a click opens one)", columns=6, height=240, allow_preview=False,
                                elem_id="gallery-thumbs")
            # filled by demo.load, which knows the page's user (a value computed here would list every run)
            table = gr.Dataframe(headers=["run", "prompt", "recipe", "status", "created", "GLB PSNR", "GLB IoU",
                                          "resumable"], interactive=False, elem_id="gallery")
            with gr.Row():
                choice = gr.Dropdown([], label="Run", allow_custom_value=False, elem_id="gallery-run")
                refresh_btn = gr.Button("Refresh", elem_id="gallery-refresh")
                open_btn = gr.Button("Open", elem_id="gallery-open")
            with gr.Accordion("Edit this asset", open=False, elem_id="edit-asset"):
                gr.Markdown("Change the run shown below toward a new prompt; a new job is made and the run itself "
                            "is kept. Optionally only inside a box (the rest stays exactly as it is), given by its "
                            "corners in the coordinates of the run's model.glb. NeRF and Gaussians runs.")
                edit_about = gr.Markdown(edit_subject(queue, "", "")[0], elem_id="edit-about")
                edit_prompt = gr.Textbox(label="Target prompt: what it should become",
                                         placeholder="a toy robot with a blue chest", elem_id="edit-prompt")
                edit_source = gr.Textbox(label="Source prompt: what it shows now (blank: the run's own prompt)",
                                         placeholder="what the asset shows now", elem_id="edit-source-prompt")
                corners = []
                for row in (BOX_CORNERS[:3], BOX_CORNERS[3:]):
                    with gr.Row():
                        corners += [gr.Number(None, label=f"box {c}", elem_id=f"edit-{c}") for c in row]
                with gr.Row():
                    edit_falloff = gr.Number(None, label="Soft edge (falloff, scene units; blank: hard)",
                                             elem_id="edit-falloff")
                    edit_recipe = gr.Dropdown([(f"{r.name} — {r.description}", r.name) for r in edits],
                                              value=edits[0].name if edits else None, label="Method",
                                              elem_id="edit-recipe")
                with gr.Row():
                    edit_preset = gr.Radio(list(PRESETS), value="draft", label="Quality", elem_id="edit-preset")
                    edit_seed = gr.Number(0, precision=0, label="Seed", elem_id="edit-seed")
                edit_overrides = gr.Textbox(lines=2, label="key=value overrides", elem_id="edit-overrides")
                go_edit = gr.Button("Edit", variant="primary", elem_id="edit-generate")
        message = gr.Markdown(elem_id="message")
        status = gr.HTML(progress_html(None))
        with gr.Row():
            cancel_btn = gr.Button("Cancel", elem_id="cancel")
            resume_btn = gr.Button("Resume", elem_id="resume")
            delete_btn = gr.Button("Delete", variant="stop", elem_id="delete")
        with gr.Row():
            input_picture = gr.Image(label="Input picture", type="filepath", interactive=False, visible=False,
                                     elem_id="input-picture")
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
        go_image.click(submit_image, [picture, image_prompt, azimuth, elevation, image_recipe, image_preset,
                                      image_seed, image_overrides, page_job], [page_job, message, picture])
        page_job.change(show_input, [page_job], [input_picture])
        go_edit.click(submit_edit, [edit_prompt, edit_source, *corners, edit_falloff, edit_recipe, edit_preset,
                                    edit_seed, edit_overrides, page_job], [page_job, message])
        page_job.change(show_subject, [page_job], [edit_about, edit_source])
        finished.change(show_subject, [page_job], [edit_about, edit_source])  # the page's own job just finished
        timer = gr.Timer(REFRESH_S)
        timer.tick(refresh, [page_job, shown], [status, preview, shown, finished])
        finished.change(show_result, [finished], [viewer, video, metrics, files, command])
        cancel_btn.click(cancel, [page_job], [message])
        resume_btn.click(resume, [page_job], [message])
        delete_btn.click(delete, [page_job], [page_job, message, shown, finished]).then(
            gallery_view, None, [table, choice, thumbs, thumb_names])
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
    """``user:password``, or a file holding that on its first non-blank line (which keeps the password out of
    ``ps``). An empty file, or one whose first line is not ``user:password``, is refused in words that never
    quote the file."""
    if not text:
        return None
    if ":" not in text and Path(text).is_file():
        path = Path(text)
        try:
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise DreamcoreError(f"--auth {path}: cannot read the file ({type(e).__name__})") from None
        if not lines:
            raise DreamcoreError(f"--auth {path}: the file is empty; its first line must be user:password")
        user, sep, password = lines[0].partition(":")
        if not sep or not user.strip() or not password:
            raise DreamcoreError(f"--auth {path}: the file's first line is not user:password")
        return user.strip(), password
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise DreamcoreError("--auth takes user:password (or a file whose first line is user:password)")
    return user, password


def read_limits(path: str | Path | None = None, **flags) -> StudioLimits:
    """The server's :class:`StudioLimits`: the defaults, then ``path`` (a YAML mapping of its fields; an
    unknown key, a value that is not a positive number, is refused naming it), then ``flags`` that are not None
    (``max_queue=8``: the command line's ``--max-queue``)."""
    import yaml

    fields = {f.name: f for f in dataclasses.fields(StudioLimits)}
    values: dict = {}
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise DreamcoreError(f"--limits {path}: cannot read the file ({e.strerror or e})") from None
        except yaml.YAMLError as e:
            raise DreamcoreError(f"--limits {path}: not YAML ({str(e).splitlines()[0]})") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise DreamcoreError(f"--limits {path}: a mapping of limits is expected (max_steps: 4000, ...)")
        unknown = sorted(str(k) for k in data if k not in fields)
        if unknown:
            raise DreamcoreError(f"--limits {path}: unknown limit(s) {', '.join(unknown)} (known: "
                                 f"{', '.join(fields)})")
        values.update(data)
    values.update({k: v for k, v in flags.items() if v is not None})
    for key, value in values.items():
        if key not in fields:
            raise DreamcoreError(f"unknown studio limit {key!r}")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or value <= 0:
            raise DreamcoreError(f"studio limit {key}={value!r}: a positive number is expected")
        if fields[key].type in ("int", int):
            if value != int(value):
                raise DreamcoreError(f"studio limit {key}={value!r}: a whole number is expected")
            values[key] = int(value)
        else:
            values[key] = float(value)
    return StudioLimits(**values)


def serve(host: str = "127.0.0.1", port: int = 7860, runs_dir: str = "runs/studio", auth: str | None = None,
          slots: int = 0, threads: int = 0, upload_mb: float | None = None, block: bool = True,
          limits: StudioLimits | None = None, cache_dir: str | Path | None = None):
    """Start the app (and its queue); returns (queue, demo) when ``block`` is False. ``limits`` bounds what a page
    may ask for (``upload_mb``, when given, replaces its ``max_upload_mb``); ``cache_dir`` is Gradio's temp dir
    (default: beside the runs folder, :func:`gradio_dir`)."""
    credentials = parse_auth(auth)
    if host not in ("127.0.0.1", "localhost", "::1") and credentials is None:
        raise DreamcoreError(f"serving on {host} exposes the studio to the network: pass --auth FILE (a file whose "
                             "first line is user:password)")
    limits = dataclasses.replace(limits) if limits is not None else StudioLimits()
    if upload_mb is not None:
        limits.max_upload_mb = float(upload_mb)
    gr = _import_gradio()
    temp = gradio_dir(Path(runs_dir), cache_dir)  # refused before the queue makes anything
    queue = JobQueue(runs_dir, slots=slots, threads=threads, limits=limits, per_user=credentials is not None)
    os.environ["GRADIO_TEMP_DIR"] = str(temp)  # read when the Blocks and the server are made
    demo = build_app(queue, Served(temp))
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    demo.queue(default_concurrency_limit=8)
    try:
        # no allowed_paths: Gradio serves its temp dir (the copies Served makes) and nothing of the runs folder,
        # which is blocked as well (GRADIO_ALLOWED_PATHS cannot open it)
        demo.launch(server_name=host, server_port=port, share=False, auth=credentials, inbrowser=False,
                    prevent_thread_lock=True, allowed_paths=[], blocked_paths=[str(queue.runs_dir)],
                    max_file_size=max(queue.upload_limit, queue.image_limit), theme=theme, css=demo.dreamcore_css,
                    quiet=True,
                    footer_links=[], ssr_mode=False, enable_monitoring=False, mcp_server=False)
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
