# Sourced by scripts/_bootstrap.sh (and its tests): commands run as the script's children, ended with it.

# Runs "$@" as this script's child, in a process group of its own, and passes it the signals that end this script:
# bash runs no trap while a foreground child runs, so a `kill` of the script (a supervisor's, a build agent's) left
# the child (pytest, the demo) and the servers it started running. At a terminal the child stays in the foreground
# group instead: Ctrl-C and a closed terminal reach it directly, and it may read the terminal (pytest --pdb), which
# a background group may not.
run_child() {
  if [[ -t 0 ]]; then
    "$@"
    return
  fi
  set -m
  "$@" &
  local child=$!
  set +m
  trap 'kill -INT -- "-$child" 2>/dev/null || true' INT
  trap 'kill -TERM -- "-$child" 2>/dev/null || true' TERM HUP
  local status=0
  wait "$child" || status=$?
  while kill -0 "$child" 2>/dev/null; do  # the wait was cut short by a signal: wait for the child's end
    status=0
    wait "$child" || status=$?
  done
  # What it left behind in its group, a process it started that outlived it (not Azurite: in a session of its
  # own, it goes with the Python that started it).
  kill -TERM -- "-$child" 2>/dev/null || true
  trap - INT TERM HUP
  return "$status"
}

# An installer (pip, npm) as run_child runs it: a `kill` of the script ends it too, rather than leaving it to
# install on into .venv or node_modules beside the next run's. Ended by a signal, the script ends with it, without
# the "failed" message and log meant for an install that failed on its own.
run_installer() {
  local status=0
  run_child "$@" || status=$?
  if (( status > 128 )); then exit "$status"; fi
  return "$status"
}
