#!/bin/sh
set -eu  # stop on the first failed command or unset variable
# Install one official Node.js build beside the others: ROOT/HOME (e.g. /srv/app/node/v24.22.3-linux-x64),
# downloaded from URL and refused unless its SHA-256 is SHA256 (the controller read it from that release's
# SHASUMS256.txt), checked before anything is unpacked.
#
# Usage: node-install.sh ROOT HOME URL SHA256 VERSION
#
# Crash safety: everything happens under ROOT/.install-HOME and is renamed into place only once checked and
# whole, so a present ROOT/HOME is always complete; a cut run leaves only .install-HOME, removed by the next.
root=$1 home=$2 url=$3 sha=$4 version=$5
[ ! -x "$root/$home/bin/node" ] || exit 0
tmp=$root/.install-$home
mkdir -p "$root"
rm -rf "$tmp"
mkdir "$tmp"
if ! curl -fsSL --retry 3 --connect-timeout 10 --max-time 900 -o "$tmp/node.tar.xz" "$url"; then
    rm -rf "$tmp"
    echo "ssedeploy: cannot download $url (above); nothing was installed" >&2
    exit 1
fi
got=$(sha256sum "$tmp/node.tar.xz" | cut -d' ' -f1)
if [ "$got" != "$sha" ]; then
    rm -rf "$tmp"
    echo "ssedeploy: $url has SHA-256 $got, but its SHASUMS256.txt says $sha: refused, nothing was installed" >&2
    exit 1
fi
mkdir "$tmp/home"
tar -xJf "$tmp/node.tar.xz" -C "$tmp/home" --strip-components=1 --no-same-owner
said=$("$tmp/home/bin/node" --version)
if [ "$said" != "v$version" ]; then
    rm -rf "$tmp"
    echo "ssedeploy: $url unpacked a node that says $said, not v$version: refused, nothing was installed" >&2
    exit 1
fi
mv -T "$tmp/home" "$root/$home"
rm -rf "$tmp"
