"""Engine configuration: one frozen object, built once from defaults < ``OET_*`` environment
variables < explicit settings (Tango device properties, command-line options)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


def _default_script_roots() -> tuple[Path, ...]:
    return (Path("/scripts"), Path.cwd() / "scripts")


def _default_data_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ska-oso-oet"


@dataclass(frozen=True)
class OetConfig:
    #: Name used as ``msg_src`` of the engine's own events (the Tango device name, say).
    name: str = "oet"
    subarray_id: int = 1
    #: Procedure and activity ids are ``n * id_stride + subarray_id`` (n = 0, 1, 2, ...): the
    #: last two digits name the subarray, so ids are unique across the deployment's devices
    #: (and the gateway finds a procedure's device from its id). 1 numbers them 1, 2, 3, ...
    id_stride: int = 100
    #: ``file://`` scripts must lie under one of these folders.
    script_roots: tuple[Path, ...] = field(default_factory=_default_script_roots)
    #: Script run (with ``init(subarray_id=...)``) after a stop with abort; None disables it.
    abort_script: str | None = None
    #: Number of finished procedures kept; active ones are never dropped.
    history_size: int = 10
    #: sqlite file holding procedure history; None keeps history in memory only.
    state_database: Path | None = None
    environments_dir: Path = field(default_factory=lambda: _default_data_dir() / "envs")
    git_cache_dir: Path = field(default_factory=lambda: _default_data_dir() / "git")
    #: Idle worker processes kept ready for default-environment scripts.
    warm_workers: int = 2
    #: Time a stopped script has to exit after SIGTERM before its process group gets SIGKILL.
    stop_grace_seconds: float = 3.0
    #: CPU niceness of script processes (and of the fork server): busy scripts must not
    #: starve the device server that controls them. 0 runs them at the server's priority.
    worker_nice: int = 5
    #: Modules the worker fork server imports once, so that scripts importing them load fast.
    preload_modules: tuple[str, ...] = ("tango", "pubsub")
    #: Folder of scheduling block definitions, one ``<sbd_id>.json`` each.
    sb_store: Path = field(default_factory=lambda: _default_data_dir() / "sbds")
    #: ``fnmatch`` patterns of repositories ``git://`` scripts may come from.
    allowed_repositories: tuple[str, ...] = (
        "https://gitlab.com/ska-telescope/*",
        "https://github.com/ska-telescope/*",
    )
    #: Seconds a clone/fetch/checkout may take.
    git_timeout: float = 120.0
    #: Git checkouts (one tree per commit) kept; least recently used evicted first, never one
    #: a procedure runs from. None: no limit.
    git_max_checkouts: int | None = 50
    #: Disk the git checkouts may use, in bytes (None: no limit).
    git_max_bytes: int | None = None
    #: Seconds building a script's virtualenv may take.
    env_build_timeout: float = 600.0
    #: Cached virtualenvs kept (least recently used evicted first; never one in use).
    env_max_count: int | None = 10
    #: Disk the cached virtualenvs may use, in bytes (None: no limit).
    env_max_bytes: int | None = None
    #: Extra ``pip install`` options for environments, e.g. ``--no-index --find-links /wheels``.
    pip_options: tuple[str, ...] = ()
    #: Repository of ``git://`` scripts asked for without ``git_repo`` (as the OET CLI
    #: documentation describes: SKA's ska-oso-scripting).
    default_git_repo: str = "https://gitlab.com/ska-telescope/oso/ska-oso-scripting"
    #: Branch used with the default repository when neither branch nor commit is given;
    #: None: the repository's own default branch (its HEAD).
    default_git_branch: str | None = None
    #: Environment builder: "auto" (uv when available, else virtualenv + pip), "uv" or "pip".
    env_installer: str = "auto"
    #: True: environments see the OET's own packages (pytango, pypubsub...) behind their own,
    #: like the reference OET's system site packages; False: isolated environments.
    env_inherit_packages: bool = True
    #: Poetry dependency groups installed besides ``main``.
    env_groups: tuple[str, ...] = ()
    #: Extras of a repository's project installed into its environment.
    env_extras: tuple[str, ...] = ()
    #: Address space one script process may use, in bytes (RLIMIT_AS; 0: no limit). A script
    #: past it gets MemoryError instead of pushing the host into swap or the OOM killer.
    script_memory_bytes: int = 4 * 1024**3
    #: Procedures that may exist unfinished at once per device (each holds a process).
    max_prepared: int = 16
    #: Events waiting for the device beyond which a script's output, logs and events are held
    #: back (the script is slowed, nothing is dropped).
    event_queue_limit: int = 5000
    #: Longest output line passed on, in characters; longer ones are cut, with a marker.
    max_line_length: int = 65536

    def __post_init__(self) -> None:
        checks = (
            ("history_size", self.history_size >= 1, "must be at least 1"),
            ("warm_workers", self.warm_workers >= 0, "must not be negative"),
            ("stop_grace_seconds", self.stop_grace_seconds >= 0, "must not be negative"),
            ("script_memory_bytes", self.script_memory_bytes >= 0, "must not be negative"),
            ("max_prepared", self.max_prepared >= 1, "must be at least 1"),
            ("event_queue_limit", self.event_queue_limit >= 1, "must be at least 1"),
            ("max_line_length", self.max_line_length >= 80, "must be at least 80"),
            ("id_stride", self.id_stride >= 1, "must be at least 1"),
            (
                "env_installer",
                self.env_installer in ("auto", "uv", "pip"),
                "must be auto, uv or pip",
            ),
        )
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"{setting_label(name)} {why}, got {getattr(self, name)!r}")
        if self.abort_script is not None and not self.abort_script.startswith("file:///"):
            raise ValueError(
                f"{setting_label('abort_script')} must be a file:///absolute/path.py URI, "
                f"got {self.abort_script!r}"
            )
        if self.id_stride > 1 and not 0 < self.subarray_id < self.id_stride:
            raise ValueError(
                f"subarray_id {self.subarray_id} cannot be encoded in ids of stride "
                f"{self.id_stride}: it must lie between 1 and {self.id_stride - 1}"
            )

    def next_id(self, after: int) -> int:
        """The smallest id of this subarray greater than ``after`` (see ``id_stride``)."""
        first = after + 1
        return first + (self.subarray_id - first) % self.id_stride


#: Setting name -> environment variable. Settings are the field names of OetConfig.
ENVIRONMENT_VARIABLES = {f.name: "OET_" + f.name.upper() for f in fields(OetConfig)}
#: Setting name -> Tango device property, for error messages (filled in by the Tango adapter,
#: which owns the property names).
PROPERTY_NAMES: dict[str, str] = {}


def setting_label(name: str) -> str:
    """How a user finds a setting: ``AbortScript (abort_script, OET_ABORT_SCRIPT)``, say."""
    variable = "OET_" + name.upper()
    prop = PROPERTY_NAMES.get(name)
    return f"{prop} ({name}, {variable})" if prop else f"{name} ({variable})"


def _coerce(name: str, value: Any) -> Any:
    if name == "pip_options":
        return tuple(shlex.split(value) if isinstance(value, str) else (str(v) for v in value))
    if name in ("env_groups", "env_extras"):
        if isinstance(value, str):
            value = value.replace(",", " ").split()
        return tuple(str(v).strip() for v in value if str(v).strip())
    if name == "env_inherit_packages":
        if isinstance(value, str):
            if value.strip().lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(f"env_inherit_packages must be true or false, not {value!r}")
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)
    if name in ("default_git_repo", "default_git_branch", "env_installer"):
        return str(value).strip() or None
    if name == "allowed_repositories":
        if isinstance(value, str):
            value = value.replace(",", " ").split()
        return tuple(str(v).strip() for v in value if str(v).strip())
    if name in ("env_max_count", "env_max_bytes", "git_max_checkouts", "git_max_bytes"):
        return int(value) if value not in (None, "", 0, "0") else None
    if name in ("git_timeout", "env_build_timeout"):
        return float(value)
    if name in ("script_roots", "preload_modules"):
        if isinstance(value, str):
            value = [v for v in value.replace(",", os.pathsep).split(os.pathsep) if v.strip()]
        items = [str(v).strip() for v in value]
        return tuple(Path(v) for v in items) if name == "script_roots" else tuple(items)
    if name in ("state_database", "environments_dir", "git_cache_dir", "sb_store"):
        return Path(value) if value not in (None, "") else None
    if name in (
        "history_size",
        "warm_workers",
        "subarray_id",
        "worker_nice",
        "script_memory_bytes",
        "max_prepared",
        "event_queue_limit",
        "max_line_length",
        "id_stride",
    ):
        return int(value)
    if name == "stop_grace_seconds":
        return float(value)
    if name == "abort_script":
        return str(value) if value not in (None, "") else None
    return value


def config_from_sources(
    settings: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> OetConfig:
    """Merge defaults, then ``OET_<SETTING>`` variables of ``environ``, then ``settings``.

    ``settings`` keys are :class:`OetConfig` field names; None values count as unset.
    """
    merged: dict[str, Any] = {}
    for name, variable in ENVIRONMENT_VARIABLES.items():
        if environ and environ.get(variable) not in (None, ""):
            try:
                merged[name] = _coerce(name, environ[variable])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{variable} is invalid ({environ[variable]!r}): {exc}") from None
    for name, value in (settings or {}).items():
        if name not in ENVIRONMENT_VARIABLES:
            raise ValueError(f"unknown OET setting {name!r}")
        if value is not None:
            try:
                merged[name] = _coerce(name, value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{setting_label(name)} is invalid ({value!r}): {exc}") from None
    return replace(OetConfig(), **merged)
