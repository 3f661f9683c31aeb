#!/bin/sh
# Usage: require-tools.sh PACKAGE...   (Debian package names whose command has the same name)
# Installs missing Debian tools when run as root; otherwise stops naming them.
missing=""
for pkg in "$@"; do
  command -v "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages:$missing"
  (apt-get update -qq || true) >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null || {
    echo "error: could not install:$missing" >&2; exit 1; }
  exit 0
fi
echo "error: the tests need these Debian packages:$missing" >&2
echo "       install them (as root: apt-get install$missing) and run make test again" >&2
exit 1
