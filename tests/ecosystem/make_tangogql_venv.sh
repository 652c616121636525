#!/usr/bin/env bash
# Creates the virtualenv that runs Taranta's backend, tangogql, for tests/ecosystem.
#
# tangogql pins ariadne 0.23, which needs starlette < 1.0 while the gateway's FastAPI needs
# starlette >= 1.6, so tangogql cannot share the project's virtualenv. It runs as its own
# service anyway (as it does beside Taranta), from this separate virtualenv:
#
#     tests/ecosystem/make_tangogql_venv.sh [DIR]     # DIR default: .venv/ecosystem-tangogql
#
# The tests find it at $OET_TANGOGQL_VENV or the default DIR, and skip when it is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR="${1:-${OET_TANGOGQL_VENV:-.venv/ecosystem-tangogql}}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$DIR/bin/python" ]; then
    "$PYTHON" -m venv "$DIR"
fi
"$DIR/bin/python" -m pip install --quiet --disable-pip-version-check "tangogql>=2.3,<3"
"$DIR/bin/python" -c "import tangogql.main, websockets" && echo "tangogql ready in $DIR"
