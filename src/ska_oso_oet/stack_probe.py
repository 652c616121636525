"""The Tango client work of ``oet-stack``, in a short-lived process of its own.

Importing ``tango`` costs a process about 50 MiB; the ``oet-stack`` parent needs it only to see
the database answer, to register the devices and to see them answer. Doing that here keeps the
long-running parent small. The parent runs, and kills when it gives up:

    python -m ska_oso_oet.stack_probe database HOST:PORT < devices.json
        until the database answers ``get_info``; then registers the devices of the JSON object
        on standard input (``{name: {property: [values]}}``, empty: none); exit 0
    python -m ska_oso_oet.stack_probe devices HOST:PORT NAME...
        until every device answers ``ping`` and ``state``; exit 0

A registration that fails exits 1 with the reason on standard error.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence

#: Pause between attempts while the database or a device is not up yet.
POLL_SECONDS = 0.02


def main(argv: Sequence[str] | None = None) -> int:
    mode, tango_host, *names = list(sys.argv[1:] if argv is None else argv)
    import tango

    host, port = tango_host.rsplit(":", 1)
    if mode == "database":
        devices = json.loads(sys.stdin.read() or "{}")
        while True:
            try:
                db = tango.Database(host, int(port))
                db.get_info()
                break
            except tango.DevFailed:
                time.sleep(POLL_SECONDS)  # the database process is still starting
        try:
            for name, properties in devices.items():
                info = tango.DbDevInfo()
                info.name, info._class, info.server = name, *properties.pop("__class_server__")
                db.add_device(info)
                if properties:
                    db.put_device_property(name, properties)
        except tango.DevFailed as exc:
            print(f"registering the devices failed: {exc.args[0].desc}", file=sys.stderr)
            return 1
        return 0
    if mode == "devices":
        for name in names:
            proxy = None
            while True:
                try:
                    proxy = proxy or tango.DeviceProxy(f"tango://{tango_host}/{name}")
                    proxy.ping()
                    proxy.state()
                    break
                except tango.DevFailed:
                    time.sleep(POLL_SECONDS)  # the device server is still starting
        return 0
    print(f"unknown mode {mode!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
