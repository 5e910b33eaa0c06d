#!/usr/bin/env bash
# make book on a busy machine: BURNERS processes (default 2) spin on the CPU beside a build that
# executes every chapter afresh at PRESET (default ci). Slower, never failed: no cell has a time
# limit, and the stall watchdog only acts on a kernel that stops using the CPU while a cell
# waits. Prints the build's time and exit status; the burners are stopped on exit.
#
#   benchmarks/book_under_load.sh            # 2 burners, ci preset
#   BURNERS=4 PRESET=cpu benchmarks/book_under_load.sh
set -uo pipefail
cd "$(dirname "$0")/.."
BURNERS=${BURNERS:-2}
PRESET=${PRESET:-ci}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null' EXIT
for _ in $(seq "$BURNERS"); do
  python3 -c "while True: pass" &
  pids+=($!)
done
echo "started $BURNERS CPU burners: ${pids[*]}"
make install >/dev/null
start=$(date +%s)
WIDENETS_PRESET=$PRESET .venv/bin/python scripts/build_book.py --force
rc=$?
echo "make book at $PRESET beside $BURNERS burners: exit $rc after $(( $(date +%s) - start )) s"
exit $rc
