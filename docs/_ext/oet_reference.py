"""Reference pages generated from the code, so that they cannot drift from it.

* :func:`tango_interface` documents ``OETDevice`` from the class itself: every command
  (argument and result types, their descriptions, the docstring), every attribute (type,
  format, access, enum labels, description, the events it pushes) and every device property
  (type, default, description), plus the engine settings each property maps to.
* :func:`engine_settings` lists every :class:`~ska_oso_oet.procedure.config.OetConfig` field
  with its ``OET_*`` variable, device property, default and ``#:`` comment.
* :func:`rest_api` embeds the gateway's OpenAPI document and a table of its operations.

As a Sphinx extension, each generator replaces a marker line (``<!-- generated:NAME -->``) in
the page that holds it while the page is read. Run as a script it prints one of them::

    python docs/_ext/oet_reference.py tango|settings|openapi
"""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

MARKER = "<!-- generated:{} -->"


# ----- helpers --------------------------------------------------------------------------------
def _cell(text: Any) -> str:
    """Text made safe for one Markdown table cell."""
    value = " ".join(str(text if text is not None else "").split())
    return value.replace("|", "\\|") or " "


def _code(text: Any) -> str:
    value = " ".join(str(text).split()).replace("|", "\\|")
    return f"``{value}``" if "`" in value else f"`{value}`"


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _type_name(value: Any) -> str:
    return getattr(value, "name", str(value))


# ----- Tango interface ------------------------------------------------------------------------
def _event_attributes() -> tuple[set[str], set[str]]:
    """(change-event attributes, archive-event attributes) as the device declares them in
    ``init_device``: the same tuples the device uses, imported, not copied."""
    from ska_oso_oet.tango.base import LRC_ATTRIBUTES, SKA_ATTRIBUTES
    from ska_oso_oet.tango.procedures import ProcedureView

    both = {*SKA_ATTRIBUTES, *LRC_ATTRIBUTES, *ProcedureView.ATTRIBUTES, "lastEvent"}
    both.update(("scriptMessage", "activities"))
    return both | {"_lrcEvent"}, both


def tango_interface() -> str:
    """Markdown reference of the OETDevice Tango interface, read from the class."""
    import tango

    from ska_oso_oet.tango.device import PROPERTY_SETTINGS, OETDevice

    klass = OETDevice.TangoClassClass
    change, archive = _event_attributes()
    out: list[str] = [
        f"Device class `{OETDevice.__name__}`: {' '.join(OETDevice.__doc__.split())}",
        "",
    ]

    out += ["## Commands", ""]
    rows = []
    for name, (argin, argout, _) in sorted(klass.cmd_list.items()):
        doc = getattr(OETDevice, name).__doc__ or ""
        rows.append(
            [
                f"`{name}`",
                _cell(doc),
                f"{_type_name(argin[0])}: {_cell(argin[1])}",
                f"{_type_name(argout[0])}: {_cell(argout[1])}",
            ]
        )
    out += _table(["command", "description", "argument", "result"], rows)

    out += ["## Attributes", ""]
    rows = []
    for name, attr in sorted(klass.attr_list.items(), key=lambda item: item[0].lower()):
        doc = getattr(OETDevice, name).__doc__ or ""
        dtype = attr._kwargs.get("dtype") if hasattr(attr, "_kwargs") else None
        type_text = _type_name(attr.attr_type)
        if isinstance(dtype, type) and issubclass(dtype, enum.Enum):
            labels = ", ".join(f"{m.name}={m.value}" for m in dtype)
            type_text = f"DevEnum ({labels})"
        fmt = _type_name(attr.attr_format).lower()
        if attr.attr_format != tango.AttrDataFormat.SCALAR:
            fmt += f" (max {attr.dim_x})"
        access = "read-write" if attr.attr_write == tango.AttrWriteType.READ_WRITE else "read"
        if getattr(attr, "memorized", False):
            access += ", memorized"
        events = ", ".join(
            e for e, names in (("change", change), ("archive", archive)) if name in names
        )
        rows.append([f"`{name}`", type_text, fmt, access, events or "none", _cell(doc)])
    out += _table(["attribute", "type", "format", "access", "events pushed", "description"], rows)
    out += [
        "`State` and `Status` are Tango's own and push change and archive events too. Polling is",
        "not needed: every attribute above that pushes events does so itself, when it changes.",
        "",
    ]

    out += ["## Device properties", ""]
    rows = []
    for name, (dtype, doc, default, mandatory) in sorted(klass.device_property_list.items()):
        setting = PROPERTY_SETTINGS.get(name)
        rows.append(
            [
                f"`{name}`",
                _type_name(dtype),
                "mandatory"
                if mandatory
                else (_code(default) if default is not None else "engine default"),
                f"`{setting}` (`OET_{setting.upper()}`)" if setting else " ",
                _cell(doc),
            ]
        )
    out += _table(["property", "type", "default", "engine setting (variable)", "description"], rows)
    return "\n".join(out)


# ----- engine settings ------------------------------------------------------------------------
def engine_settings() -> str:
    """Markdown table of every OetConfig field: variable, property, default, comment."""
    from sphinx.pycode import ModuleAnalyzer

    from ska_oso_oet.procedure.config import ENVIRONMENT_VARIABLES, OetConfig
    from ska_oso_oet.tango.device import PROPERTY_SETTINGS

    comments = ModuleAnalyzer.for_module("ska_oso_oet.procedure.config").find_attr_docs()
    properties = {setting: prop for prop, setting in PROPERTY_SETTINGS.items()}
    defaults = OetConfig()
    data_dir = str(defaults.environments_dir.parent)
    rows = []
    for field in dataclasses.fields(OetConfig):
        default = getattr(defaults, field.name)
        if isinstance(default, tuple):
            default = ", ".join(str(v) for v in default) or "(empty)"
        # machine-dependent path defaults, written as the expressions they come from
        default = str(default).replace(data_dir, "$XDG_CACHE_HOME/ska-oso-oet")
        default = default.replace(str(Path.cwd()), "$PWD")
        doc = " ".join(comments.get(("OetConfig", field.name), []))
        prop = properties.get(field.name)
        rows.append(
            [
                f"`{field.name}`",
                f"`{ENVIRONMENT_VARIABLES[field.name]}`",
                f"`{prop}`" if prop else " ",
                _code(default),
                _cell(doc),
            ]
        )
    intro = [
        "Precedence: defaults < `OET_*` environment variables < device properties (or",
        "command-line options). `$XDG_CACHE_HOME` defaults to `~/.cache`; `$PWD` is the working",
        "directory of the process.",
        "",
    ]
    return "\n".join(
        intro + _table(["setting", "variable", "device property", "default", "meaning"], rows)
    )


# ----- REST API -------------------------------------------------------------------------------
def openapi_document() -> dict[str, Any]:
    from ska_oso_oet.rest.app import create_app
    from ska_oso_oet.rest.settings import RestSettings

    return create_app(RestSettings()).openapi()


def rest_api() -> str:
    """Markdown table of the gateway's operations and its OpenAPI document."""
    spec = openapi_document()
    rows = []
    for path, operations in spec.get("paths", {}).items():
        for method, op in operations.items():
            codes = ", ".join(sorted(op.get("responses", {})))
            rows.append([f"`{method.upper()}`", f"`{path}`", _cell(op.get("summary", "")), codes])
    out = _table(["method", "path", "summary", "responses"], rows)
    out += [
        f"OpenAPI {spec.get('openapi', '')} document of *{spec['info']['title']}* "
        f"{spec['info']['version']} (the gateway serves it at `.../openapi.json`, with Swagger UI "
        "at `.../docs`):",
        "",
        "```json",
        json.dumps(spec, indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(out)


GENERATORS: dict[str, Callable[[], str]] = {
    "tango": tango_interface,
    "settings": engine_settings,
    "openapi": rest_api,
}


# ----- Sphinx ---------------------------------------------------------------------------------
def _expand(app: Any, docname: str, source: list[str]) -> None:
    text = source[0]
    for name, generate in GENERATORS.items():
        marker = MARKER.format(name)
        if marker in text:
            text = text.replace(marker, generate())
    source[0] = text


def setup(app: Any) -> dict[str, Any]:
    app.connect("source-read", _expand)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "tango"
    if which not in GENERATORS:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(GENERATORS)}")
    print(GENERATORS[which]())
