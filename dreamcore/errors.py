"""The one exception type users see: raised at boundaries (config, files, prompts, model loading)."""


class DreamcoreError(Exception):
    """An error caused by user input or environment, with a message meant for the user.

    The CLI prints it without a traceback and exits with status 2.
    """
