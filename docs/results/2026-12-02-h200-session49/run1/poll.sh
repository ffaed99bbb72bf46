#!/usr/bin/env bash
# Waits up to WAIT s for run123.sh's colocate; when it is done, packs its
# outputs under $OUT.
set -u
t0=$(date +%s)
w=/tmp/w
while [ ! -e "$w/done" ] && [ $(($(date +%s) - t0)) -lt "${WAIT:-580}" ]; do
	sleep 5
done
cp "$w"/*.txt "$OUT/" 2>/dev/null
if [ -e "$w/done" ]; then
	{ echo "colocate $(cat "$w/done")"; date; } >>"$w/card.txt"
	cp "$w"/*.txt "$OUT/"
	tar cJf "$OUT/co.tar.xz" -C "$w/co" .
	cat "$w/card.txt"; tail -120 "$w/colocate.txt"
else
	echo "colocate still running after $(($(date +%s) - t0)) s"
	cat "$w/card.txt"; grep -E "^colocate:" "$w/colocate.txt" | tail -12
fi
