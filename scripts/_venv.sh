# Sourced by scripts/test and scripts/demo: a virtual environment with agentguard[dev].
# Re-installs only when pyproject.toml changed since the last install.
VENV="${AGENTGUARD_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] < (3, 14) else 1)'; then
  echo "agentguard needs Python 3.10 to 3.13; $PYTHON is $("$PYTHON" -V 2>&1). Set PYTHON=python3.x." >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV with $("$PYTHON" -V 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.agentguard-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "== installing agentguard[dev] into $VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e '.[dev]'
  touch "$stamp"
fi
