#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian/Ubuntu machine: installs the system programs the
# tests start for real (gpg, OpenSSH sshd, Chromium for the UI test), the Python package with its
# test extras in .venv, then pytest. Safe to run again: installed things are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v gpg >/dev/null 2>&1 || need_apt+=(gnupg)
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v sftp >/dev/null 2>&1 || need_apt+=(openssh-client)
# The UI test drives Debian's Chromium through Playwright (no browser download is possible here).
[ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# Dagster instance deployment test and the DuckLake store tests run throwaway PostgreSQL clusters (initdb + pg_ctl, no service).
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need_apt+=(postgresql)
# The deployment test has Compose itself read docker-compose.yaml (`config` needs no Docker engine):
# Docker's compose plugin where it is installed, else Debian's standalone docker-compose.
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing system packages: ${need_apt[*]} (install them with apt-get as root)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

source scripts/python_env.sh
ensure_venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
# Lint and types first: a finding fails the run before the slower tests start.
.venv/bin/ruff check .
.venv/bin/mypy
# Two workers, a test module each at a time (its module-scoped servers stay in one process);
# CDP_TEST_WORKERS=0 runs everything in this process, and arguments given here come last and win.
exec .venv/bin/python -m pytest -n "${CDP_TEST_WORKERS:-2}" --dist loadfile "$@"
