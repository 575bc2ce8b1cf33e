# Sourced by scripts/run, scripts/test and scripts/bench: make sure .venv exists and holds the
# project with its test dependencies. Reinstalls only when pyproject.toml changed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

ensure_venv() {
  local stamp="$VENV/.installed" want
  want=$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)
  if [ -x "$PY" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return
  fi
  echo "[setup] installing Warren and its test dependencies into .venv" >&2
  [ -x "$PY" ] || python3 -m venv "$VENV"
  local log="$VENV/install.log"
  if ! { "$PY" -m pip install -q --upgrade pip && "$PY" -m pip install -q -e "$ROOT[test,native]"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "[setup] pip install failed; the log is above ($log)" >&2
    return 1
  fi
  echo "$want" >"$stamp"
}

# The hot modules compiled with mypyc, rebuilt when their sources changed (a minute or two;
# instant when up to date). On failure the broker runs its Python sources and says so in its
# log; `ensure_native strict` (the test run) fails instead, so that CI tests what ships.
ensure_native() {
  if ! "$PY" "$ROOT/scripts/build_native.py"; then
    [ "${1:-}" = strict ] && return 1
    echo "[setup] continuing with the Python sources (slower)" >&2
  fi
  return 0
}

# The web console's test drives Debian's Chromium headless (Playwright never downloads a browser
# here). Installed with apt when missing and we are root; otherwise the test says it is skipped.
ensure_chromium() {
  command -v chromium >/dev/null && return
  if [ "$(id -u)" != 0 ]; then
    echo "[setup] chromium is missing and we are not root: the console's browser test will skip" >&2
    return
  fi
  echo "[setup] installing Debian's chromium for the console's browser test" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
}
