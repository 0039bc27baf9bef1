#!/bin/sh
set -eu  # stop on the first failed command or unset variable
# Swap a staged nginx config into the live tree, test the whole tree, and put the backup
# back if `nginx -t` fails. Never starts or reloads nginx. Run by `systemd-run` as a
# transient unit, so a dropped SSH connection cannot cut it in half.
# Usage: nginx-swap.sh STAGE_DIR BACKUPS_TO_KEEP LIVE_DIR STATE_DIR
#   STAGE_DIR: files/ (the rendered tree), links ("path target" lines), remove (paths), revision
#   LIVE_DIR: /etc/nginx; STATE_DIR: backups/, failed/, revision, swap-in-progress (all from Python)
#
# Crash safety: every live path is replaced by a rename from a temp file in its own directory,
# so the live directory never disappears and no file is ever half-written. Before the first
# live path changes, the journal STATE_DIR/swap-in-progress names a whole backup (and the
# revision recorded with it); it is removed only once the tree is whole again. A run that
# finds a journal first puts that backup back whole, then swaps. The revision is recorded
# only after `nginx -t` passed on the whole new tree.
stage=$1
keep=$2
live=$3
state=$4
journal=$state/swap-in-progress
work=$state/swap-work

# Tests only: SSEDEPLOY_FAULT_AT=N kills this script at point N (as a power cut would);
# N:fail makes point N a failed command. Production never sets it.
fault() {
    case ${SSEDEPLOY_FAULT_AT:-} in
        "$1") kill -9 $$ ;;
        "$1:fail") echo "ssedeploy: fault injected at point $1" >&2; return 1 ;;
    esac
}

# Replace DST by a rename from a temp copy of SRC in DST's directory (mode, owner and times kept).
put() {
    tmp=$(dirname "$2")/.$(basename "$2").ssedeploy-tmp
    rm -rf "$tmp"
    if [ -L "$1" ]; then
        target=$(readlink "$1")
        ln -s "$target" "$tmp"
    else
        cp -p "$1" "$tmp"
    fi
    fault "$3"
    # A directory where a file goes cannot be renamed over: the journal covers this rare case.
    if [ -d "$2" ] && [ ! -L "$2" ]; then rm -rf "$2"; fi
    mv -fT "$tmp" "$2"
}

# Is DST already the same as SRC (type, link target or content, mode and owner)?
same() {
    if [ -L "$1" ]; then
        [ -L "$2" ] && [ "$(readlink "$1")" = "$(readlink "$2")" ]
    else
        [ -f "$2" ] && [ ! -L "$2" ] && [ "$(stat -c '%a %u %g' "$1")" = "$(stat -c '%a %u %g' "$2")" ] \
            && cmp -s "$1" "$2"
    fi
}

# sync_tree SRC DST POINT: make tree DST identical to tree SRC one path at a time, each file or
# link by put(), then remove what SRC does not have. Fault points POINT (a temp file is made),
# POINT+1 (one live path changed), POINT+2 (DST is whole SRC).
sync_tree() {
    find "$1" -mindepth 1 -printf '%y %P\n' > "$work.src"  # a directory before what it holds
    while IFS= read -r entry || [ -n "$entry" ]; do
        kind=${entry%% *}
        p=${entry#? }
        case $kind in
            d)
                if [ -L "$2/$p" ] || { [ -e "$2/$p" ] && [ ! -d "$2/$p" ]; }; then rm -f "$2/$p"; fi
                if [ ! -d "$2/$p" ]; then mkdir "$2/$p"; fi
                if [ "$(stat -c '%a %u %g' "$1/$p")" != "$(stat -c '%a %u %g' "$2/$p")" ]; then
                    chown --reference="$1/$p" "$2/$p"
                    chmod --reference="$1/$p" "$2/$p"
                fi
                ;;
            f | l)
                if ! same "$1/$p" "$2/$p"; then
                    put "$1/$p" "$2/$p" "$3"
                    fault $(($3 + 1))
                fi
                ;;
            *) echo "ssedeploy: $1/$p: not a file, link or directory" >&2; exit 2 ;;
        esac
    done < "$work.src"
    find "$2" -mindepth 1 -depth -printf '%P\n' > "$work.dst"  # what a directory holds before it
    while IFS= read -r p || [ -n "$p" ]; do
        if [ ! -e "$1/$p" ] && [ ! -L "$1/$p" ]; then
            rm -rf "$2/$p"
            fault $(($3 + 1))
        fi
    done < "$work.dst"
    rm -f "$work.src" "$work.dst"
    fault $(($3 + 2))
}

# Write FILE's new content by a rename (FAULT: between the two).
write() {
    printf '%s\n' "$2" > "$1.tmp"
    fault "$3"
    mv -fT "$1.tmp" "$1"
}

# put_back POINT: put the backup the journal names back whole with the revision recorded with it,
# then drop the journal. Fault points POINT..POINT+3.
put_back() {
    was_backup= was_revision=
    while IFS='=' read -r key value || [ -n "$key" ]; do
        case $key in backup) was_backup=$value ;; revision) was_revision=$value ;; esac
    done < "$journal"
    if [ ! -d "$was_backup" ]; then
        echo "ssedeploy: $journal names the backup '$was_backup', which is missing: restore $live by hand" >&2
        exit 2
    fi
    sync_tree "$was_backup" "$live" "$1"
    if [ -n "$was_revision" ]; then
        write "$state/revision" "$was_revision" "$(($1 + 3))"
    else
        rm -f "$state/revision"
    fi
    rm -f "$journal"
}

# Any failure while the live tree is part old, part new: put the backup back before exiting.
on_failure() {
    status=$?
    trap - EXIT
    echo "ssedeploy: the swap failed (exit $status): putting $live back as it was" >&2
    put_back 18
    echo "ssedeploy: $live is restored as it was; nginx was not reloaded" >&2
    exit "$status"
}

if [ -e "$journal" ]; then
    echo "ssedeploy: an earlier swap was cut short: putting $live back as it was before it" >&2
    fault 1
    put_back 2
fi

# Leftovers of a run cut short before it changed anything live.
rm -rf "$work" "$work.src" "$work.dst" "$state"/backups/*.tmp "$journal.tmp" "$state/revision.tmp"
mkdir -p "$state/backups"
backup="$state/backups/$(date -u +%Y%m%dT%H%M%S.%N)"
cp -a "$live" "$backup.tmp" || { echo "ssedeploy: could not back up $live" >&2; exit 2; }
fault 6
mv -T "$backup.tmp" "$backup"
fault 7

# Build the whole new tree aside first: a staged file that cannot be read or placed fails
# here, before anything live changes.
cp -a "$live" "$work"
find "$stage/files" -type f -printf '%P\n' > "$work.src"
while IFS= read -r f || [ -n "$f" ]; do
    install -D -m 0644 "$stage/files/$f" "$work/$f"
done < "$work.src"
while IFS= read -r p || [ -n "$p" ]; do
    if [ -n "$p" ]; then rm -f "$work/$p"; fi
done < "$stage/remove"
while IFS=' ' read -r p t || [ -n "$p" ]; do
    if [ -n "$p" ]; then ln -sfT "$t" "$work/$p"; fi
done < "$stage/links"
new_revision=$(cat "$stage/revision")
if [ -e "$state/revision" ]; then old_revision=$(cat "$state/revision"); else old_revision=; fi
fault 8

write "$journal" "backup=$backup
revision=$old_revision" 9
trap on_failure EXIT
sync_tree "$work" "$live" 10

if out=$(nginx -t -c "$live/nginx.conf" 2>&1); then
    write "$state/revision" "$new_revision" 13
    fault 14
    trap - EXIT
    rm -f "$journal"
    fault 15
    rm -rf "$work" "$stage"
    # Keep the newest BACKUPS_TO_KEEP (names sort by time); rename first so a cut removal
    # leaves a *.tmp the next run deletes, never a partial backup.
    set -- "$state"/backups/*
    n=$#
    for b; do
        [ "$n" -gt "$keep" ] || break
        mv -T "$b" "$b.tmp"
        fault 16
        rm -rf "$b.tmp"
        n=$((n - 1))
    done
    exit 0
fi

trap - EXIT
rm -rf "$state/failed"
mv -T "$work" "$state/failed"
fault 17
put_back 18
rm -rf "$backup" "$stage"
echo "$out" >&2
echo "ssedeploy: nginx -t failed: $live is restored as it was and nginx keeps running the previous config (the rejected tree is in $state/failed)" >&2
exit 1
