#!/usr/bin/env bash
# Online backup of a running b24-journal, for cron.
#
# Each run asks the running service for a consistent copy of its data
# directory (`b24-journal backup`), checks the copy offline
# (`b24-journal verify`), and only then gives it its final name and prunes
# the oldest backups. A backup that is not (yet) verified is always named
# `*.partial` and is never counted, kept or restored from.
#
# Crontab (e.g. /etc/cron.d/b24-journal; run as the service's user, so that
# the files the service writes are readable and removable by this script):
#
# 17 3 * * * b24-journal systemd-cat -t b24-journal-backup /usr/local/bin/b24-journal-backup --dest /var/backups/b24-journal --keep 7 --token-file /etc/b24-journal/admin-token
#
# (Without systemd-cat, cron mails the output of a failed run; the script
# prints nothing but one "backup ok" line on success.)

set -euo pipefail

readonly PROG=${0##*/}

usage() {
    cat <<EOF
Usage: $PROG [--dest DIR] [--keep N] [--url URL] [--bin PATH] [--token-file FILE]

Ask the running b24-journal for an online backup, verify it, keep the last N.

Options (each also settable by the environment variable shown):
  --dest DIR         directory holding the backups         B24J_BACKUP_DEST
                     [default: /var/backups/b24-journal]
                     It must be the service's backup directory (backup_dir,
                     --backup-dir): the service writes each backup there
                     itself and nowhere else, so DIR is on the service's
                     machine and writable by the SERVICE (the systemd
                     unit's ReadWritePaths).
  --keep N           verified backups to keep, N >= 1       B24J_BACKUP_KEEP
                     [default: 7]
  --url URL          base URL of the running service        B24J_URL
                     [default: http://127.0.0.1:8080]
  --bin PATH         the b24-journal binary                 B24J_BIN
                     [default: b24-journal from PATH, else /usr/local/bin/b24-journal]
  --token-file FILE  read the admin token from FILE         B24J_ADMIN_TOKEN_FILE
                     (first line); otherwise B24J_ADMIN_TOKEN must be set.
                     The token is passed to b24-journal in its environment,
                     never on a command line.
  -h, --help         this text

Each backup is written (by the service, asked for the name
b24-journal-YYYYmmddTHHMMSSZ.partial inside its backup directory) to
DEST/b24-journal-YYYYmmddTHHMMSSZ.partial, checked
with \`b24-journal verify --data-dir\`, then renamed to
DEST/b24-journal-YYYYmmddTHHMMSSZ. Older backups beyond the newest N are
removed only after the new one verified. Exits non-zero, saying why, on any
failure; a failed backup is removed.
EOF
}

die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}

DEST=${B24J_BACKUP_DEST:-/var/backups/b24-journal}
KEEP=${B24J_BACKUP_KEEP:-7}
URL=${B24J_URL:-http://127.0.0.1:8080}
BIN=${B24J_BIN:-}
TOKEN_FILE=${B24J_ADMIN_TOKEN_FILE:-}

need_value() {
    [[ $# -ge 2 && -n $2 ]] || die "option $1 needs a value (see --help)"
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --dest) need_value "$@"; DEST=$2; shift 2 ;;
        --dest=*) DEST=${1#*=}; shift ;;
        --keep) need_value "$@"; KEEP=$2; shift 2 ;;
        --keep=*) KEEP=${1#*=}; shift ;;
        --url) need_value "$@"; URL=$2; shift 2 ;;
        --url=*) URL=${1#*=}; shift ;;
        --bin) need_value "$@"; BIN=$2; shift 2 ;;
        --bin=*) BIN=${1#*=}; shift ;;
        --token-file) need_value "$@"; TOKEN_FILE=$2; shift 2 ;;
        --token-file=*) TOKEN_FILE=${1#*=}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

# --- checks -----------------------------------------------------------------

if ! [[ $KEEP =~ ^[0-9]{1,6}$ ]] || ((10#$KEEP < 1)); then
    die "--keep must be an integer >= 1, got '$KEEP'"
fi
KEEP=$((10#$KEEP))
[[ -n $DEST ]] || die "--dest must not be empty"
[[ -n $URL ]] || die "--url must not be empty"

if [[ -z $BIN ]]; then
    BIN=$(command -v b24-journal || true)
    [[ -n $BIN ]] || BIN=/usr/local/bin/b24-journal
fi
[[ -x $BIN ]] || die "b24-journal binary '$BIN' is missing or not executable (use --bin)"

if [[ -n $TOKEN_FILE ]]; then
    [[ -r $TOKEN_FILE ]] || die "cannot read the admin token file '$TOKEN_FILE'"
    B24J_ADMIN_TOKEN=
    IFS= read -r B24J_ADMIN_TOKEN <"$TOKEN_FILE" || true
    # Tolerate a CRLF file and surrounding blanks.
    B24J_ADMIN_TOKEN=${B24J_ADMIN_TOKEN%$'\r'}
    B24J_ADMIN_TOKEN=$(printf '%s' "$B24J_ADMIN_TOKEN" | tr -d '[:space:]')
    [[ -n $B24J_ADMIN_TOKEN ]] || die "the admin token file '$TOKEN_FILE' is empty"
fi
[[ -n ${B24J_ADMIN_TOKEN:-} ]] \
    || die "no admin token: set B24J_ADMIN_TOKEN or use --token-file (the service's admin_token)"
export B24J_ADMIN_TOKEN

mkdir -p -- "$DEST" || die "cannot create the backup directory '$DEST'"
# The service answers with the resolved path of what it wrote: compare it
# with DEST resolved the same way.
DEST=$(cd -- "$DEST" && pwd -P) || die "cannot enter the backup directory '$DEST'"
[[ -w $DEST ]] || die "backup directory '$DEST' is not writable by $(id -un)"

# One run at a time: a second run would race on pruning.
LOCK=$DEST/.b24-journal-backup.lock
exec 9>>"$LOCK" || die "cannot open the lock file '$LOCK'"
if command -v flock >/dev/null; then
    flock -n 9 || die "another backup is running (lock '$LOCK' is held)"
fi

# Leftovers of an interrupted earlier run are never valid backups. With the
# lock held no other run is writing them.
shopt -s nullglob
for stale in "$DEST"/b24-journal-*.partial; do
    printf '%s: removing an unfinished backup of an earlier run: %s\n' "$PROG" "$stale" >&2
    rm -rf -- "$stale" || die "cannot remove the unfinished backup '$stale'"
done

# --- backup -----------------------------------------------------------------

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
NAME=b24-journal-$STAMP.partial
FINAL=$DEST/b24-journal-$STAMP
PARTIAL=$DEST/$NAME
[[ ! -e $FINAL && ! -e $PARTIAL ]] || die "'$FINAL' already exists (two runs in the same second?)"

cleanup() {
    local rc=$?
    if [[ $rc -ne 0 && -n ${PARTIAL:-} && -e $PARTIAL ]]; then
        rm -rf -- "$PARTIAL" || printf '%s: could not remove %s\n' "$PROG" "$PARTIAL" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

started=$(date +%s)
if ! out=$("$BIN" backup --to "$NAME" --url "$URL" 2>&1); then
    printf '%s\n' "$out" >&2
    die "the service did not make the backup (b24-journal backup --to $NAME --url $URL failed; see above)"
fi
# Where the service wrote it: its backup directory must be DEST.
written=$(printf '%s' "$out" | sed -n 's/.*"path":"\([^"]*\)".*/\1/p')
if [[ $written != "$PARTIAL" ]]; then
    # Not ours to clean up: it is in the service's backup directory.
    PARTIAL=
    die "the service wrote the backup to '${written:-?}', not into --dest '$DEST': set --dest (B24J_BACKUP_DEST) to the service's backup_dir. Output: $out"
fi
[[ -d $PARTIAL ]] \
    || die "b24-journal backup reported success but '$PARTIAL' is not a directory; is --url the service on THIS machine? Output: $out"
[[ -n $(ls -A -- "$PARTIAL") ]] || die "the backup '$PARTIAL' is empty. Output: $out"

if ! vout=$("$BIN" verify --data-dir "$PARTIAL" 2>&1); then
    printf '%s\n' "$vout" >&2
    die "the new backup failed verification (b24-journal verify --data-dir $PARTIAL; see above); it is removed, older backups are kept"
fi

mv -T -- "$PARTIAL" "$FINAL" || die "cannot rename '$PARTIAL' to '$FINAL'"
PARTIAL=
sync -f "$DEST" 2>/dev/null || sync

# --- prune --------------------------------------------------------------------

# Complete backups only (the glob excludes *.partial), oldest first: the
# timestamp sorts lexically.
backups=("$DEST"/b24-journal-[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]T[0-9][0-9][0-9][0-9][0-9][0-9]Z)
excess=$((${#backups[@]} - KEEP))
pruned=0
for ((i = 0; i < excess; i++)); do
    old=${backups[i]}
    [[ $old != "$FINAL" ]] || continue
    rm -rf -- "$old" || die "the new backup $FINAL is fine, but the old backup '$old' could not be removed"
    pruned=$((pruned + 1))
done

size=$(du -sh -- "$FINAL" 2>/dev/null | cut -f1 || true)
summary=$(printf '%s' "$out" | tr '\n' ' ' | cut -c1-300)
printf '%s: backup ok: %s (%s, %ss; kept %d, pruned %d) %s\n' \
    "$PROG" "$FINAL" "${size:-?}" "$(($(date +%s) - started))" \
    "$((${#backups[@]} - pruned))" "$pruned" "$summary"
