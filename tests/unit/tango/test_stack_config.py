"""oet-stack configuration: devices from the deviceservers/ dsconfig and the stack's own
properties."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ska_oso_oet import stack


def test_repository_config_defines_sixteen_subarray_devices() -> None:
    devices = stack.load_devices(stack.DEFAULT_CONFIG, stack.MAX_SUBARRAYS)
    assert list(devices) == [f"oso/oet/{n}" for n in range(1, 17)]
    assert all(props["SubarrayId"] == [name.rsplit("/", 1)[1]] for name, props in devices.items())


def test_subarrays_select_the_first_devices() -> None:
    assert list(stack.load_devices(stack.DEFAULT_CONFIG, 2)) == ["oso/oet/1", "oso/oet/2"]


def test_config_without_a_device_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "one.json"
    config.write_text(
        json.dumps({"servers": {"OETDeviceServer": {"oet": {"OETDevice": {"oso/oet/1": {}}}}}})
    )
    with pytest.raises(SystemExit, match="oso/oet/2"):
        stack.load_devices(config, 2)


def test_missing_config_falls_back_to_the_same_devices(tmp_path: Path) -> None:
    devices = stack.load_devices(tmp_path / "absent.json", 3)
    assert devices["oso/oet/3"]["SubarrayId"] == ["3"]


def test_stack_adds_history_scripts_and_abort_properties(tmp_path: Path) -> None:
    options = stack.build_parser().parse_args(
        [
            "--data-dir",
            str(tmp_path),
            "--scripts",
            str(tmp_path),
            "--abort-script",
            "file:///x/abort.py",
        ]
    )
    props = stack.device_properties({"SubarrayId": ["1"]}, "oso/oet/1", options)
    assert props["StateDatabase"] == [str(tmp_path / "oso_oet_1.sqlite")]
    assert props["ScriptRoots"] == [str(tmp_path.resolve()), str(stack.EXAMPLE_SCRIPTS)]
    assert props["SBStore"] == [str(tmp_path / "sbds")]
    assert props["AbortScript"] == ["file:///x/abort.py"]
    assert props["SubarrayId"] == ["1"]


def test_registered_service_adds_its_options() -> None:
    service = stack.Service(
        "probe",
        start=lambda context: None,
        add_arguments=lambda parser: parser.add_argument("--probe-port", type=int, default=7),
    )
    stack.register_service(service)
    try:
        assert stack.build_parser().parse_args([]).probe_port == 7
    finally:
        stack.SERVICES.remove(service)


def test_abort_script_defaults_to_abort_py_of_the_script_roots(tmp_path: Path) -> None:
    options = stack.build_parser().parse_args(
        ["--data-dir", str(tmp_path), "--scripts", str(tmp_path)]
    )
    assert "AbortScript" not in stack.device_properties({}, "oso/oet/1", options)
    (tmp_path / "abort.py").write_text("def main():\n    pass\n")
    props = stack.device_properties({}, "oso/oet/1", options)
    assert props["AbortScript"] == [f"file://{(tmp_path / 'abort.py').resolve()}"]


def test_default_script_roots_are_the_engines_plus_the_example_scripts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OET_SCRIPT_ROOTS", f"{tmp_path}/a:{tmp_path}/b")
    options = stack.build_parser().parse_args(["--data-dir", str(tmp_path)])
    props = stack.device_properties({}, "oso/oet/1", options)
    assert props["ScriptRoots"] == [f"{tmp_path}/a", f"{tmp_path}/b", str(stack.EXAMPLE_SCRIPTS)]


def test_example_sbds_are_seeded_with_the_scripts_path(tmp_path: Path) -> None:
    from ska_oso_oet.activity.domain import ActivityScript

    store = tmp_path / "sbds"
    assert stack.seed_sbds(store) == ["sbd-demo-00001"]
    demo = json.loads((store / "sbd-demo-00001.json").read_text())
    observe = ActivityScript.from_sbd("observe", demo["activities"]["observe"])
    assert observe.script.script_uri == f"file://{stack.EXAMPLE_SCRIPTS / 'observe.py'}"
    assert (stack.EXAMPLE_SCRIPTS / "observe.py").is_file()
    assert "${" not in (store / "sbd-demo-00001.json").read_text()
    # an SBD already stored (e.g. replaced through the API) is kept
    demo["metadata"]["version"] = 2
    (store / "sbd-demo-00001.json").write_text(json.dumps(demo))
    assert stack.seed_sbds(store) == []
    assert json.loads((store / "sbd-demo-00001.json").read_text())["metadata"]["version"] == 2
