"""The shared vocabulary: its strings are the DESIGN's, and every layer uses this one copy."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ska_oso_oet import vocabulary as v
from ska_oso_oet.procedure import domain
from ska_oso_oet.tango import ska

#: DESIGN §3, exactly as written there, plus PAUSED (issue 15: operator pause), last so that
#: the Tango enum values of the older states did not change.
DESIGN_STATES = [
    "UNKNOWN",
    "IDLE",
    "CREATING",
    "PREP_ENV",
    "LOADING",
    "INITIALISING",
    "READY",
    "RUNNING",
    "COMPLETE",
    "STOPPED",
    "FAILED",
    "PAUSED",
]


def test_procedure_states_are_the_documented_strings() -> None:
    assert [s.value for s in v.ProcedureState] == DESIGN_STATES
    assert all(s.name == s.value for s in v.ProcedureState)


def test_state_sets_partition_the_states() -> None:
    S = v.ProcedureState
    assert {S.COMPLETE, S.STOPPED, S.FAILED} == v.FINAL_STATES
    assert v.ACTIVE_STATES | v.FINAL_STATES | {S.UNKNOWN} == set(S)
    assert not v.ACTIVE_STATES & v.FINAL_STATES
    assert v.PREPARING_STATES < v.ACTIVE_STATES < set(S)
    assert v.PREPARING_STATES | {S.READY} == v.STARTABLE_STATES
    assert [s for s in S if s.is_final] == [S.COMPLETE, S.STOPPED, S.FAILED]


def test_states_match_plain_strings_from_the_wire() -> None:
    """Clients compare JSON strings against these sets: a StrEnum member must hash like its value."""
    assert "COMPLETE" in v.FINAL_STATES
    assert "READY" in v.STARTABLE_STATES
    assert "RUNNING" not in v.FINAL_STATES
    assert {"FAILED", "IDLE"} & v.FINAL_STATES == {"FAILED"}


def test_engine_and_device_use_the_same_objects() -> None:
    assert domain.ProcedureState is v.ProcedureState
    for name in ("AdminMode", "HealthState", "ResultCode", "TaskStatus"):
        assert getattr(ska, name) is getattr(v, name)
    assert ska.COMMAND_ACCEPTING_ADMIN_MODES is v.COMMAND_ACCEPTING_ADMIN_MODES


def test_gateway_labels_come_from_the_vocabulary() -> None:
    from ska_oso_oet.rest import metrics, monitor, schemas

    assert tuple(DESIGN_STATES) == metrics.PROCEDURE_STATES
    assert metrics.ADMIN_MODES == ("ONLINE", "OFFLINE", "ENGINEERING", "NOT_FITTED", "RESERVED")
    assert metrics.HEALTH_STATES == ("OK", "DEGRADED", "FAILED", "UNKNOWN")
    assert frozenset({"ONLINE", "ENGINEERING"}) == monitor.USABLE_ADMIN_MODES
    for state in DESIGN_STATES:
        assert schemas.UpdateProcedureRequest(state=state).state == state
    with pytest.raises(ValueError, match="state"):
        schemas.UpdateProcedureRequest(state="SLEEPING")


@pytest.mark.parametrize(
    ("value", "label"),
    [(0, "ONLINE"), (2, "ENGINEERING"), (4, "RESERVED"), (9, "9"), (None, None)],
)
def test_label_of_names_known_values_and_keeps_unknown_ones(value, label) -> None:
    assert v.label_of(v.AdminMode, value) == label


def test_result_code_sets() -> None:
    R = v.ResultCode
    assert {R.OK, R.STARTED, R.QUEUED} == v.ACCEPTED_RESULT_CODES
    assert {R.REJECTED, R.NOT_ALLOWED} == v.REFUSED_RESULT_CODES
    assert {t.name for t in v.TaskStatus if t.is_final} == {
        "ABORTED",
        "COMPLETED",
        "REJECTED",
        "FAILED",
    }


def test_the_vocabulary_needs_only_the_standard_library() -> None:
    """The CLI and the gateway import it: it must not drag in the engine, Tango or HTTP."""
    code = (
        "import sys; import ska_oso_oet.vocabulary; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'tango', 'fastapi', 'httpx', 'pydantic', 'typer', 'pubsub', 'jsonpickle'} "
        "or m.startswith(('ska_oso_oet.procedure', 'ska_oso_oet.tango', 'ska_oso_oet.rest'))); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_state_has_a_led_on_the_device() -> None:
    from ska_oso_oet.tango.device import PROCEDURE_LEDS

    assert set(PROCEDURE_LEDS) == set(v.ProcedureState)
    assert str(PROCEDURE_LEDS["FAILED"]) == "FAULT"  # looked up with the strings of the views
