"""The error raised for bad user input or an impossible request."""


class CycleULMError(ValueError):
    """Bad input or an impossible request, with a message that says what to do.

    The command line prints the message without a traceback and napari shows
    it as a notification, so the message must name what was wrong and how to
    fix it.
    """
