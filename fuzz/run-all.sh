#!/usr/bin/env bash
# Runs every fuzz target for N seconds each (default 600), one after another.
# Usage: fuzz/run-all.sh [SECONDS]   (needs: cargo install cargo-fuzz)
# Targets with a folder in seeds/ start from those inputs (valid messages to mutate).
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
for t in $(RUSTC_BOOTSTRAP=1 cargo fuzz list); do
  echo "== $t for ${secs}s"
  mkdir -p "corpus/$t"
  dirs=("corpus/$t")
  if [ -d "seeds/$t" ]; then dirs+=("seeds/$t"); fi
  RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$t" "${dirs[@]}" -- -max_total_time="$secs" -rss_limit_mb=2048
done
