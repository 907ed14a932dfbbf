"""The studio's job queue: jobs from any number of pages run one at a time per slot (a device, or the CPU), each
in its own process (``python -m dreamcore.batch.worker``), so a crash or an out-of-memory kill in a job never
takes the app down and frees what the job held. Each job's state is written to its run folder
(``studio.json``); the queue itself is only the order of the jobs not yet started.

Owners: each job records the ``owner`` that submitted it (the user name when the studio runs with ``--auth``,
else the Gradio session of the page). The queue's methods that touch one job (``status``, ``cancel``,
``resume``, ``delete``) take the caller's ``owner`` and refuse another owner's job in words; ``owner=""``
matches every job, which is what the page passes without ``--auth`` (one user on localhost, whose pages all see
all runs) and what trusted callers (the CLI, tests) use. Queue lengths are counted per owner either way
(``StudioLimits.max_per_page``), and for the whole server (``StudioLimits.max_queue``).

Job processes run untrusted (:func:`dreamcore.trust.untrusted_environment`): no plugins, no files outside an
upload's folder, the model hub offline."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Sequence

from dreamcore.batch.jobs import Job
from dreamcore.batch.local import die_with_parent, visible_gpus
from dreamcore.batch.worker import read_result, result_path
from dreamcore.config import config_path, load_config, prompt_line
from dreamcore.errors import DreamcoreError
from dreamcore.runner.refine import stage_config
from dreamcore.runner.rundir import RunDir, prompt_slug
from dreamcore.studio import runs
from dreamcore.studio.recipes import EDIT_RECIPES, IMAGE_RECIPES, RECONSTRUCT_RECIPES, TEXT_RECIPES, preset_overrides
from dreamcore.studio.safety import (PictureRefused, StudioLimits, UnsafeInput, check_box, check_falloff,
                                     check_limits, check_overrides, check_view, save_picture, save_upload)
from dreamcore.trust import untrusted_environment

WORKER_LOG = "studio-worker.txt"  # the job process's own output, in its run folder
STOP_WAIT_S = 120.0
STUDIO_RECIPES = (*TEXT_RECIPES, *RECONSTRUCT_RECIPES, *IMAGE_RECIPES)  # what the page offers, all tabs together


class JobQueue:
    """``submit`` checks a request and queues it; a dispatcher thread starts queued jobs when a slot is free.
    ``slots`` jobs run at once (default: one per visible GPU, else one). ``limits`` bounds what a page may ask
    for (:class:`~dreamcore.studio.safety.StudioLimits`; ``upload_limit``, in bytes, overrides its
    ``max_upload_mb``). ``per_user`` (the studio runs with ``--auth``): a job's override may name files only in
    run folders of the same owner (:meth:`owns`)."""

    def __init__(self, runs_dir: str | Path, slots: int = 0, threads: int = 0, poll_s: float = 0.25,
                 upload_limit: int | None = None, limits: StudioLimits | None = None, per_user: bool = False):
        self.runs_dir = Path(runs_dir).resolve()
        self.limits = dataclasses.replace(limits) if limits is not None else StudioLimits()
        if upload_limit is not None:
            self.upload_limit = upload_limit
        self.per_user = per_user
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        gpus = visible_gpus()
        self.slots = slots if slots > 0 else max(1, len(gpus))
        self.gpu_of_slot = [gpus[i] if i < len(gpus) else None for i in range(self.slots)]
        self.threads = threads
        self.poll_s = poll_s
        self.pending: deque[str] = deque()
        self.running: dict[str, tuple[subprocess.Popen, int, object]] = {}  # name -> (process, slot, log file)
        self.cancelled: set[str] = set()
        self.starting: set[str] = set()  # taken from the queue, process not yet recorded
        self.owner_of: dict[str, str] = {}  # owner of each job queued, starting or running
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._dispatch, name="studio-queue", daemon=True)
        self.thread.start()

    @property
    def upload_limit(self) -> int:
        """The largest upload, in bytes (``limits.max_upload_mb``)."""
        return int(self.limits.max_upload_mb * 2**20)

    @upload_limit.setter
    def upload_limit(self, value: int) -> None:
        self.limits.max_upload_mb = value / 2**20

    @property
    def image_limit(self) -> int:
        """The largest picture (Image to 3D), in bytes (``limits.max_image_mb``)."""
        return int(self.limits.max_image_mb * 2**20)

    # -- requests -------------------------------------------------------------------------------------------
    def submit(self, prompt: str, recipe: str, preset: str = "standard", seed: int = 0, negative_prompt: str = "",
               overrides: list[str] | None = None, upload: str | Path | None = None, *, owner: str = "",
               recipes_offered: Sequence[str] | None = None, image: str | Path | None = None,
               azimuth: float | str | None = 0.0, elevation: float | str | None = 0.0) -> str:
        """Check the request as the CLI would (raising its message), write its run folder's ``studio.json`` and
        queue it; returns the job's name (its folder under the runs folder). ``upload``, a mesh file sent by a
        page, is checked and unpacked into the run folder's ``input/`` and becomes the reference mesh.

        ``image`` (Image to 3D; an ``IMAGE_RECIPES`` recipe needs one, the others take none), a picture sent by a
        page: at most ``limits.max_image_mb``, typed by its bytes (PNG, JPEG or WebP), copied into the run folder
        as ``input/picture.<png|jpg|webp>`` (a name of the server's, never the sender's), then read and keyed as
        the job will read it (:func:`dreamcore.reference_image.cut_out` with the job's ``image`` settings), so a
        picture that does not decode or is empty after keying is refused in words and nothing is queued. It
        becomes the job's ``image.path`` (the run folder keeps its cut-out as ``reference.png``), taken from
        ``azimuth`` / ``elevation`` (degrees, :func:`~dreamcore.studio.safety.check_view`); the prompt may be
        empty then.

        ``recipe`` must be one of ``recipes_offered`` (the page passes its tab's list: ``TEXT_RECIPES`` for a new
        asset, ``RECONSTRUCT_RECIPES`` for an upload, ``IMAGE_RECIPES`` for a picture; default all), never a path
        or another config. ``owner`` (the page's user, or its session without ``--auth``) is recorded in
        ``studio.json``; the request is refused while the server has ``limits.max_queue`` jobs queued or running,
        or that owner ``limits.max_per_page``."""
        self._check_recipe(recipe, STUDIO_RECIPES if recipes_offered is None else recipes_offered)
        if recipe in IMAGE_RECIPES and image is None:
            raise UnsafeInput(f"the recipe {recipe} makes an object from a picture: upload one (PNG, JPEG or WebP)")
        if image is not None and (recipe not in IMAGE_RECIPES or upload is not None):
            raise UnsafeInput(f"a picture is taken by the Image to 3D recipes ({', '.join(IMAGE_RECIPES)}) alone")
        self._check_room(owner)
        prompt = (prompt or "").strip()
        if not prompt and image is None:
            raise DreamcoreError("the prompt is empty")
        view = check_view(azimuth, elevation) if image is not None else None
        page = check_overrides(list(overrides or []), self.runs_dir, self.owns(owner))
        config = str(config_path(recipe).resolve())
        try:  # the recipe as the page leaves it (its length, its export), which the preset adapts
            recipe_cfg = load_config(config, page)
        except DreamcoreError:
            recipe_cfg = load_config(config)  # the page's own mistake is reported below, with its job
        merged = [*preset_overrides(preset, recipe_cfg), *page]
        if negative_prompt.strip():
            merged.append(prompt_line("negative_prompt", negative_prompt.strip()))
        if view is not None:  # the form's camera, over any the page's overrides set
            merged += [f"image.azimuth={json.dumps(view[0])}", f"image.elevation={json.dumps(view[1])}"]
        job = Job("", prompt, int(seed), config, merged)
        if upload is None and image is None:  # the CLI's parser: a wrong key fails here, nothing starts
            self._check_bounds(load_config(config, job.config_overrides()))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        stem = prompt_slug(prompt).strip("-") or ("picture" if image is not None else "job")
        job.name = f"{stem}-{stamp}-{secrets.token_hex(2)}"
        job.dir = str(self.runs_dir / job.name)
        if upload is not None:
            try:
                mesh = save_upload(upload, Path(job.dir) / "input", self.upload_limit)
                job.overrides.append(f"prior.reference.mesh={json.dumps(str(mesh))}")
                self._check_bounds(load_config(config, job.config_overrides()))
            except BaseException:
                shutil.rmtree(job.dir, ignore_errors=True)  # a refused request leaves nothing behind
                raise
        if image is not None:
            try:
                picture = save_picture(image, Path(job.dir) / "input", self.image_limit)
                job.image = str(picture)  # the job's image.path (Job.config_overrides)
                cfg = load_config(config, job.config_overrides())
                self._check_bounds(cfg)
                _check_picture(picture, cfg.image)
            except BaseException:
                shutil.rmtree(job.dir, ignore_errors=True)
                raise
        runs.write_job(Path(job.dir), {**job.to_dict(), "recipe": recipe, "preset": preset,
                                       "negative_prompt": negative_prompt, "page_overrides": page,
                                       "owner": owner, "created": time.time(), "status": "queued",
                                       **({"azimuth": view[0], "elevation": view[1]} if view else {})})
        return self._enqueue(job, owner)

    def submit_edit(self, source: str, prompt: str, recipe: str = "edit-dds", preset: str = "standard",
                    seed: int = 0, source_prompt: str = "", box: Sequence | None = None, falloff=None,
                    overrides: list[str] | None = None, *, owner: str = "") -> str:
        """Queue an edit of the finished job ``source`` (Edit this asset) toward ``prompt``, as ``dreamcore edit``
        does (:func:`dreamcore.runner.edit.edit_config`: the edit recipe laid over the source job's own config);
        returns the new job's name. Refused in words, with nothing written:

        * ``source`` is a job's *name* in the runs folder (never a path from the page): one that is no job, is
          another user's (with ``--auth``: the page's user must own it), has not finished (status done, with a
          checkpoint), or whose run cannot be edited (an image-to-3D run, a DMTet/mesh run, an edit);
        * ``recipe`` one of ``EDIT_RECIPES`` (the method: dds, pds, sds);
        * the prompts are taken literally; ``source_prompt`` blank is the source job's own prompt;
        * the region is built here from ``box``, six numbers x0, y0, z0, x1, y1, z1 in the coordinates of the
          source's ``model.glb`` (:func:`~dreamcore.studio.safety.check_box`; all blank: the whole asset), with
          ``falloff`` its soft edge (blank: a hard one); the page's overrides never set ``system.region``;
        * the page's overrides pass :func:`~dreamcore.studio.safety.check_overrides` like any job's, and the merged
          config the server's limits; the queue's limits count it like any job of ``owner``.

        The record (``studio.json``) names the job it edits (``edit_of``) and the source run folder (``edit``);
        :func:`~dreamcore.studio.runs.cli_command` gives the ``dreamcore edit`` line that reproduces it. A job
        that has edits cannot be deleted before them (:meth:`delete`)."""
        from dreamcore.runner.edit import edit_config

        self._check_recipe(recipe, EDIT_RECIPES)
        self._check_room(owner)
        prompt = (prompt or "").strip()
        if not prompt:
            raise DreamcoreError("the target prompt is empty: say what the asset should become")
        access = owner if self.per_user else ""  # with --auth, only the user's own jobs may be edited
        rec = self._record(source, access)
        folder = self.runs_dir / source
        position = self.position(source)
        status = rec.get("status", "unknown") if position is None else "running" if position == 0 else "queued"
        if status != "done":
            raise DreamcoreError(f"job {source} has not finished ({status}): an edit starts from a finished job's "
                                 "checkpoint")
        if not RunDir(folder).has_checkpoint():
            raise DreamcoreError(f"job {source} has no checkpoint (ckpt/) to start an edit from")
        source_prompt = (source_prompt or "").strip() or str(rec.get("prompt") or "").strip()
        if not source_prompt:
            raise DreamcoreError(f"say what job {source} shows now (the source prompt): it has no prompt of its own")
        region = check_box(box if box is not None else [None] * 6)
        soft = check_falloff(falloff)
        page = check_overrides(list(overrides or []), self.runs_dir, self.owns(owner))
        config = str(config_path(recipe).resolve())
        merged = edit_config(folder, prompt, source_prompt, region or None, soft, config, page,
                             run_dir=self.runs_dir / "job")  # the source, the region and the overrides checked
        if merged.image.path:
            raise DreamcoreError(f"job {source} was made from a picture; editing an image-to-3D run is not "
                                 "supported yet (add the override image.path= to edit it by its prompts alone)")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"edit-{prompt_slug(prompt).strip('-') or 'job'}-{stamp}-{secrets.token_hex(2)}"
        job = Job(name, prompt, int(seed), config, [*preset_overrides(preset, merged), *page],
                  str(self.runs_dir / name), edit=str(folder), source_prompt=source_prompt, region=region,
                  falloff=soft)
        self._check_bounds(job.load())  # the merged config as the worker will load it (preset included)
        runs.write_job(Path(job.dir), {**job.to_dict(), "recipe": recipe, "preset": preset, "negative_prompt": "",
                                       "page_overrides": page, "owner": owner, "created": time.time(),
                                       "status": "queued", "edit_of": source})
        def source_still_there() -> None:  # deleted meanwhile (delete renames it under this lock)
            if not folder.is_dir():
                raise DreamcoreError(f"no studio job named {source!r}: it was deleted meanwhile")

        return self._enqueue(job, owner, source_still_there)

    def _enqueue(self, job, owner: str, check=None) -> str:
        """Put a written job in the queue, under the lock, after checking the room again (another page may have
        taken it meanwhile) and ``check()``; a refused job's folder is removed."""
        with self.lock:
            try:
                self._check_room(owner, locked=True)
                if check is not None:
                    check()
            except DreamcoreError:
                shutil.rmtree(job.dir, ignore_errors=True)
                raise
            self.pending.append(job.name)
            self.owner_of[job.name] = owner
        return job.name

    def edits_of(self, name: str) -> list[str]:
        """The jobs in the runs folder that edit job ``name`` (their records' ``edit_of``), by name."""
        out = []
        for d in sorted(self.runs_dir.iterdir()):
            if d.is_dir() and not d.name.startswith("."):
                rec = runs.read_job(d)
                if rec is not None and rec.get("edit_of") == name:
                    out.append(d.name)
        return out

    @staticmethod
    def _check_recipe(recipe: str, offered: Sequence[str]) -> None:
        """Refuse a recipe the page does not offer (a path, another config of ``configs/``) in words."""
        if not isinstance(recipe, str) or recipe not in offered:
            shown = repr(recipe) if len(repr(recipe)) <= 80 else repr(recipe)[:77] + "..."
            raise UnsafeInput(f"unknown recipe {shown}: the studio offers {', '.join(offered)}")

    def _check_room(self, owner: str, locked: bool = False) -> None:
        """Refuse, in words, a job that would take the server past ``limits.max_queue`` jobs queued or running,
        or ``owner`` past ``limits.max_per_page``."""
        if not locked:
            with self.lock:
                return self._check_room(owner, locked=True)
        active = list(self.owner_of)
        if len(active) >= self.limits.max_queue:
            raise UnsafeInput(f"the studio is busy: {len(active)} jobs are queued or running (at most "
                              f"{self.limits.max_queue}); try again when one has finished")
        mine = sum(1 for n in active if self.owner_of[n] == owner)
        if mine >= self.limits.max_per_page:
            raise UnsafeInput(f"this page already has {mine} jobs queued or running (at most "
                              f"{self.limits.max_per_page}); wait for one to finish or cancel one")

    def owns(self, owner: str) -> Callable[[str], bool] | None:
        """For :func:`~dreamcore.studio.safety.check_overrides`: whether the run folder of a name belongs to
        ``owner``; None (every run folder may be named) unless the queue is ``per_user`` and ``owner`` is set."""
        if not self.per_user or not owner:
            return None

        def owns(folder: str) -> bool:
            rec = runs.read_job(self.runs_dir / folder)
            return rec is not None and rec.get("owner", "") == owner

        return owns

    def _check_bounds(self, cfg) -> None:
        """The job's merged config, and its refinement stage's, within the server's limits (else words)."""
        check_limits(cfg, self.limits)
        if cfg.refine.config:
            check_limits(stage_config(cfg, self.runs_dir / "job"), self.limits, "the job's refinement stage")

    def resume(self, name: str, owner: str = "") -> None:
        """Queue an interrupted, cancelled or failed job again: it resumes from its checkpoint. It counts against
        the queue's limits as a new job of its own owner would."""
        rec = self._record(name, owner)
        with self.lock:
            if name in self.owner_of:
                raise DreamcoreError(f"job {name} is already {'queued' if name in self.pending else 'running'}")
            if rec.get("status") == "done":
                raise DreamcoreError(f"job {name} is done; nothing to resume")
            self._check_room(rec.get("owner", ""), locked=True)
            self._update(name, status="queued", error=None)
            self.cancelled.discard(name)
            self.pending.append(name)
            self.owner_of[name] = rec.get("owner", "")

    def cancel(self, name: str, owner: str = "") -> None:
        """A queued job leaves the queue; a running one saves its checkpoint and stops (resumable)."""
        self._record(name, owner)
        with self.lock:
            if name in self.pending:
                self.pending.remove(name)
                self.owner_of.pop(name, None)
                self._update(name, status="cancelled", error="cancelled before it started")
                return
            entry = self.running.get(name)
            if entry is None:
                raise DreamcoreError(f"job {name} is neither queued nor running")
            self.cancelled.add(name)
        entry[0].send_signal(signal.SIGTERM)  # the trainer saves its checkpoint and stops

    def position(self, name: str) -> int | None:
        """0 while running, 1.. in the queue, None otherwise."""
        with self.lock:
            if name in self.running or name in self.starting:
                return 0
            return self.pending.index(name) + 1 if name in self.pending else None

    def delete(self, name: str, owner: str = "") -> None:
        """Remove the job's run folder (its uploads in ``input/``, checkpoints and outputs with it). Refused while
        the job is queued or running (cancel it first), with ``owner`` for another owner's job, and while edits
        of it exist (:meth:`submit_edit`), naming them: an edit's checkpoint holds the edited scene only, and
        rendering, resuming or re-exporting it loads its source run again (``System.keeps_source``), so the
        source goes after its edits."""
        self._record(name, owner)
        path = self.runs_dir / name
        with self.lock:
            if name in self.owner_of:
                state = "queued" if name in self.pending else "running"
                raise DreamcoreError(f"job {name} is {state}: cancel it first, then delete it")
            edits = self.edits_of(name)
            if edits:
                raise DreamcoreError(f"job {name} is the source of {len(edits)} edit(s), which need it to be "
                                     f"rendered, resumed or exported again: {', '.join(edits)}; delete "
                                     f"{'it' if len(edits) == 1 else 'them'} first")
            # renamed first, under the lock: from here no request finds the job, and the gallery skips the folder
            doomed = self.runs_dir / f".deleting-{name}-{secrets.token_hex(4)}"
            try:
                path.rename(doomed)
            except FileNotFoundError:
                raise DreamcoreError(f"no studio job named {name!r}") from None
        shutil.rmtree(doomed, ignore_errors=True)

    def jobs(self, owner: str = "") -> list[runs.RunSummary]:
        """The gallery: the runs of ``owner`` (every run for ``owner=""``), newest first."""
        return runs.list_runs(self.runs_dir, owner=owner)

    def status(self, name: str, owner: str = "") -> dict:
        """The job's record with its live progress and queue position."""
        rec = self._record(name, owner)
        path = self.runs_dir / name
        pos = self.position(name)
        if pos is None and rec.get("status") in ("queued", "running"):
            rec["status"] = "interrupted"  # recorded by an earlier app that is gone
        prog = runs.read_progress(path, since=int(rec.get("log_from") or 0))
        return {**rec, "position": pos, "progress": prog, "validation": runs.latest_validation(path),
                "metrics": runs.read_metrics(path), "command": runs.cli_command(rec)}

    def close(self, wait_s: float = STOP_WAIT_S) -> None:
        """Stop the dispatcher; running jobs save their checkpoints and stop (resumable after a restart)."""
        self.stopping.set()
        self.thread.join(timeout=5)
        with self.lock:
            entries = list(self.running.items())
        for _, (proc, _, _) in entries:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, (proc, _, log) in entries:
            try:
                proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self._ended(name, proc.returncode, log)

    # -- the dispatcher ---------------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                ended = [(n, e) for n, e in self.running.items() if e[0].poll() is not None]
            for name, (proc, _, log) in ended:
                self._ended(name, proc.returncode, log)
            with self.lock:
                busy = {slot for _, slot, _ in self.running.values()}
                free = [s for s in range(self.slots) if s not in busy]
                starting = []
                while free and self.pending:
                    starting.append((self.pending.popleft(), free.pop(0)))
                    self.starting.add(starting[-1][0])
            for name, slot in starting:
                try:
                    self._start(name, slot)
                except Exception as e:  # noqa: BLE001 - a job that cannot start is failed, the queue goes on
                    with self.lock:
                        self.owner_of.pop(name, None)
                    try:
                        self._update(name, status="failed", error=f"could not start the job: {e}")
                    except DreamcoreError:
                        pass  # its folder is gone
                finally:
                    with self.lock:
                        self.starting.discard(name)
            self.stopping.wait(self.poll_s)

    def _start(self, name: str, slot: int) -> None:
        rec = self._record(name)
        job = _job_of(rec)
        result_path(job).unlink(missing_ok=True)  # the record of an earlier attempt is not this one's
        env = untrusted_environment(dict(os.environ))  # a page asked for it: no code, no hub, its own files only
        gpu = self.gpu_of_slot[slot]
        env["CUDA_VISIBLE_DEVICES"] = gpu if gpu is not None else env.get("CUDA_VISIBLE_DEVICES", "")
        log_txt = Path(job.dir) / "log.txt"  # this attempt's progress is what the run logs from here on
        log_from = log_txt.stat().st_size if log_txt.is_file() else 0
        log = open(Path(job.dir) / WORKER_LOG, "a")
        # run in the job's own folder (a relative path the check let through names a file of this job), and
        # with -P (Python 3.11+) that folder is not put on sys.path: no module in it can shadow dreamcore's own
        safe_path = ["-P"] if sys.version_info >= (3, 11) else []
        cmd = [sys.executable, *safe_path, "-m", "dreamcore.batch.worker", json.dumps(job.to_dict()),
               "--threads", str(self.threads)]
        proc = subprocess.Popen(cmd, env=env, cwd=job.dir, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL,
                                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None)
        self._update(name, status="running", pid=proc.pid, started=time.time(), error=None, log_from=log_from)
        with self.lock:
            self.running[name] = (proc, slot, log)

    def _ended(self, name: str, rc: int, log) -> None:
        log.close()
        with self.lock:
            cancelled = name in self.cancelled
        try:
            self._record_end(name, rc, cancelled)
        finally:
            # only once its record says how it ended is the job let go (resumed, deleted): a Delete right after
            # a Cancel would otherwise remove the folder this record is written to
            with self.lock:
                self.running.pop(name, None)
                self.owner_of.pop(name, None)
                self.cancelled.discard(name)

    def _record_end(self, name: str, rc: int, cancelled: bool) -> None:
        rec = self._record(name)
        job = _job_of(rec)
        result = read_result(job)
        if result is not None and rc in (0, 3, 4):
            status = result["status"]
            if status == "interrupted" and cancelled:
                status = "cancelled"
            self._update(name, status=status, error=result.get("error") if status == "failed" else None,
                         seconds=result.get("seconds"), pid=None)
        elif cancelled and rc == -signal.SIGTERM:  # stopped on request before it could save anything
            self._update(name, status="cancelled", error=None, pid=None)
        else:
            how = f"was killed (signal {-rc})" if rc < 0 else f"exited with status {rc}"
            self._update(name, status="failed", pid=None,
                         error=f"the job's process {how}; its checkpoint, if any, is kept and it can be resumed")

    # -- run folders --------------------------------------------------------------------------------------------
    def _record(self, name: str, owner: str = "") -> dict:
        """The job's record; refused in words for a name that is no job, and with ``owner`` for another's job."""
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
            raise DreamcoreError(f"no studio job named {name!r}")
        rec = runs.read_job(self.runs_dir / name)
        if rec is None:
            raise DreamcoreError(f"no studio job named {name!r} in {self.runs_dir}")
        if owner and rec.get("owner", "") != owner:
            raise DreamcoreError(f"job {name} belongs to another user")
        return rec

    def _update(self, name: str, **changes) -> None:
        rec = self._record(name)
        rec.update(changes)
        runs.write_job(self.runs_dir / name, rec)


def _job_of(rec: dict) -> Job:
    """The batch job a studio record describes (what its worker process runs); an edit's names its source."""
    return Job(**{k: rec[k] for k in ("name", "prompt", "seed", "config", "overrides", "dir")},
               image=rec.get("image") or "", edit=rec.get("edit") or "", source_prompt=rec.get("source_prompt") or "",
               region=rec.get("region") or "", falloff=rec.get("falloff"))


def _check_picture(path: Path, image_cfg) -> None:
    """Read and key the stored picture as the job will (its ``image`` settings, the page's overrides included),
    so that one that does not decode, or keeps no object once its background is removed, is refused now in
    words (which name no path of the server's: :class:`~dreamcore.studio.safety.PictureRefused`)."""
    from dataclasses import replace

    from dreamcore.reference_image import cut_out

    try:
        cut_out(path, replace(image_cfg, path=str(path)), what="the picture")
    except DreamcoreError as e:
        raise PictureRefused(str(e).replace(f" {str(path)!r}", "")) from None
