# Sourced by the scripts/*.sh commands: makes sure the tools are installed, quietly, once.
# - .venv          Python 3.11+ virtual environment with requirements-dev.txt and the package (editable:
#                  .venv/bin/irm-connector)
# - .venv-checkov  checkov in its own environment (it pins an old 'packaging' that pytest refuses)
# - node_modules   Azurite and the Kusto language service, from package-lock.json
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Bold only on a terminal: captured logs (CI, a test's output) get no escape codes.
if [[ -t 2 ]]; then say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }; else say() { printf '==> %s\n' "$*" >&2; }; fi
die() { printf 'error: %s\n' "$*" >&2; exit 2; }

if [[ -z "${PYTHON:-}" ]]; then
  # python3 may be older (Ubuntu 22.04: 3.10) beside a newer python3.X; PYTHON=/path/to/python picks one.
  for candidate in python3 python3.14 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PYTHON="$candidate"; break
    fi
  done
  PYTHON="${PYTHON:-python3}"
fi
command -v "$PYTHON" >/dev/null || die "python3 (3.11 or newer) is required (or PYTHON=/path/to/python3.11)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "Python 3.11 or newer is required ($("$PYTHON" --version))"
command -v node >/dev/null || die "Node.js 20 or newer is required (for Azurite)"
node -e 'process.exit(parseInt(process.versions.node) < 20 ? 1 : 0)' || die "Node.js 20 or newer is required ($(node --version))"
command -v npm >/dev/null || die "npm is required (it comes with Node.js)"

stamp() {  # a missing file ended the script with status 1 and no word (pipefail): named instead
  local file; for file in "$@"; do [[ -f $file ]] || die "$file is missing from the checkout: clone it again"; done
  cat "$@" | sha256sum | cut -c1-16
}

# run_child and run_installer: a command as this script's child, ended with it.
source "$ROOT/scripts/_children.sh"

need_venv() {  # need_venv DIR REQUIREMENTS... [-- EDITABLE]
  local dir="$1"; shift
  local reqs=() editable=""
  while [[ $# -gt 0 ]]; do
    if [[ "$1" == "--" ]]; then editable="$2"; shift 2; else reqs+=("$1"); shift; fi
  done
  set -- "${reqs[@]}"
  # The editable install records the checkout's path: a moved checkout installs again.
  local want; want="$(stamp "$@" ${editable:+"$editable/pyproject.toml"})${editable:+ $editable}"
  if [[ ! -x "$dir/bin/python" || "$(cat "$dir/.stamp" 2>/dev/null)" != "$want" ]]; then
    say "Installing Python packages into $dir (once)"
    # Made again when it is half made (no pip: an interrupted first run, or python3-venv missing then) or was
    # made for another path (its scripts' #! lines name the old one).
    # Also when its Python is gone (removed or upgraded away: bin/python is a link to it), or `venv` would fail on it.
    if [[ -e "$dir" ]] && ! { [[ -x "$dir/bin/python" ]] && "$dir/bin/python" -m pip --version >/dev/null 2>&1 \
        && [[ "$(cat "$dir/.root" 2>/dev/null)" == "$ROOT" ]]; }; then
      rm -rf "$dir"
    fi
    if [[ ! -x "$dir/bin/python" ]]; then
      "$PYTHON" -m venv "$dir" || { rm -rf "$dir"; die "could not create $dir ($PYTHON -m venv; on Debian and Ubuntu: apt install python3-venv)"; }
      echo "$ROOT" > "$dir/.root"
    fi
    local args=(); for req in "$@"; do args+=(-r "$req"); done
    local log="$dir/pip-install.log"
    if ! run_installer "$dir/bin/python" -m pip install --disable-pip-version-check "${args[@]}" >"$log" 2>&1; then
      tail -n 40 "$log" >&2
      die "pip install into $dir failed (full log: $log)"
    fi
    # The package itself, editable, so `.venv/bin/irm-connector` exists and works from any directory.
    if [[ -n "$editable" ]] && ! run_installer "$dir/bin/python" -m pip install --disable-pip-version-check --no-deps \
        -e "$editable" >>"$log" 2>&1; then
      tail -n 40 "$log" >&2
      die "pip install -e $editable into $dir failed (full log: $log)"
    fi
    echo "$want" > "$dir/.stamp"
  fi
}

need_venv .venv requirements.txt requirements-dev.txt -- "$ROOT"
if [[ "${SKIP_CHECKOV:-0}" != "1" ]]; then
  need_venv .venv-checkov requirements-checkov.txt
  export CHECKOV_BIN="$ROOT/.venv-checkov/bin/checkov"
fi

lock_stamp="$(stamp package-lock.json)"
if [[ ! -d node_modules || "$(cat node_modules/.stamp 2>/dev/null)" != "$lock_stamp" ]]; then
  say "Installing Node packages (Azurite, Kusto language service) into node_modules (once)"
  npm_log="$ROOT/node_modules-install.log"
  if ! run_installer npm ci --no-audit --no-fund --no-update-notifier --loglevel=error >"$npm_log" 2>&1; then
    tail -n 40 "$npm_log" >&2
    rm -f "$npm_log"
    die "npm ci failed: Node packages could not be installed"
  fi
  rm -f "$npm_log"
  echo "$lock_stamp" > node_modules/.stamp
fi

export PATH="$ROOT/.venv/bin:$PATH"
# The checkout alone: a user's PYTHONPATH would come before the venv's packages, and an older azure-core or aiohttp
# on it would be the one the tests and the demo ran.
export PYTHONPATH="$ROOT"

# A directory of its own for the command's temporary files (pytest's tmp_path with Azurite's data and the test
# CA, the tools' caches), removed when the command ends: nothing is left in /tmp. For a script that runs its
# command as a child (not with exec), so that the trap runs after it.
use_private_tmpdir() {
  TMPDIR="$(mktemp -d "${TMPDIR:-/tmp}/irm-connector.XXXXXX")"
  export TMPDIR
  trap 'rm -rf "$TMPDIR"' EXIT
}
