#!/bin/sh
# setup.sh: fetches the dashboard's plotting library (uPlot, pinned with its integrity hash in
# web/package-lock.json) into web/node_modules with `npm ci`, only when node_modules is missing
# or older than the lock file. Idempotent and quiet; the build (web/CMakeLists.txt) copies the
# library's dist files next to the pages, so nothing is downloaded at run time.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
stamp="$here/node_modules/.package-lock.json"   # npm writes it at every install
if [ -f "$stamp" ] && [ -f "$here/node_modules/uplot/dist/uPlot.esm.js" ] &&
   [ ! "$here/package-lock.json" -nt "$stamp" ]; then
  exit 0
fi
command -v npm >/dev/null 2>&1 || { echo "web/setup.sh: npm is needed (Debian: apt-get install npm)" >&2; exit 1; }
cd "$here"
npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null
