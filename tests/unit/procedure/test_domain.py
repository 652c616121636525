"""Request parsing, transitions and summaries of the procedure domain."""

import pytest

from ska_oso_oet.procedure.domain import (
    FileSystemScript,
    FunctionArgs,
    GitScript,
    PrepareRequest,
    Procedure,
    ProcedureState,
    parse_script,
    parse_script_args,
)
from ska_oso_oet.procedure.errors import InvalidRequest


def test_filesystem_and_git_scripts_parse():
    assert parse_script({"script_type": "filesystem", "script_uri": "file:///s/a.py"}) == (
        FileSystemScript("file:///s/a.py")
    )
    git = parse_script(
        {
            "script_type": "git",
            "script_uri": "git://scripts/obs.py",
            "git_args": {"git_repo": "https://example.org/repo.git", "git_branch": "dev"},
            "create_env": True,
        }
    )
    assert isinstance(git, GitScript)
    assert git.git_args.git_branch == "dev" and git.create_env is True
    assert git.to_dict()["git_args"]["git_commit"] is None


def test_git_repo_may_be_left_to_the_engine_default():
    git = parse_script({"script_uri": "git://scripts/obs.py"})
    assert isinstance(git, GitScript) and git.git_args.git_repo == ""


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ({"script_type": "filesystem", "script_uri": "relative.py"}, "must start with file://"),
        ({"script_type": "filesystem", "script_uri": "file://relative.py"}, "absolute path"),
        (
            {"script_type": "git", "script_uri": "git://x.py", "git_args": {"git_repo": 3}},
            "git_args.git_repo",
        ),
        ({"script_type": "git", "script_uri": "git://x.py", "git_args": "x"}, "git_args must be"),
        ({"script_type": "ftp", "script_uri": "ftp://x.py"}, "unknown script_type"),
        ({"script_type": "filesystem"}, "script_uri is required"),
        ([1, 2], "must be an object"),
    ],
)
def test_bad_scripts_are_refused_with_the_reason(script, message):
    with pytest.raises(InvalidRequest, match=message):
        parse_script(script)


def test_run_is_an_alias_of_main_and_unknown_functions_are_refused():
    assert parse_script_args({"run": {"args": [1], "kwargs": {"a": 2}}}) == {
        "main": FunctionArgs((1,), {"a": 2})
    }
    with pytest.raises(InvalidRequest, match="unknown function 'teardown'"):
        parse_script_args({"teardown": {}})
    with pytest.raises(InvalidRequest, match="args must be a list"):
        parse_script_args({"init": {"args": "x"}})
    with pytest.raises(InvalidRequest, match="unknown keys"):
        parse_script_args({"init": {"argz": []}})


def test_prepare_request_accepts_current_and_older_bodies():
    current = PrepareRequest.from_dict(
        {
            "script": {"script_type": "filesystem", "script_uri": "file:///s/a.py"},
            "script_args": {"init": {"args": [], "kwargs": {"subarray_id": 1}}},
        },
        command_id="1_2_Prepare",
    )
    older = PrepareRequest.from_dict(
        {"script_uri": "file:///s/a.py", "script_args": {"init": {"kwargs": {"subarray_id": 1}}}},
        command_id="1_2_Prepare",
    )
    assert current == older
    with pytest.raises(InvalidRequest, match="given when starting"):
        PrepareRequest.from_dict({"script_uri": "file:///s/a.py", "script_args": {"main": {}}})
    with pytest.raises(InvalidRequest, match="needs 'script'"):
        PrepareRequest.from_dict({"scrpt": {}})


def test_illegal_transitions_raise_and_summary_round_trips():
    procedure = Procedure.new(5, PrepareRequest(FileSystemScript("file:///s/a.py")))
    with pytest.raises(ValueError, match="CREATING -> RUNNING"):
        procedure.record(ProcedureState.RUNNING)
    for state in ("IDLE", "LOADING", "IDLE", "READY", "RUNNING", "COMPLETE"):
        procedure.record(ProcedureState(state))
    with pytest.raises(ValueError):
        procedure.record(ProcedureState.STOPPED)
    summary = procedure.summary()
    assert summary["state"] == "COMPLETE"
    assert summary["history"]["process_states"][0][0] == "CREATING"
    assert Procedure.from_summary(summary).summary() == summary
