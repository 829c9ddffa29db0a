#!/usr/bin/env bash
# Installs the Python SDK with its test dependencies into the repository's .venv
# (`pip install -e clients/python[test]`), for crates/ferry/tests/sdk_python.rs.
# Idempotent: does nothing when .venv already imports the SDK from this checkout with
# its dependencies (httpx, aiohttp, sniffio) and pytest. Creates .venv with `python3 -m venv` when it does not exist.
set -euo pipefail
cd "$(dirname "$0")/../.."
sdk="$PWD/clients/python"

if [[ ! -x .venv/bin/python ]]; then
    echo "creating .venv" >&2
    python3 -m venv .venv
fi

if .venv/bin/python - "$sdk" <<'PY' 2>/dev/null; then
import os, sys
import aiohttp, httpx, pytest, sniffio, ferry  # noqa: F401
# Installed, and from this checkout (an editable install of another clone does not count).
sys.exit(0 if os.path.realpath(os.path.dirname(ferry.__file__)) == os.path.realpath(os.path.join(sys.argv[1], "ferry")) else 1)
PY
    exit 0
fi

echo "installing the Python SDK into .venv (pip install -e clients/python[test])" >&2
.venv/bin/pip install --quiet --disable-pip-version-check -e "$sdk[test]"
