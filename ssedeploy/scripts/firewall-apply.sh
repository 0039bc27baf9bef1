#!/bin/sh
set -eu  # stop on the first failed command or unset variable
# Put a new ruleset of ssedeploy's nftables table live, and undo it unless the controller proves, over a NEW
# SSH connection, that it still reaches the host: that connection creates CONFIRM within TIMEOUT_S seconds
# (iptables-apply's way). Run as a transient systemd unit, so rules that cut the deploy's own connection
# cannot stop it.
# Usage: firewall-apply.sh NEW_FILE LIVE_FILE STATE_DIR CONFIRM TIMEOUT_S
#   NEW_FILE: the rendered table (`nft -f`, all or nothing); LIVE_FILE: what ssedeploy-firewall.service loads
#   at boot, replaced only once confirmed; STATE_DIR: the previous rules, `applied.list` (the table as nft
#   lists it once confirmed: what drift compares the kernel's with), `loaded` (the new rules are in the
#   kernel: the controller's new connection may start) and `result` (what the deploy reads).
#
# Crash safety: before the new rules go live, a systemd timer of its own is set to load the previous rules
# TIMEOUT_S seconds later; only the confirmation stops it. So a cut at any line (this script killed, the SSH
# connection gone) still ends with the previous rules back, and a power cut boots LIVE_FILE, which changes
# only after the confirmation, by one rename.
new=$1 live=$2 state=$3 confirm=$4 timeout=$5
table=ssedeploy
undo_unit=ssedeploy-firewall-undo

# Tests only: SSEDEPLOY_FAULT_AT=N kills this script at point N (as a power cut would). Production never sets it.
fault() {
    if [ "${SSEDEPLOY_FAULT_AT:-}" = "$1" ]; then kill -9 $$; fi
}

mkdir -p "$state"
rm -f "$state/result" "$state/loaded"
# The previous rules as one `nft -f` transaction that puts them back whole (or removes the table if none).
{
    printf 'table inet %s {}\ndelete table inet %s\n' "$table" "$table"
    nft list table inet "$table" 2>/dev/null || true
} > "$state/previous.nft.tmp"
mv -f "$state/previous.nft.tmp" "$state/previous.nft"
rm -f "$(dirname "$confirm")"/confirmed-*  # late confirmations of earlier runs
fault 1
# A leftover undo timer of a cut run would undo these rules too early: replace it.
systemctl stop "$undo_unit.timer" 2>/dev/null || true
systemd-run --quiet --collect --unit="$undo_unit" --on-active="${timeout}s" --timer-property=AccuracySec=100ms \
    nft -f "$state/previous.nft"
fault 2
if ! nft -f "$new" 2>"$state/nft.err"; then
    systemctl stop "$undo_unit.timer" 2>/dev/null || true
    echo "nft refused the new rules: $(cat "$state/nft.err")" > "$state/result"
    cat "$state/result" >&2
    exit 1
fi
# Only now may the controller open its new connection: one opened before would be established already and
# pass any rules.
touch "$state/loaded"
fault 3
end=$(($(date +%s) + timeout))
while [ "$(date +%s)" -lt "$end" ]; do
    if [ -e "$confirm" ]; then
        systemctl stop "$undo_unit.timer"
        fault 4
        mkdir -p "$(dirname "$live")"
        cp "$new" "$live.ssedeploy-tmp"
        mv -f "$live.ssedeploy-tmp" "$live"
        nft list table inet "$table" > "$state/applied.list.tmp"
        mv -f "$state/applied.list.tmp" "$state/applied.list"
        rm -f "$confirm"
        echo confirmed > "$state/result"
        echo "firewall applied and confirmed over a new SSH connection"
        exit 0
    fi
    sleep 0.2
done
# Not confirmed: put the previous rules back now (the timer would, a moment later).
systemctl stop "$undo_unit.timer" 2>/dev/null || true
nft -f "$state/previous.nft"
message="no new SSH connection reached the host within $timeout s of the new firewall rules: the previous rules are back"
echo "$message" > "$state/result"
echo "ssedeploy: $message" >&2
exit 1
