#!/bin/sh
# What the browser tests (tests/test_web_browser.py) need beside the Python packages:
# - Debian's chromium and chromium-driver;
# - axe-core, the accessibility checker the tests inject into the page: test-only, npm installs it into build/axe/.
# As root (CI) the Debian packages (npm too) are installed when missing; otherwise this says what to run, and
# the tests fail saying what is missing.
set -e
AXE_VERSION=4.10.3
AXE=build/axe/node_modules/axe-core/axe.min.js
cd "$(dirname "$0")/.."
have_browser() { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }
packages=""
have_browser || packages="chromium chromium-driver"
[ -f "$AXE" ] || command -v npm >/dev/null || packages="$packages npm"
if [ -n "$packages" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  # Wait for dpkg's lock rather than fail when another apt-get (the container tooling's) holds it.
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  # shellcheck disable=SC2086  # one word per package
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $packages
fi
if ! have_browser; then
  echo "browser tests need /usr/bin/chromium and /usr/bin/chromedriver: run as root, or" >&2
  echo "  sudo apt-get install chromium chromium-driver" >&2
fi
if [ ! -f "$AXE" ]; then
  if command -v npm >/dev/null; then
    npm install --prefix build/axe --save-exact --no-audit --no-fund --silent "axe-core@$AXE_VERSION"
  else
    echo "browser tests need axe-core: sudo apt-get install npm, then make browser" >&2
  fi
fi
