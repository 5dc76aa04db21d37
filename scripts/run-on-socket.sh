#!/bin/sh
# Without systemd: keep b24-journal's listening socket open across
# restarts and upgrades, as scripts/b24-journal.socket does under systemd.
#
#   scripts/run-on-socket.sh ADDR PIDFILE -- b24-journal serve [OPTIONS]
#
# systemd-socket-activate (Debian's `systemd` package; it runs without
# systemd as init) binds ADDR with a backlog of 4096 and hands the socket
# as fd 3 to a small shell loop, which starts the service on it again
# whenever it exits, with LISTEN_FDS=1 and LISTEN_PID set to the service's
# own pid. The loop holds the socket, so connections that arrive while the
# service restarts wait in its backlog instead of being refused.
# systemd-socket-activate starts the loop on the first connection.
#
#   kill -TERM "$(cat PIDFILE)"   restart the service (after installing a
#                                 new binary: this is the upgrade)
#   kill -HUP "$(cat PIDFILE)"    reload its configuration
#   kill -TERM <this script's pid>   stop the service and the loop
#
# The service starts again at once after a clean exit (a restart), and
# after RESTART_DELAY seconds (default 1) when it failed (a bad
# configuration, a crash), like systemd's Restart=always, RestartSec=1.
set -eu
if [ $# -lt 4 ] || [ "$3" != "--" ]; then
  echo "usage: $0 ADDR PIDFILE -- b24-journal serve [OPTIONS]" >&2
  exit 2
fi
addr=$1
pidfile=$2
shift 3
command -v systemd-socket-activate >/dev/null 2>&1 || {
  echo "$0: systemd-socket-activate not found (apt-get install systemd)" >&2
  exit 1
}
exec systemd-socket-activate --listen="$addr" /bin/sh -c '
  pidfile=$1; shift
  stopping=0
  child=
  stop() {
    stopping=1
    if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null || true; fi
  }
  trap stop TERM INT
  while [ "$stopping" = 0 ]; do
    # The inner shell sets LISTEN_PID to its own pid, then becomes the
    # service: sd_listen_fds only trusts variables meant for its process.
    /bin/sh -c "echo \$\$ > \"\$0\"; LISTEN_PID=\$\$ exec \"\$@\"" "$pidfile" "$@" &
    child=$!
    # `wait` returns early when a trapped signal comes: wait again.
    while :; do
      wait "$child" && status=0 || status=$?
      kill -0 "$child" 2>/dev/null || break
    done
    child=
    # A clean exit is a restart someone asked for: start again at once.
    if [ "$stopping" = 0 ] && [ "$status" != 0 ]; then sleep "${RESTART_DELAY:-1}"; fi
  done
  rm -f "$pidfile"
' run-on-socket "$pidfile" "$@"
