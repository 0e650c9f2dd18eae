#!/usr/bin/env bash
# Install Debian packages the project uses, when they are missing.
#   scripts/debian-packages.sh optional|required WHAT PACKAGE...
# optional: when they cannot be installed (not root, not Debian), say what is lost and go on.
# required: the same, but fail.
set -u
kind=$1 what=$2
shift 2
missing=()
for package in "$@"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "${missing[@]}" >/dev/null; } && exit 0
fi
if [ "$kind" = required ]; then
  echo "error: $what needs these packages: ${missing[*]} (install them as root, e.g. apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "note: ${missing[*]} not installed (needs root and apt-get): $what will not be available" >&2
exit 0
