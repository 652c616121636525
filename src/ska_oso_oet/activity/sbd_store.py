"""Where scheduling block definitions live. The embedded default is a folder of
``<sbd_id>.json`` files; anything with ``get``/``add``/``ids`` can stand in for it."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from ..procedure.errors import InvalidRequest, OetError
from .domain import SBD_ID_PATTERN, validate_sbd


class SbdNotFound(OetError):
    code = "OET_NOT_FOUND"

    def __init__(self, sbd_id: str):
        super().__init__(f"No SBD with sbd_id={sbd_id}")


class SbdStore(Protocol):
    def get(self, sbd_id: str) -> dict[str, Any]: ...

    def add(self, document: Any) -> dict[str, Any]: ...

    def ids(self) -> list[str]: ...


class DirectorySbdStore:
    """SBDs as JSON files in one folder (writes are atomic renames)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, sbd_id: str) -> Path:
        if not SBD_ID_PATTERN.match(sbd_id):
            raise SbdNotFound(sbd_id)
        return self.directory / f"{sbd_id}.json"

    def get(self, sbd_id: str) -> dict[str, Any]:
        try:
            text = self._path(sbd_id).read_text()
        except FileNotFoundError:
            raise SbdNotFound(sbd_id) from None
        try:
            return validate_sbd(json.loads(text))
        except (json.JSONDecodeError, InvalidRequest) as exc:
            raise InvalidRequest(f"stored SBD {sbd_id} is malformed: {exc}") from None

    def add(self, document: Any) -> dict[str, Any]:
        sbd = validate_sbd(document)
        target = self._path(sbd["sbd_id"])
        fd, temporary = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        with os.fdopen(fd, "w") as stream:
            json.dump(sbd, stream, indent=2)
        os.replace(temporary, target)
        return sbd

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob("*.json"))
