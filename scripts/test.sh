#!/usr/bin/env bash
# Set up (scripts/setup.sh), make sure PostgreSQL is installed (the distributed-tuning tests start a
# throwaway server on 127.0.0.1), and run the whole test suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing PostgreSQL (Debian package) for the tuning tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "PostgreSQL is needed for the tuning tests: sudo apt-get install postgresql" >&2
  fi
fi
exec .venv/bin/python -m pytest -q "$@"
