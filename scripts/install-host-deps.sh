#!/usr/bin/env bash
# Install what the controller needs from Debian's packages (idempotent, quiet when done).
#   docker.io    the lab hosts and molecule guests are containers
#   debootstrap  builds the lab image from Debian's packages (no registry is reachable)
#   curl, rsync  used by the tests and molecule's docker driver
set -euo pipefail
packages=(docker.io debootstrap curl rsync)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "==> apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
