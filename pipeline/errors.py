"""The one exception type that the command line turns into a clear message."""


class PipelineError(Exception):
    """A problem the user can fix (bad input file, missing data, bad option).

    The command line prints its message, without a traceback, and exits with status 2.
    The message names the file and says what is wrong with it.
    """
