# Sourced by scripts/test.sh and scripts/demo.sh: makes sure the tools are installed, quietly, once.
# - .venv          Python 3.11+ virtual environment with requirements-dev.txt
# - .venv-checkov  checkov in its own environment (it pins an old 'packaging' that pytest refuses)
# - node_modules   Azurite and the Kusto language service, from package-lock.json
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 2; }

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || die "python3 (3.11 or newer) is required"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "Python 3.11 or newer is required ($("$PYTHON" --version))"
command -v node >/dev/null || die "Node.js 20 or newer is required (for Azurite)"
node -e 'process.exit(parseInt(process.versions.node) < 20 ? 1 : 0)' || die "Node.js 20 or newer is required ($(node --version))"
command -v npm >/dev/null || die "npm is required (it comes with Node.js)"

stamp() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

need_venv() {  # need_venv DIR REQUIREMENTS...
  local dir="$1"; shift
  local want; want="$(stamp "$@")"
  if [[ ! -x "$dir/bin/python" || "$(cat "$dir/.stamp" 2>/dev/null)" != "$want" ]]; then
    say "Installing Python packages into $dir (once)"
    [[ -x "$dir/bin/python" ]] || "$PYTHON" -m venv "$dir"
    local args=(); for req in "$@"; do args+=(-r "$req"); done
    local log="$dir/pip-install.log"
    if ! "$dir/bin/python" -m pip install --disable-pip-version-check "${args[@]}" >"$log" 2>&1; then
      tail -n 40 "$log" >&2
      die "pip install into $dir failed (full log: $log)"
    fi
    echo "$want" > "$dir/.stamp"
  fi
}

need_venv .venv requirements.txt requirements-dev.txt
if [[ "${SKIP_CHECKOV:-0}" != "1" ]]; then
  need_venv .venv-checkov requirements-checkov.txt
  export CHECKOV_BIN="$ROOT/.venv-checkov/bin/checkov"
fi

lock_stamp="$(stamp package-lock.json)"
if [[ ! -d node_modules || "$(cat node_modules/.stamp 2>/dev/null)" != "$lock_stamp" ]]; then
  say "Installing Node packages (Azurite, Kusto language service) into node_modules (once)"
  npm ci --no-audit --no-fund --loglevel=error >/dev/null || die "npm ci failed: Node packages could not be installed"
  echo "$lock_stamp" > node_modules/.stamp
fi

export PATH="$ROOT/.venv/bin:$PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
