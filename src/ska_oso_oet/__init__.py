"""SKA Observation Execution Tool: runs Python observing scripts on telescope subarrays."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ska-oso-oet")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+unknown"
