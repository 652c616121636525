"""Which classes OETDeviceServer runs: OETGroups beside OETDevice where it can be declared."""

from __future__ import annotations

from ska_oso_oet.tango.device import OETDevice
from ska_oso_oet.tango.groups import OETGroups
from ska_oso_oet.tango.server import device_classes


def test_a_database_server_hosts_both_classes():
    assert device_classes(["OETDeviceServer", "oet"]) == (OETDevice, OETGroups)


def test_without_a_database_only_oet_devices_run():
    assert device_classes(["OETDeviceServer", "x", "-nodb", "-dlist", "oso/oet/5"]) == (OETDevice,)


def test_a_file_database_hosts_oet_groups_only_when_it_declares_one(tmp_path):
    plain = tmp_path / "plain.db"
    plain.write_text("OETDeviceServer/t/DEVICE/OETDevice: oso/oet/1\n")
    assert device_classes(["OETDeviceServer", "t", f"-file={plain}"]) == (OETDevice,)
    both = tmp_path / "both.db"
    both.write_text(
        "OETDeviceServer/t/DEVICE/OETDevice: oso/oet/1\n"
        "OETDeviceServer/t/DEVICE/OETGroups: oso/oet/groups\n"
    )
    assert device_classes(["OETDeviceServer", "t", f"-file={both}"]) == (OETDevice, OETGroups)
