#!/bin/sh
# Puts promtool (for the /metrics tests) in DIR without installing Debian's
# prometheus package, which would bring a server, node-exporter and their
# systemd units onto the machine: the .deb is downloaded from the archive
# with apt and only /usr/bin/promtool is taken out of it.  Nothing to do
# when promtool is on PATH already or in DIR.
#   tools/promtool.sh DIR
set -eu
dir=$1
if command -v promtool >/dev/null 2>&1 || [ -x "$dir/promtool" ]; then
	exit 0
fi
mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching promtool from Debian's prometheus package into $dir"
if ! (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1); then
	if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi
	$SUDO apt-get update -qq
	(cd "$tmp" && apt-get download -qq prometheus >/dev/null)
fi
dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$tmp" ./usr/bin/promtool
mv "$tmp/usr/bin/promtool" "$dir/promtool"
"$dir/promtool" --version >/dev/null
