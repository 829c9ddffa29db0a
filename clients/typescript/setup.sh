#!/usr/bin/env bash
# Installs the TypeScript SDK's one development dependency (typescript, pinned in
# package-lock.json) into clients/typescript/node_modules. Idempotent: does nothing when
# node_modules/.bin/tsc is already there. Needs Node 20+ and npm on PATH.
set -euo pipefail
cd "$(dirname "$0")"

if [[ -x node_modules/.bin/tsc ]]; then
    exit 0
fi
if ! command -v npm >/dev/null; then
    echo "clients/typescript/setup.sh: npm is not on PATH (Node 20 or newer is needed)" >&2
    exit 1
fi
echo "installing the TypeScript SDK's dev dependencies (npm ci in clients/typescript)" >&2
npm ci --no-audit --no-fund --loglevel=error
