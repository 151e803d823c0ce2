"""Errors a user can cause: the CLI prints them as one line, HTTP answers them as 4xx."""


class WatchdogError(Exception):
    """A user-facing error with a one-line message."""

    status_code: int = 400


class ConfigError(WatchdogError):
    """The configuration is invalid; `lines` holds one `dotted.key: problem` line per fault."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


class NotFoundError(WatchdogError):
    status_code = 404


class ModelRejectedError(WatchdogError):
    """A model file or card that cannot be served; the active model is untouched."""

    status_code = 422


class ConflictError(WatchdogError):
    status_code = 409
