"""Exit statuses of ``oet``: stable, so that shell scripts can branch on them."""

SUCCESS = 0
#: An unexpected failure (a bug): a traceback is shown.
ERROR = 1
#: Bad command-line usage (unknown command, missing argument).
USAGE = 2
#: The REST server cannot be reached (not running, wrong URL).
UNREACHABLE = 3
#: The server answered 404: no such procedure or activity.
NOT_FOUND = 4
#: The server answered 409, or the procedure is not in a state that allows the request.
CONFLICT = 5
#: The server refused the request as malformed (400).
BAD_REQUEST = 6
#: The server failed (5xx, including 503 when the OET device is unavailable).
SERVER_ERROR = 7
#: ``start`` followed the procedure and it ended FAILED or STOPPED.
PROCEDURE_FAILED = 8
#: The server refused the credentials: no token, or one it does not accept (401).
UNAUTHORIZED = 9
#: The token is valid but its user lacks the role the request needs (403).
FORBIDDEN = 10
#: Interrupted with Ctrl-C where that is not the normal way to finish.
INTERRUPTED = 130
