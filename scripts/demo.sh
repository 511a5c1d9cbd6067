#!/usr/bin/env bash
# The main job, from a fresh clone on a fresh machine: set-up, then build gotrace and the bundled
# demo Go program, run the demo, and point gotrace at the running process.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
exec cargo xtask demo
