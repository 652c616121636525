"""The engine's expected failures. Each has a stable ``code`` that adapters map to their own
vocabulary (a Tango ``DevFailed`` reason, an HTTP status), and a readable message."""


class OetError(Exception):
    """Base of every expected engine failure."""

    code = "OET_ERROR"


class InvalidRequest(OetError):
    """The request itself is wrong: malformed, unknown keys, a script outside the roots."""

    code = "OET_INVALID_REQUEST"


class ProcedureNotFound(OetError):
    """No procedure with that id (or it fell out of the history window)."""

    code = "OET_NOT_FOUND"

    def __init__(self, procedure_id: object):
        super().__init__(f"No information available for PID={procedure_id}")
        self.procedure_id = procedure_id


class StateConflict(OetError):
    """The request is valid but not in the procedure's or the service's current state."""

    code = "OET_STATE_CONFLICT"


class EngineUnavailable(OetError):
    """The engine cannot work (e.g. worker processes cannot be started)."""

    code = "OET_ENGINE_UNAVAILABLE"


class LimitExceeded(OetError):
    """A configured limit would be passed (e.g. too many unfinished procedures)."""

    code = "OET_LIMIT"
