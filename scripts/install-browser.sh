#!/usr/bin/env bash
# Installs the browser the console's real-browser tests drive (tests/server/http/test_console_browser.py):
# Debian's chromium and chromium-driver, which come as a matched pair from the same source package.
#
#   scripts/install-browser.sh          # install them when either is missing (needs root, or sudo)
#   scripts/install-browser.sh --check  # only say whether they are there (exit 1 when not)
#
# Idempotent: with both on PATH it does nothing (no apt-get update, no network). The tests never download a
# browser or a driver themselves (Selenium is given both paths); without them they skip and say why.
set -euo pipefail

have() { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }

case "${1:-}" in
  "") ;;
  --check) if have; then echo "install-browser.sh: $(chromium --version 2>/dev/null), $(chromedriver --version 2>/dev/null | head -n1)"; exit 0; fi
           echo "install-browser.sh: chromium and/or chromedriver missing" >&2; exit 1 ;;
  -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
  *) echo "install-browser.sh: unknown argument '$1' (use --check or nothing)" >&2; exit 2 ;;
esac

if have; then
  echo "install-browser.sh: chromium and chromedriver already installed"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-browser.sh: no apt-get here; install Chromium and its matching chromedriver yourself," \
       "or the browser tests will skip" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-browser.sh: run as root (or install sudo) to apt-get install chromium chromium-driver" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver
have && echo "install-browser.sh: installed $(chromium --version 2>/dev/null)"
