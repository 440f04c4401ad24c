"""One exception module for skull and host: a single base error, each class mixing in a builtin.

Messages are lowercase, name the thing that is wrong, and say what to do.
"""


class SkullError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(SkullError, ValueError):
    """A configuration file or option holds a value that cannot be used."""


class ProtocolError(SkullError, ValueError):
    """A wire message is malformed; ``code`` is the protocol error code sent back."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class AudioFormatError(SkullError, ValueError):
    """Audio data is in a format that cannot be read or converted."""


class DeviceError(SkullError, RuntimeError):
    """A hardware device (camera, microphone, speaker, servo) is missing, busy or failing."""


class BackendError(SkullError, RuntimeError):
    """A speech, vision, reply or voice backend failed; ``stage`` names which."""

    def __init__(self, stage: str, message: str, retryable: bool = False):
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.retryable = retryable
        """True when asking again may succeed (server down, dropped connection, 5xx);
        False when the same request would fail the same way (bad request, wrong model)."""


class ControlError(SkullError, ValueError):
    """An operator's control (the host's dashboard) cannot be carried out: no such skull, a skull
    that takes no controls, an empty line."""
