"""Errors that reach the user as one line, never as a traceback."""


class StacklensError(Exception):
    """An error whose message is meant for the user as it is."""


class SourceError(StacklensError):
    """A source (file or trace) that cannot be read; the message names what is wrong."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
