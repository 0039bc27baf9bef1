#!/bin/sh
# Swap a staged nginx config into /etc/nginx, test the whole tree, and put the backup
# back if `nginx -t` fails. Run by `systemd-run` as a transient unit, so a dropped SSH
# connection cannot cut it in half. Usage: nginx-swap.sh STAGE_DIR BACKUPS_TO_KEEP
set -u
stage=$1
keep=$2
base=$(dirname "$stage")
live=/etc/nginx
backup="$base/backups/$(date -u +%Y%m%dT%H%M%S.%N)"

mkdir -p "$base/backups"
cp -a "$live" "$backup" || { echo "ssedeploy: could not back up $live" >&2; exit 2; }

(cd "$stage/files" && find . -type f) | while IFS= read -r f; do
    install -D -m 0644 "$stage/files/$f" "$live/$f.ssedeploy-new" && mv -f "$live/$f.ssedeploy-new" "$live/$f"
done
while IFS= read -r p; do [ -n "$p" ] && rm -f "$live/$p"; done < "$stage/remove"
while IFS=' ' read -r p t; do [ -n "$p" ] && ln -sfn "$t" "$live/$p"; done < "$stage/links"

if out=$(nginx -t 2>&1); then
    cp "$stage/revision" "$base/revision"
    ls -1d "$base"/backups/* | head -n "-$keep" | xargs -r rm -rf
    rm -rf "$stage"
    exit 0
fi

# Put the backup back whole: two renames on one filesystem, never a half-restored tree.
rm -rf /etc/.ssedeploy-nginx-restore /etc/.ssedeploy-nginx-failed
cp -a "$backup" /etc/.ssedeploy-nginx-restore
mv "$live" /etc/.ssedeploy-nginx-failed && mv /etc/.ssedeploy-nginx-restore "$live"
rm -rf "$base/failed" && mv /etc/.ssedeploy-nginx-failed "$base/failed"
rm -rf "$backup" "$stage"
echo "$out" >&2
echo "ssedeploy: nginx -t failed: /etc/nginx is restored as it was and nginx keeps running the previous config (the rejected tree is in $base/failed)" >&2
exit 1
