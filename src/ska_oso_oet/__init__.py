"""SKA Observation Execution Tool: runs Python observing scripts on telescope subarrays."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    # ``__version__`` on first use: importlib.metadata costs every process that imports the
    # package (oet-stack, its probes, the device server, each script worker) tens of ms.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("ska-oso-oet")
        except PackageNotFoundError:  # running from a source tree
            value = "0.0.0+unknown"
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
