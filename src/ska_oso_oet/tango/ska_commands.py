"""The SKABaseDevice commands On, Off, Standby, Reset and AbortCommands, for a script runner.

A mixin of :class:`~.device.OETDevice` (it uses the device's engine and helpers). What each
command means for an OET device (docs/tango.md lists them with the rest of the interface):

* ``Off``: stop every procedure that has not finished (running, ready or loading; no abort
  script) and run no new script until ``On``: State OFF. Completes when all of them have
  stopped, with their summaries.
* ``Standby``: run no new script until ``On``, but let a running procedure finish: State
  STANDBY. Completes at once.
* ``On``: accept scripts again (from OFF or STANDBY; a no-op when ON). Completes at once.
* ``Reset``: in FAULT, rebuild the script engine (and the server's worker fork server when it
  is the one that died), keeping the procedure history; completes when the engine works again
  (FAILED with the reason otherwise). Outside FAULT there is nothing to reset: it completes at
  once and changes nothing (a running script is never touched).
* ``AbortCommands``: the deprecated name of ``Abort``.

All are long-running commands (``([ResultCode.STARTED], [command_id])``, outcome on
``_lrcEvent`` and ``longRunningCommandResult``), as in ska-tango-base. On/Off/Standby/Reset are
refused with ``DevFailed`` where ska-tango-base's ``is_<Command>_allowed`` refuses them: in
DISABLE (``OET_DEVICE_OFFLINE``) and, for On/Off/Standby, in FAULT (``API_CommandNotAllowed``:
send Reset first). ``commandedState`` records what On/Off/Standby last asked for.
"""

from __future__ import annotations

import threading
from typing import Any

from tango import DevState
from tango.server import command

from ..procedure.errors import OetError
from ..vocabulary import FINAL_STATES
from . import runtime
from .ska import COMMAND_ACCEPTING_ADMIN_MODES, ResultCode, TaskStatus, generate_command_id

_LRC_REPLY = "DevVarLongStringArray"


class SkaCommands:
    """On, Off, Standby, Reset, AbortCommands; mixed into :class:`~.device.OETDevice` only."""

    def _check_power_allowed(self, origin: str) -> None:
        if self._admin_mode not in COMMAND_ACCEPTING_ADMIN_MODES:
            self._fail(
                "OET_DEVICE_OFFLINE",
                f"{self.get_name()} is {self._admin_mode.name} (adminMode); set adminMode to "
                "ONLINE or ENGINEERING first",
                origin,
            )
        if self._in_fault():
            self._fail(
                "API_CommandNotAllowed",
                f"{origin} is not allowed in FAULT ({self._service_error or 'engine failed'}); "
                "send Reset first",
                origin,
            )

    def _in_fault(self) -> bool:
        return self._service is None or not self._service.healthy

    def _set_power(self, state: DevState) -> None:
        self._power = state
        self.submit(self.set_commanded_state, state.name)
        self.submit(self.refresh_condition)

    @command(
        dtype_out=_LRC_REPLY,
        doc_out="([ResultCode.STARTED], [command_id]); completes at once.",
    )
    def On(self) -> list[Any]:
        """Accept scripts again after Off or Standby (State ON, or RUNNING while one runs)."""
        self._check_power_allowed("On")
        command_id = generate_command_id("On")
        with self._power_lock:
            self._set_power(DevState.ON)
        return self._finish_now(command_id, ResultCode.OK, f"{self.get_name()} is ON")

    @command(
        dtype_out=_LRC_REPLY,
        doc_out="([ResultCode.STARTED], [command_id]); completes at once.",
    )
    def Standby(self) -> list[Any]:
        """Start no new script until On; a running procedure runs to its end."""
        self._check_power_allowed("Standby")
        command_id = generate_command_id("Standby")
        with self._power_lock:
            self._set_power(DevState.STANDBY)
        return self._finish_now(
            command_id, ResultCode.OK, f"{self.get_name()} is in STANDBY: no new script starts"
        )

    @command(
        dtype_out=_LRC_REPLY,
        doc_out="([ResultCode.STARTED], [command_id]); completes when every procedure it "
        "stopped has stopped, with their summaries (a JSON list).",
    )
    def Off(self) -> list[Any]:
        """Stop every unfinished procedure (no abort script) and run no script until On."""
        self._check_power_allowed("Off")
        command_id = generate_command_id("Off")
        service = self._service
        stopped: list[int] = []
        with self._power_lock:  # no Prepare/Start can slip in between
            self._set_power(DevState.OFF)
            active = [s["id"] for s in service.summaries() if s["state"] not in FINAL_STATES]
        for pid in active:
            try:
                service.stop(pid)
            except OetError:
                continue  # it finished in the meantime
            stopped.append(pid)
        if not stopped:
            return self._finish_now(command_id, ResultCode.OK, "[]")
        self.logger.info("Off: stopping procedures %s", stopped)
        return self._begin(command_id, "StopAll", stopped[0], stopped[1:])

    @command(
        dtype_out=_LRC_REPLY,
        doc_out="([ResultCode.STARTED], [command_id]); in FAULT completes when the engine "
        "works again; otherwise at once, changing nothing.",
    )
    def Reset(self) -> list[Any]:
        """Recover from FAULT: rebuild the script engine (the history is kept)."""
        if self._admin_mode not in COMMAND_ACCEPTING_ADMIN_MODES:
            self._check_power_allowed("Reset")
        command_id = generate_command_id("Reset")
        if not self._in_fault():
            return self._finish_now(
                command_id, ResultCode.OK, "nothing to reset: the script engine works"
            )
        if not self._reset_lock.acquire(blocking=False):
            return [[int(ResultCode.REJECTED)], ["OET_STATE_CONFLICT: a Reset is in progress"]]
        self.submit(self.lrc_started, command_id)
        threading.Thread(
            target=self._rebuild, args=(command_id,), name="oet-reset", daemon=True
        ).start()
        return [[int(ResultCode.STARTED)], [command_id]]

    def _rebuild(self, command_id: str) -> None:
        """Reset's work, on a thread of its own (it may take seconds)."""
        try:
            self.logger.warning("Reset: rebuilding the script engine (%s)", self._service_error)
            self._close_engine()
            runtime.renew_launcher()
            self._build_engine()
            if self._in_fault():
                reason = self._service_error or "the script engine cannot start worker processes"
                self.submit(
                    self.lrc_finish,
                    command_id,
                    TaskStatus.FAILED,
                    ResultCode.FAILED,
                    f"Reset could not recover the engine: {reason}",
                )
            else:
                self.logger.info("Reset: the script engine works again")
                self.submit(
                    self.lrc_finish,
                    command_id,
                    TaskStatus.COMPLETED,
                    ResultCode.OK,
                    "the script engine works again",
                )
        except Exception as exc:
            self.logger.exception("Reset failed")
            self.submit(
                self.lrc_finish, command_id, TaskStatus.FAILED, ResultCode.FAILED, f"Reset: {exc}"
            )
        finally:
            self.submit(self._refresh_procedures)
            self.submit(self._refresh_activities)
            self._reset_lock.release()

    @command(
        dtype_out=_LRC_REPLY,
        doc_out="As Abort.",
    )
    def AbortCommands(self) -> list[Any]:
        """Deprecated SKA name of Abort (ska-tango-base keeps it for old clients)."""
        self.logger.warning("AbortCommands is deprecated: use Abort")
        return self._lrc_reply("AbortCommands", self._abort, "AbortCommands")
