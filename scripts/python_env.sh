# Sourced by demo.sh and test.sh: the project's own Python environment in .venv.
#
# Stock Debian/Ubuntu Pythons refuse `pip install` into the system (PEP 668,
# "externally-managed-environment"), and the demo should not pull in the test tooling, so both
# commands install into a virtual environment beside the checkout. Debian ships venv's pip
# bootstrap separately (python3-venv); as root it is installed here, otherwise the message says
# which package to install.

ensure_venv() {
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import pip" >/dev/null 2>&1; then
    return 0
  fi
  if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "python3 cannot create virtual environments here: install Debian's python3-venv (sudo apt-get install python3-venv) and run again" >&2
      exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  fi
  rm -rf .venv
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
}
