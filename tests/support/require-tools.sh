#!/bin/sh
# Usage: require-tools.sh COMMAND[:PACKAGE]...
# Installs the Debian packages of missing commands when run as root; otherwise stops
# naming them. PACKAGE defaults to COMMAND.
PATH="$PATH:/usr/sbin:/sbin"
missing=""
for item in "$@"; do
  cmd=${item%%:*}
  pkg=${item#*:}
  command -v "$cmd" >/dev/null 2>&1 || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages:$missing"
  (apt-get update -qq || true) >/dev/null 2>&1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null 2>&1 || {
    echo "error: could not install:$missing" >&2; exit 1; }
  exit 0
fi
echo "error: the tests need these Debian packages:$missing" >&2
echo "       install them (as root: apt-get install$missing) and run make test again" >&2
exit 1
