"""Many prompts at once: ``dreamcore batch``. Each job is an ordinary run folder under the batch folder; the
folders are the batch's only state, so the same command (or ``--resume DIR``) skips finished jobs and resumes
unfinished ones from their checkpoints. Backends: ``local`` (subprocesses) and ``ray`` (Ray Core tasks; the
optional extra ``dreamcore[ray]``, imported only by :mod:`dreamcore.batch.ray_backend`)."""
