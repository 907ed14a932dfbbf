"""The one exception type users see: raised at boundaries (config, files, prompts, model loading)."""

import errno


class DreamcoreError(Exception):
    """An error caused by user input or environment, with a message meant for the user.

    The CLI prints it without a traceback and exits with status 2.
    """


class RunInterrupted(DreamcoreError):
    """The run stopped on request (Ctrl-C, SIGTERM from a scheduler) after saving its checkpoint."""


STORAGE_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
                  errno.EROFS: "the file system is read-only", errno.EIO: "an input/output error of the storage"}


def storage_problem(e: OSError) -> str | None:
    """What a failed write's OSError says about the storage, in words; None when it is not a storage fault."""
    return STORAGE_ERRORS.get(e.errno)
