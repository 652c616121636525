"""The activity commands of OETDevice (a mixin: the device class collects its commands).

* ``RunActivity(json)``: run an activity of a stored scheduling block definition (SBD); a
  long-running command completing when the activity's script ends (at PREPARED with
  ``prepare_only``), with the activity summary, or FAILED with the reason.
* ``GetActivity(id)``: one activity summary (by id or by the RunActivity command id).
* ``AddSbd(json)`` / ``GetSbd(sbd_id)``: store and read SBD documents (the REST gateway's
  ``POST /sbds`` and ``GET /sbds/{sbd_id}``).

Bad requests are ``DevFailed`` (an unknown activity name, a malformed SBD or arguments are
``OET_INVALID_REQUEST``); a well-formed RunActivity the engine cannot accept (an unknown SBD,
``OET_NOT_FOUND``; a procedure already running) is a REJECTED reply, as for the other
long-running commands (see :mod:`.device`); GetActivity, AddSbd and GetSbd raise DevFailed.
A refused request leaves nothing behind (no activity, no procedure, no command id).
"""

from __future__ import annotations

import json
from typing import Any

from tango.server import command

from ..activity.domain import ActivityRequest
from ..activity.service import ActivityService
from ..events import dumps
from ..jsonlimits import MAX_JSON_DEPTH, json_depth_exceeds
from .ska import ResultCode, generate_command_id

#: Keys of the RunActivity argument (as the body of the REST POST /activities).
RUN_ACTIVITY_KEYS = {"activity_name", "sbd_id", "script_args", "prepare_only", "create_env"}
_LRC_REPLY = "DevVarLongStringArray"
#: Largest AddSbd argument (the device's own limit for other commands is the same).
MAX_ARGUMENT_CHARS = 1024 * 1024


class ActivityCommands:
    """Activity commands and helpers; mixed into :class:`~.device.OETDevice` only."""

    def _refresh_activities(self) -> None:
        summaries = self._activity_service.summaries() if self._activity_service else []
        value = self._activity_view.update(summaries)
        if value is not None:
            self.push("activities", value)

    def _complete_activities(self) -> None:
        for command_id, status, code, message in self._activity_view.completions(self._lookup):
            self.lrc_finish(command_id, status, code, message)

    def _activities(self, origin: str, new_script: bool = False) -> ActivityService:
        """The activity service, if commands are allowed now (raises DevFailed otherwise)."""
        self._engine(origin, new_script=new_script)
        if self._activity_service is None:
            self._fail("OET_ENGINE_UNAVAILABLE", self._activity_error or "no activities", origin)
        return self._activity_service

    @command(
        dtype_in=str,
        dtype_out=_LRC_REPLY,
        doc_in='{"activity_name": "observe", "sbd_id": "sbd-...", "script_args": {"init"|"main": '
        '{"args": [], "kwargs": {}}}, "prepare_only": false, "create_env": false}',
        doc_out="([ResultCode.STARTED], [command_id]); completes when the activity's script "
        "ends (with prepare_only: when it is PREPARED).",
    )
    def RunActivity(self, argin: str) -> list[Any]:
        """Run an activity of a stored SBD: its script, with the SBD's arguments merged with
        script_args; the activity exists (REQUESTED) when this returns."""
        return self._lrc_reply("RunActivity", self._run_activity, argin)

    def _run_activity(self, argin: str) -> list[Any]:
        body = self._decode(argin, "RunActivity", RUN_ACTIVITY_KEYS)
        user = self._requester(body, "RunActivity")
        request = self._call("RunActivity", ActivityRequest.from_dict, body)
        command_id = generate_command_id("RunActivity")
        with self._power_lock:
            activities = self._activities("RunActivity", new_script=True)
            self._accept("RunActivity", activities.run, request, command_id, user)
        self.submit(self.lrc_started, command_id)
        self.submit(self._activity_view.track, command_id, request.prepare_only)
        self.submit(self._complete_activities)
        return [[int(ResultCode.STARTED)], [command_id]]

    @command(
        dtype_in=str,
        dtype_out=str,
        doc_in="An activity id (e.g. 3) or the RunActivity command id that created it.",
        doc_out="The activity summary as JSON.",
    )
    def GetActivity(self, argin: str) -> str:
        """One activity's summary."""
        text = (argin or "").strip()
        if self._activity_service is None:
            self._fail(
                "OET_ENGINE_UNAVAILABLE", self._activity_error or "no activities", "GetActivity"
            )
        if not text.isdigit():
            found = self._activity_view.activity_of(text)
            if found is None:
                found = next(
                    (
                        s["id"]
                        for s in self._activity_service.summaries()
                        if s.get("command_id") == text
                    ),
                    None,
                )
            if found is None:
                self._fail("OET_NOT_FOUND", f"no activity for {text!r}", "GetActivity")
            text = str(found)
        return dumps(self._call("GetActivity", self._activity_service.get, int(text)))

    @command(
        dtype_in=str,
        dtype_out=str,
        doc_in='An SBD document: {"sbd_id", "activities": {name: {"kind": "filesystem"|"git", '
        '"path", ["repo", "branch", "commit"], "function_args"}}, ...}',
        doc_out="The stored SBD as JSON.",
    )
    def AddSbd(self, argin: str) -> str:
        """Store (or replace) a scheduling block definition for RunActivity; other fields are
        kept untouched and given to the activity's script."""
        activities = self._activities("AddSbd")
        text = argin or ""
        if len(text) > MAX_ARGUMENT_CHARS or json_depth_exceeds(text, MAX_JSON_DEPTH):
            self._fail(
                "OET_INVALID_REQUEST",
                f"an SBD must be at most {MAX_ARGUMENT_CHARS} characters of JSON nested at "
                f"most {MAX_JSON_DEPTH} levels deep",
                "AddSbd",
            )
        try:
            document = json.loads(text)
        except (ValueError, RecursionError) as exc:
            self._fail("OET_INVALID_REQUEST", f"argument is not valid JSON: {exc}", "AddSbd")
        stored = self._call("AddSbd", activities.sbds.add, document)
        self.logger.info("stored SBD %s", stored["sbd_id"])
        return dumps(stored)

    @command(dtype_in=str, dtype_out=str, doc_in="An sbd_id.", doc_out="The SBD as JSON.")
    def GetSbd(self, argin: str) -> str:
        """One stored scheduling block definition."""
        if self._activity_service is None:
            self._fail("OET_ENGINE_UNAVAILABLE", self._activity_error or "no activities", "GetSbd")
        return dumps(self._call("GetSbd", self._activity_service.sbds.get, (argin or "").strip()))
