#!/bin/sh
# Installs a baton .deb with dpkg into a scratch root (its own dpkg
# database, no chroot or container needed) and proves the installed files
# work: baton check and baton run on the packaged example, with the
# packaged Python SDK, the man pages, the unit.
#   tools/deb-check.sh build-deb/baton_0.1.0_amd64.deb
set -eu
deb=$(realpath "$1")
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
# /etc for the package's user (systemd-sysusers --root writes passwd there).
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/etc"
: >"$root/var/lib/dpkg/status"
# The root has no libc or python3 of its own: dependencies are this
# machine's, and maintainer scripts run here with DPKG_ROOT set.
if ! dpkg --root="$root" --force-depends --force-not-root --force-script-chrootless \
	--log=/dev/null -i "$deb" >"$root/dpkg.out" 2>&1; then
	cat "$root/dpkg.out" >&2
	exit 1
fi
dpkg --root="$root" -s baton | grep -q '^Status: install ok installed'
# The postinst made the service's user in the root, not on this machine.
grep -q '^baton:' "$root/etc/passwd"
echo "installed $(basename "$deb") into $root"

baton=$root/usr/bin/baton
"$baton" version
ex=$root/usr/share/doc/baton/examples/upper
"$baton" check "$ex/baton.yaml" >/dev/null
echo "baton check $ex/baton.yaml: ok"

# A real run of the example, its stage importing the packaged SDK.
mkdir -p "$root/in"
printf 'hello' >"$root/in/a.txt"
PYTHONPATH=$root/usr/lib/python3/dist-packages \
	"$baton" run "$ex/baton.yaml" --pipeline upper --input "$root/in" --output "$root/out" \
	--no-progress >/dev/null
test "$(cat "$root/out/a.txt.out")" = HELLO
echo "baton run on the example: ok"

for f in usr/include/baton_worker.h usr/share/man/man1/baton.1.gz \
	usr/share/man/man5/baton.yaml.5.gz lib/systemd/system/baton.service \
	usr/share/bash-completion/completions/baton usr/lib/sysusers.d/baton.conf; do
	test -e "$root/$f" || { echo "missing: /$f" >&2; exit 1; }
done
ls "$root"/usr/lib/*/libbatonworker.so.1 "$root"/usr/lib/*/libbatonworker.a \
	"$root"/usr/lib/*/pkgconfig/batonworker.pc >/dev/null
grep -q '^ExecStart=/usr/bin/baton serve ' "$root/lib/systemd/system/baton.service"
echo "package contents: ok"
