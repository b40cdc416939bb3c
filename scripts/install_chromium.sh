#!/usr/bin/env bash
# Browser tests drive Debian's chromium through Playwright (no browser download from Playwright).
# Fonts: emoji and Chinese glyphs, so status lines and the Chinese UI render in screenshots.
set -euo pipefail
PACKAGES="chromium fonts-noto-color-emoji fonts-wqy-microhei"
missing=""
for pkg in $PACKAGES; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -z "$missing" ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
elif [ ! -x /usr/bin/chromium ]; then
  echo "note: /usr/bin/chromium is missing; browser tests will be skipped." >&2
  echo "      install it with: sudo apt-get install$missing" >&2
fi
