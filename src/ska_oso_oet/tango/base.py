"""SkaDevice: what an SKA client expects of any SKA Tango device, without ska-tango-base.

It provides the SKA attributes (``adminMode``, ``healthState``, ``controlMode``,
``simulationMode``, ``testMode``, ``loggingLevel``, ``loggingTargets``, ``versionId``,
``buildState``), ``GetVersionInfo``, the long-running-command attributes of protocol v1 and v2
and ``CheckLongRunningCommandStatus``, and one *event thread* per device.

The event thread (:class:`EventThread`) is the only place where the device changes its
published values and pushes Tango events. Engine threads and Tango request threads hand it
work through a queue and never wait for it, so a slow Tango client can never stall a script,
and every change event leaves in the order its cause happened. It runs inside
``tango.EnsureOmniThread`` as pushing from a plain Python thread requires.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any

import tango
from tango import AttrWriteType, DevState, EventType
from tango.server import Device, attribute, command, device_property

from .. import __version__
from . import logs
from .lrc import PROTOCOL_VERSIONS, SPECTRUM_SIZES, LrcTracker
from .ska import (
    COMMAND_ACCEPTING_ADMIN_MODES,
    AdminMode,
    ControlMode,
    HealthState,
    LoggingLevel,
    ResultCode,
    SimulationMode,
    TaskStatus,
    TestMode,
    command_name_of,
)

_STOP = object()
#: debugpy listens once per process, whichever device asked first.
_DEBUG_LOCK = threading.Lock()
_DEBUG_LISTENING: dict[str, int] = {}
#: The event thread wakes at least this often to expire old LRC entries and check health.
TICK_SECONDS = 1.0

LRC_ATTRIBUTES = (
    "longRunningCommandsInQueue",
    "longRunningCommandIDsInQueue",
    "longRunningCommandStatus",
    "longRunningCommandInProgress",
    "longRunningCommandProgress",
    "longRunningCommandResult",
    "lrcQueue",
    "lrcExecuting",
    "lrcFinished",
)
SKA_ATTRIBUTES = (
    "State",
    "Status",
    "adminMode",
    "healthState",
    "controlMode",
    "simulationMode",
    "testMode",
    "loggingLevel",
    "loggingTargets",
)


class EventThread:
    """A queue drained by one omniORB-aware thread; ``submit`` never blocks.

    Producers that can wait (the engine's driver threads, between two script messages) call
    :meth:`wait_for_room` first: that is how a script flooding events is slowed down to the
    pace the device publishes them, with the queue (and memory) bounded."""

    def __init__(self, name: str, on_tick: Callable[[], None], logger: logging.Logger):
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._on_tick = on_tick
        self._logger = logger
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._room = threading.Condition(threading.Lock())
        self._waiting = 0
        self._room_below = 0

    def start(self) -> None:
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._queue.put((fn, args))

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def wait_for_room(self, limit: int, timeout: float) -> bool:
        """With ``limit`` tasks or more waiting, block until the queue has drained to half of
        it (at most ``timeout`` s); True if there is room.

        Draining to half, not to just below the limit, lets a blocked producer go on with a
        burst instead of trading places with this thread at every task. Never waits on the
        event thread itself (it is the one that makes room)."""
        if (
            threading.current_thread() is self._thread
            or not self._thread.is_alive()
            or self._queue.qsize() < limit
        ):
            return True
        low = max(1, limit // 2)
        with self._room:
            self._waiting += 1
            self._room_below = low
            try:
                return self._room.wait_for(lambda: self._queue.qsize() < low, timeout)
            finally:
                self._waiting -= 1

    def stop(self, timeout: float = 5.0) -> None:
        self._queue.put(_STOP)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        with tango.EnsureOmniThread():
            while True:
                try:
                    item = self._queue.get(timeout=TICK_SECONDS)
                except queue.Empty:
                    item = None
                if item is _STOP:
                    return
                try:
                    if item is None:
                        self._on_tick()
                    else:
                        fn, args = item
                        fn(*args)
                        # The queue is not empty while anybody waits (they wait for it to
                        # shrink below a positive limit), so this runs again: no lost wake-up.
                        if self._waiting and self._queue.qsize() < self._room_below:
                            with self._room:
                                self._room.notify_all()
                        if self._queue.empty():
                            self._on_tick()
                except Exception:
                    self._logger.exception("event thread task failed")


class SkaDevice(Device):
    """Base of OET devices: SKA control-model attributes, SKA logging and the SKA
    long-running-command protocol (v1 and v2)."""

    LoggingLevelDefault = device_property(
        dtype="uint16",
        default_value=int(LoggingLevel.INFO),
        doc="loggingLevel at start-up (0 OFF, 1 FATAL, 2 ERROR, 3 WARNING, 4 INFO, 5 DEBUG).",
    )
    LogFolder = device_property(
        dtype=str,
        default_value="logs",
        doc="Folder that file:: logging targets must lie in (relative: to the server's working "
        "directory); relative file names are taken inside it.",
    )
    LoggingTargetsDefault = device_property(
        dtype="DevVarStringArray",
        default_value=["tango::logger"],
        doc="loggingTargets at start-up: console::cout, file::<path>, syslog::<url>, tango::logger.",
    )
    SkaLevel = device_property(
        dtype="uint16",
        default_value=4,
        doc="SKA device level (1 element ... 4 capability/sub-element); informative, read by "
        "SKA tools that sort devices by level.",
    )
    GroupDefinitions = device_property(
        dtype="DevVarStringArray",
        default_value=[],
        doc='SKA Tango group definitions, one JSON object each ({"group_name": ..., '
        '"devices": [...], "subgroups": [...]}). Checked at start-up; an OET device '
        "commands no subordinate devices, so it forms no groups from them.",
    )
    DebugPort = device_property(
        dtype="uint16",
        default_value=5678,
        doc="Port DebugDevice opens a debugpy listener on (loopback only).",
    )

    # ----- life cycle -----------------------------------------------------------------------
    def init_device(self) -> None:
        super().init_device()
        self.set_state(DevState.INIT)
        self._closing = False
        self._admin_mode = AdminMode.ONLINE
        self._health_state = HealthState.UNKNOWN
        self._control_mode = ControlMode.REMOTE
        self._simulation_mode = SimulationMode.FALSE
        self._test_mode = TestMode.NONE
        self._published_condition: tuple[DevState, str, HealthState] | None = None
        #: Operating state last asked for by On, Off or Standby ("None" until then).
        self._commanded_state = "None"
        self._event_probe = ""
        self._init_logging()
        self.group_definitions = self._check_group_definitions()
        self._lrc_values: dict[str, Any] = {name: [] for name in (*LRC_ATTRIBUTES, "_lrcEvent")}
        self._lrc_values["longRunningCommandResult"] = ("", "")
        self._tracker = LrcTracker(self._publish_updates)
        for name in (*SKA_ATTRIBUTES, *LRC_ATTRIBUTES, "commandedState"):
            self.set_change_event(name, True, False)
            self.set_archive_event(name, True, False)
        self.set_change_event("_lrcEvent", True, False)
        self.set_change_event("eventProbe", True, False)
        self._events = EventThread(f"events {self.get_name()}", self._tick, self.logger)
        self._events.start()

    def delete_device(self) -> None:
        self._closing = True
        events = getattr(self, "_events", None)
        if events is not None:
            events.stop()
        super().delete_device()

    def _init_logging(self) -> None:
        logs.configure_process_logging(stream=sys.stderr)  # Starter and containers keep stderr
        self.logger = logging.getLogger(f"ska_oso_oet.device.{self.get_name()}")
        for flt in list(self.logger.filters):
            self.logger.removeFilter(flt)
        self.logger.addFilter(logs.DeviceTagFilter(self.get_name()))
        self._logging_level = LoggingLevel.INFO
        try:
            self._apply_logging_level(LoggingLevel(self.LoggingLevelDefault))
        except ValueError:
            self._apply_logging_level(LoggingLevel.INFO)
            self.logger.error("ignoring invalid LoggingLevelDefault %r", self.LoggingLevelDefault)
        try:
            self._apply_logging_targets(list(self.LoggingTargetsDefault or []))
        except logs.LoggingTargetError:
            self.logger.exception("ignoring invalid LoggingTargetsDefault")

    def _check_group_definitions(self) -> list[dict[str, Any]]:
        """The GroupDefinitions property decoded; a malformed entry is logged and skipped."""
        groups = []
        for text in self.GroupDefinitions or []:
            if not str(text).strip():
                continue
            try:
                group = json.loads(text)
            except ValueError as exc:
                self.logger.error("ignoring a GroupDefinitions entry that is not JSON: %s", exc)
                continue
            if not isinstance(group, dict) or not isinstance(group.get("group_name"), str):
                self.logger.error("ignoring a GroupDefinitions entry without group_name")
                continue
            groups.append(group)
        return groups

    # ----- hooks for subclasses -------------------------------------------------------------
    def condition(self) -> tuple[DevState, str, HealthState]:
        """(State, Status, healthState) the device is in now; subclasses describe their
        component. Called on the event thread."""
        if self._admin_mode not in COMMAND_ACCEPTING_ADMIN_MODES:
            return (
                DevState.DISABLE,
                f"The device is {self._admin_mode.name} (adminMode).",
                self._health_state,
            )
        return DevState.ON, "The device is ON.", HealthState.OK

    # ----- event thread ---------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the device's event thread (in order, without waiting)."""
        self._events.submit(fn, *args)

    def push(self, name: str, value: Any, archive: bool = True) -> None:
        """Push change (and archive) events for ``name``; event thread only.

        Tango drops an event nobody subscribed to anyway; asking first costs a tenth of a push
        and spares the event thread most of a burst's work (the archive events of lastEvent,
        say, when no archiver listens).
        """
        if self._closing:
            return
        if self.is_there_subscriber(name, EventType.CHANGE_EVENT):
            self.push_change_event(name, value)
        if archive and self.is_there_subscriber(name, EventType.ARCHIVE_EVENT):
            self.push_archive_event(name, value)

    def _tick(self) -> None:
        if self._closing:
            return
        self._tracker.expire()
        self.refresh_condition()

    def refresh_condition(self) -> None:
        """Recompute State, Status and healthState; push whichever changed (event thread)."""
        state, status, health = self.condition()
        previous = self._published_condition
        self._published_condition = (state, status, health)
        # healthState first: a client woken by the State event reads a consistent health.
        self._health_state = health
        if previous is None or previous[0] != state or previous[1] != status:
            self.set_state(state)
            self.set_status(status)
            if not self._closing:
                self.push_change_event("State")
                self.push_archive_event("State")
                self.push_change_event("Status")
                self.push_archive_event("Status")
        if previous is None or previous[2] != health:
            self.push("healthState", health)

    # ----- long-running commands ------------------------------------------------------------
    def _publish_updates(self, updates: list[tuple[str, Any]]) -> None:
        # Every value is stored before the first push: a v1 client that reads lrcFinished as
        # soon as it sees the final status must find the command there.
        for name, value in updates:
            self._lrc_values[name] = value
        for name, value in updates:
            self.push(name, value, archive=name != "_lrcEvent")

    def lrc_started(self, command_id: str) -> None:
        """Record (on the event thread) a command that began executing at once."""
        self._tracker.new_command(command_id, command_name_of(command_id))
        self._tracker.update(command_id, status=TaskStatus.IN_PROGRESS)

    def lrc_finish(
        self, command_id: str, status: TaskStatus, code: ResultCode, message: str
    ) -> None:
        """Complete a command (event thread): result first, then the final status."""
        self._tracker.update(command_id, status=status, result=(code, message))

    def lrc_progress(self, command_id: str, percent: int) -> None:
        """Report progress of an executing command (event thread): longRunningCommandProgress,
        lrcExecuting and _lrcEvent."""
        self._tracker.update(command_id, progress=percent)

    def lrc_status(self, command_id: str) -> TaskStatus:
        return self._tracker.status_of(command_id)

    # ----- SKA attributes -------------------------------------------------------------------
    @attribute(
        dtype=AdminMode,
        access=AttrWriteType.READ_WRITE,
        memorized=True,
        hw_memorized=True,
        doc="Admin mode. OFFLINE (or NOT_FITTED, RESERVED) disables the device: State DISABLE "
        "and every OET command is refused. ONLINE and ENGINEERING enable it.",
    )
    def adminMode(self) -> AdminMode:
        return self._admin_mode

    @adminMode.write
    def adminMode(self, value: int) -> None:
        mode = AdminMode(value)
        if mode != self._admin_mode:
            self.logger.info("adminMode %s -> %s", self._admin_mode.name, mode.name)
        self._admin_mode = mode
        self.submit(self.push, "adminMode", mode)
        self.submit(self.refresh_condition)

    @attribute(
        dtype=HealthState,
        doc="Health: OK when the engine can run scripts, DEGRADED when event delivery lags, "
        "FAILED when the engine cannot work, UNKNOWN while starting.",
    )
    def healthState(self) -> HealthState:
        return self._health_state

    @attribute(
        dtype=ControlMode,
        access=AttrWriteType.READ_WRITE,
        memorized=True,
        hw_memorized=True,
        doc="Control mode (REMOTE or LOCAL); recorded for SKA tools, not enforced.",
    )
    def controlMode(self) -> ControlMode:
        return self._control_mode

    @controlMode.write
    def controlMode(self, value: int) -> None:
        self._control_mode = ControlMode(value)
        self.submit(self.push, "controlMode", self._control_mode)

    @attribute(
        dtype=SimulationMode,
        access=AttrWriteType.READ_WRITE,
        memorized=True,
        hw_memorized=True,
        doc="Simulation mode; OET has no simulated component, so this is informative only.",
    )
    def simulationMode(self) -> SimulationMode:
        return self._simulation_mode

    @simulationMode.write
    def simulationMode(self, value: int) -> None:
        self._simulation_mode = SimulationMode(value)
        self.submit(self.push, "simulationMode", self._simulation_mode)

    @attribute(
        dtype=TestMode,
        access=AttrWriteType.READ_WRITE,
        memorized=True,
        hw_memorized=True,
        doc="Test mode (NONE or TEST); informative only.",
    )
    def testMode(self) -> TestMode:
        return self._test_mode

    @testMode.write
    def testMode(self, value: int) -> None:
        self._test_mode = TestMode(value)
        self.submit(self.push, "testMode", self._test_mode)

    @attribute(
        dtype=LoggingLevel,
        access=AttrWriteType.READ_WRITE,
        doc="Logging level of this device's Python and Tango loggers.",
    )
    def loggingLevel(self) -> LoggingLevel:
        return self._logging_level

    @loggingLevel.write
    def loggingLevel(self, value: int) -> None:
        self._apply_logging_level(LoggingLevel(value))
        self.submit(self.push, "loggingLevel", self._logging_level)

    def _apply_logging_level(self, level: LoggingLevel) -> None:
        self._logging_level = level
        self.logger.setLevel(logs.PYTHON_LEVELS[level])
        with contextlib.suppress(Exception):  # no Tango logger in some test set-ups
            self.get_logger().set_level(logs.TANGO_LEVELS[level])

    @attribute(
        dtype=("str",),
        max_dim_x=logs.MAX_TARGETS,
        access=AttrWriteType.READ_WRITE,
        doc="Extra logging targets, each console::cout, file::<path>, syslog::<url> "
        "(file:///dev/log, udp://host:514, tcp://host:601) or tango::logger.",
    )
    def loggingTargets(self) -> list[str]:
        return self._targets()

    def _targets(self) -> list[str]:
        return [str(h.name) for h in self.logger.handlers]

    @loggingTargets.write
    def loggingTargets(self, value: list[str]) -> None:
        try:
            self._apply_logging_targets(list(value))
        except logs.LoggingTargetError as exc:
            tango.Except.throw_exception("OET_INVALID_REQUEST", str(exc), "loggingTargets")
        self.submit(self.push, "loggingTargets", self._targets())

    def _apply_logging_targets(self, targets: list[str]) -> None:
        valid = logs.sanitise_targets(targets, self.get_name(), self.LogFolder or "logs")
        logs.update_handlers(self.logger, valid, self.get_logger())
        self.logger.info("Logging targets set to %s", valid)

    @attribute(dtype=str, doc="Version of the OET software running this device.")
    def versionId(self) -> str:
        return __version__

    @attribute(dtype=str, doc="Build description: package, version and Tango versions.")
    def buildState(self) -> str:
        return self._build_state()

    def _build_state(self) -> str:
        return f"ska-oso-oet, {__version__}, PyTango {tango.__version__}, cppTango {tango.constants.TgLibVers}"

    @attribute(
        dtype=str,
        doc="The operating state last commanded by On, Off or Standby: ON, OFF, STANDBY, or "
        "None before any of them.",
    )
    def commandedState(self) -> str:
        return self._commanded_state

    def set_commanded_state(self, value: str) -> None:
        """Record what On/Off/Standby asked for and push it (event thread)."""
        self._commanded_state = value
        self.push("commandedState", value)

    @attribute(
        dtype=str,
        doc="Echo of the latest ProbeEvents token, pushed as a change event: lets a client "
        "prove its event channel works without changing the device.",
    )
    def eventProbe(self) -> str:
        return self._event_probe

    @command(
        dtype_in=str,
        doc_in="A token (at most 64 characters) pushed back as a change event of eventProbe.",
    )
    def ProbeEvents(self, token: str) -> None:
        """Push ``token`` on eventProbe (through the event thread, after every event queued
        before it); changes nothing else. Read-only-safe."""
        if len(token) > 64:
            tango.Except.throw_exception(
                "OET_INVALID_REQUEST", "the probe token is longer than 64 characters", "ProbeEvents"
            )
        self.submit(self._push_probe, token)

    def _push_probe(self, token: str) -> None:
        self._event_probe = token
        self.push("eventProbe", token, archive=False)

    @command(
        dtype_out="DevUShort",
        doc_out="The port of the debugpy listener (on 127.0.0.1).",
    )
    def DebugDevice(self) -> int:
        """Open a debugpy listener in this server process (once) so a developer can attach
        a debugger (port-forward it first); returns its port."""
        try:
            import debugpy
        except ImportError:
            tango.Except.throw_exception(
                "OET_ENGINE_UNAVAILABLE", "debugpy is not installed in this server", "DebugDevice"
            )
        port = int(self.DebugPort)
        with _DEBUG_LOCK:
            if _DEBUG_LISTENING.get("port") is None:
                try:
                    debugpy.listen(("127.0.0.1", port))
                except Exception as exc:
                    tango.Except.throw_exception(
                        "OET_ENGINE_UNAVAILABLE",
                        f"cannot listen for a debugger on port {port}: {exc}",
                        "DebugDevice",
                    )
                _DEBUG_LISTENING["port"] = port
                self.logger.warning("debugpy listening on 127.0.0.1:%d", port)
            return _DEBUG_LISTENING["port"]

    @command(dtype_out=("str",), doc_out='["<DeviceClass>, <buildState>"]')
    def GetVersionInfo(self) -> list[str]:
        """Version information of the device."""
        return [f"{type(self).__name__}, {self._build_state()}"]

    # ----- LRC attributes -------------------------------------------------------------------
    @attribute(dtype=("int",), max_dim_x=2, doc="LRC client/server protocol versions: (1, 2).")
    def lrcProtocolVersions(self) -> tuple[int, int]:
        return PROTOCOL_VERSIONS

    @attribute(
        dtype=("str",),
        max_dim_x=SPECTRUM_SIZES["_lrcEvent"],
        doc="LRC protocol v2 channel: change events [command_id, JSON of status/progress/"
        "result]. Reading it returns an empty list.",
    )
    def _lrcEvent(self) -> list[str]:
        return []

    def _lrc_value(self, name: str) -> Any:
        return self._lrc_values[name]

    @attribute(
        dtype=("str",),
        max_dim_x=SPECTRUM_SIZES["longRunningCommandsInQueue"],
        doc="Names of the known commands (queued, executing and recently finished).",
    )
    def longRunningCommandsInQueue(self) -> list[str]:
        return self._lrc_value("longRunningCommandsInQueue")

    @attribute(
        dtype=("str",),
        max_dim_x=SPECTRUM_SIZES["longRunningCommandIDsInQueue"],
        doc="Ids of the known commands (queued, executing and recently finished).",
    )
    def longRunningCommandIDsInQueue(self) -> list[str]:
        return self._lrc_value("longRunningCommandIDsInQueue")

    @attribute(
        dtype=("str",),
        max_dim_x=SPECTRUM_SIZES["longRunningCommandStatus"],
        doc="Pairs id, status (STAGING, QUEUED, IN_PROGRESS, COMPLETED, FAILED, ABORTED, "
        "REJECTED) of the known commands.",
    )
    def longRunningCommandStatus(self) -> list[str]:
        return self._lrc_value("longRunningCommandStatus")

    @attribute(
        dtype=("str",),
        max_dim_x=SPECTRUM_SIZES["longRunningCommandInProgress"],
        doc="Names of the commands executing now.",
    )
    def longRunningCommandInProgress(self) -> list[str]:
        return self._lrc_value("longRunningCommandInProgress")

    @attribute(
        dtype=("str",),
        max_dim_x=SPECTRUM_SIZES["longRunningCommandProgress"],
        doc="Pairs id, progress of the executing commands.",
    )
    def longRunningCommandProgress(self) -> list[str]:
        return self._lrc_value("longRunningCommandProgress")

    @attribute(
        dtype=("str",),
        max_dim_x=2,
        doc="The latest result: (command_id, JSON [ResultCode, message]).",
    )
    def longRunningCommandResult(self) -> tuple[str, str]:
        return self._lrc_value("longRunningCommandResult")

    @attribute(
        dtype=("str",),
        max_dim_x=SPECTRUM_SIZES["lrcQueue"],
        doc="Queued commands, one JSON object each: uid, name, submitted_time.",
    )
    def lrcQueue(self) -> list[str]:
        return self._lrc_value("lrcQueue")

    @attribute(
        dtype=("str",),
        max_dim_x=SPECTRUM_SIZES["lrcExecuting"],
        doc="Executing commands, one JSON object each: uid, name, submitted_time, "
        "started_time, progress.",
    )
    def lrcExecuting(self) -> list[str]:
        return self._lrc_value("lrcExecuting")

    @attribute(
        dtype=("str",),
        max_dim_x=SPECTRUM_SIZES["lrcFinished"],
        doc="Finished commands (newest last), one JSON object each: uid, name, "
        "submitted_time, started_time, finished_time, status, result.",
    )
    def lrcFinished(self) -> list[str]:
        return self._lrc_value("lrcFinished")

    @command(
        dtype_in=str,
        dtype_out=str,
        doc_in="A command id returned by a long-running command.",
        doc_out="Its status: STAGING, QUEUED, IN_PROGRESS, COMPLETED, FAILED, ABORTED, "
        "REJECTED or NOT_FOUND.",
    )
    def CheckLongRunningCommandStatus(self, command_id: str) -> str:
        """Status of a long-running command by id."""
        return self.lrc_status(command_id).name
