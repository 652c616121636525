"""Argument parsing in the original client's style, and the printed layouts."""

from __future__ import annotations

import pytest

from ska_oso_oet.cli.args import normalise_flags, parse_bool, parse_value, split_script_args
from ska_oso_oet.cli.errors import CliError
from ska_oso_oet.cli.formatting import describe, event_line, procedure_table, topic_filter
from ska_oso_oet.cli.http import normalise_url


@pytest.mark.parametrize(
    ("text", "value"),
    [("3", 3), ("2.5", 2.5), ("true", True), ("False", False), ("None", None),
     ("[1, 2]", [1, 2]), ('{"a": 1}', {"a": 1}), ("hello", "hello"), ("sbi-001", "sbi-001")],
)  # fmt: skip
def test_values_are_json_where_possible(text, value):
    assert parse_value(text) == value


def test_words_pairs_and_flags():
    args, kwargs = split_script_args(["a", "--x=1", "--y", "two", "3", "--flag", "--z=[1]"])
    assert args == ["a", 3]
    assert kwargs == {"x": 1, "y": "two", "flag": True, "z": [1]}


def test_bools_and_bare_flags():
    assert parse_bool(None, "--listen", True) is True
    assert parse_bool("no", "--listen", True) is False
    with pytest.raises(CliError):
        parse_bool("2", "--listen", True)
    assert normalise_flags(["stop", "--run_abort"]) == ["stop", "--run_abort=True"]
    assert normalise_flags(["stop", "--run_abort", "False"]) == ["stop", "--run_abort", "False"]
    assert normalise_flags(["start", "--listen", "bob"]) == ["start", "--listen=True", "bob"]
    assert normalise_flags(["start", "--listen", "1"]) == ["start", "--listen=True", "1"]


def test_url_normalisation_accepts_older_settings():
    assert normalise_url("http://h:5000/api/v1.0/procedures/") == "http://h:5000/api/v1.0"
    assert normalise_url("http://h:5000/api/v1.0") == "http://h:5000/api/v1.0"


SUMMARY = {
    "id": 2,
    "uri": "http://h/api/v1.0/procedures/2",
    "script": {"script_type": "filesystem", "script_uri": "file:///s.py"},
    "script_args": {"init": {"args": [], "kwargs": {"subarray_id": 1}}},
    "history": {
        "process_states": [["CREATING", 0.0], ["READY", 1.0], ["RUNNING", 2.0], ["COMPLETE", 3.0]],
        "stacktrace": None,
    },
    "state": "COMPLETE",
}


def test_table_columns_and_times_in_utc():
    lines = procedure_table([SUMMARY]).splitlines()
    assert lines[0].split() == ["ID", "Script", "Creation", "Time", "State"]
    assert lines[2].split() == ["2", "file:///s.py", "1970-01-01", "00:00:00", "COMPLETE"]
    assert procedure_table([]).splitlines()[0].split()[0] == "ID"


def test_describe_numbers_running_and_omits_absent_sections():
    text = describe(SUMMARY)
    assert "1970-01-01 00:00:02.000000  RUNNING 1" in text
    assert "Stack Trace" not in text and "Repository" not in text


def test_event_lines():
    created = {"topic": "procedure.lifecycle.created", "procedure_id": 2, "result": SUMMARY}
    assert event_line(created) == "- Procedure 2 (file:///s.py) created on subarray 1"
    assert event_line({"topic": "user.script.announce", "msg": "hi"}) == "- Script message: hi"
    stderr = {"topic": "script.stdout", "stream": "stderr", "line": "oops"}
    assert event_line(stderr) == "- Script error output: oops"
    env = {"topic": "script.env", "procedure_id": 4, "step": "install", "line": "took 1.20 s"}
    assert event_line(env) == "- Procedure 4 preparing (install): took 1.20 s"
    odd = {"topic": "custom.topic", "seq": 1, "timestamp": 0, "msg_src": "x", "k": [1]}
    assert event_line(odd) == '- custom.topic: {"k": [1]}'
    activity = {
        "topic": "activity.lifecycle.running",
        "activity_id": 3,
        "new_state": "RUNNING",
        "result": {"activity_name": "observe", "sbd_id": "sbd-1"},
    }
    assert event_line(activity) == "- Activity 3 (observe of sbd-1) is RUNNING"
    broken = {"topic": "user.script.announce"}  # no msg: shown raw, never hidden
    assert event_line(broken) == "- user.script.announce: {}"


def test_topic_filter_prefixes():
    accept = topic_filter("user,procedure.lifecycle", "procedure.lifecycle.statechange")
    assert accept({"topic": "user.script.announce"})
    assert accept({"topic": "procedure.lifecycle.started"})
    assert not accept({"topic": "procedure.lifecycle.statechange"})
    assert not accept({"topic": "script.log"})
    assert topic_filter("all", "")({"topic": "anything"})
