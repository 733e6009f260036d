#!/usr/bin/env bash
# The web UI's screenshots (docs/http.md, the README) from a real run: the browser tests write them here
# when VISDEX_SCREENSHOTS is set (Debian's Chromium through Playwright, the offline lite0-minilm model).
#   docs/screenshots/make.sh                 # every screenshot
#   docs/screenshots/make.sh -k clusters     # only the tests that match
set -euo pipefail
cd "$(dirname "$0")/../.."
VISDEX_SCREENSHOTS=1 exec python -m pytest -q -m browser tests/test_browser.py tests/test_ui_library.py "$@"
