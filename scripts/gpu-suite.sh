#!/usr/bin/env bash
# gpu-suite.sh - check everything kvshim can check on a GPU machine, in one
# command, from the root of an already built tree (the GPU machine has no
# autotools, libtool or Check: build elsewhere and bring the tree along).
#
# Usage: scripts/gpu-suite.sh [OUTDIR]
#   OUTDIR defaults to $OUT when set, else ./gpu-results. It receives
#   tests.log, bench.txt, bench.csv, bench-32m.txt, bench-32m.csv,
#   vmm-probe.txt, handoff.txt, startup.txt and .json, span-bandwidth.txt,
#   long-prompt.txt (and their JSON), and one log per tests/gpu/ script.
#
# Steps: show the GPUs and the driver (nvidia-smi); run the test suites on
# the real driver (KVSHIM_TEST_GPU=1 tests/kvshim-tests); run the allocator
# benchmark (tests/bench/bench-alloc), the driver probe, the cross-process
# handoff (bench-handoff), the cache start-up (startup.py), bandwidth by
# handle size (span_bandwidth.py) and long-prompt TTFT with warm and cold
# pages and steady decode (long_prompt.py); run every
# tests/gpu/*.sh and tests/gpu/*.py, so later work can add GPU checks by
# dropping a file there.
# A step exiting 77 (Automake's skip: no GPU) is a SKIP. Prints a summary
# table and exits 1 when any step failed.
#
# Environment:
#   KVSHIM_SUITE_EMU=1     run on the CPU emulation instead (tests/emu put
#                          on LD_LIBRARY_PATH, the suites run as under
#                          `make check`): to try this script without a GPU.
#                          The figures it produces are not GPU figures.
#   KVSHIM_SUITE_TIMEOUT   seconds one step may run (default 1200).
#   KVSHIM_LIB             the library the ABI tests load (default
#                          .libs/libkvshim.so, as under `make check`).
#   KVSHIM_SUITE_SKIP      tests/gpu scripts not to run, by file name,
#                          separated by blanks (e.g. "hf_cb.py", the longest).
#   KVSHIM_SUITE_ONLY      the steps to run, and no others, separated by
#                          blanks: tests, bench (both page sizes), probe,
#                          handoff, startup, bandwidth, long-prompt, and
#                          tests/gpu scripts by file name; so that a suite
#                          longer than one sitting runs in parts (SKIP
#                          still applies to the scripts named). A step
#                          named whose program is not built fails.
#   A name in either that is no step (a pattern too: names are never
#   globbed) stops the suite before any step runs (exit 2), so that a
#   mistyped one cannot leave a step out unseen.
#
# tests/emu is always taken off LD_LIBRARY_PATH otherwise, so a stale
# setting cannot make the "GPU" run test the emulation. A gpu-libs/ folder
# at the root, if present, goes first on LD_LIBRARY_PATH: it carries the
# shared libraries the built programs need that the GPU machine lacks
# (libsubunit.so.0, which Check's runner links).
set -uo pipefail

outdir=$(realpath -m "${1:-${OUT:-./gpu-results}}")
cd "$(dirname "$0")/.." || exit 1
root=$PWD
emu=${KVSHIM_SUITE_EMU:-0}
step_timeout=${KVSHIM_SUITE_TIMEOUT:-1200}

steps=()
results=()
seconds=()
# the steps KVSHIM_SUITE_ONLY can name beside the tests/gpu scripts
fixed_steps=(tests bench probe handoff startup bandwidth long-prompt)
# the names in KVSHIM_SUITE_ONLY and KVSHIM_SUITE_SKIP, split once on
# blanks and never globbed (a '*' is a name, checked as any)
set -f
# shellcheck disable=SC2206
only_names=(${KVSHIM_SUITE_ONLY:-})
# shellcheck disable=SC2206
skip_names=(${KVSHIM_SUITE_SKIP:-})
set +f

# Drop every tests/emu entry (relative or absolute, or reached through a
# link) and every empty one (the current folder) from a colon list.
strip_emu() {
	local entry parts kept=()
	IFS=: read -ra parts <<<"$1"
	for entry in "${parts[@]}"; do
		case $entry in
		'' | tests/emu | tests/emu/ | */tests/emu | */tests/emu/) continue ;;
		esac
		[[ $(realpath -q "$entry") == "$root/tests/emu" ]] && continue
		kept+=("$entry")
	done
	(IFS=:; echo "${kept[*]}")
}

setup_env() {
	local path
	path=$(strip_emu "${LD_LIBRARY_PATH:-}")
	if [[ $emu == 1 ]]; then
		path=$root/tests/emu${path:+:$path}
		export KVEMU_DEVICE_BYTES=${KVEMU_DEVICE_BYTES:-16G}
	fi
	# the ABI suite dlopens the built library, as `make check` tells it to
	export KVSHIM_LIB=${KVSHIM_LIB:-$root/.libs/libkvshim.so}
	if [[ -d gpu-libs ]]; then
		path=$root/gpu-libs${path:+:$path}
	fi
	if [[ -n $path ]]; then
		export LD_LIBRARY_PATH=$path
	else
		unset LD_LIBRARY_PATH
	fi
}

# gpu_scripts: the tests/gpu scripts' file names, one a line.
gpu_scripts() {
	local f
	for f in tests/gpu/*.sh tests/gpu/*.py; do
		[[ -e $f ]] && basename "$f"
	done
}

# among NAME WORD...: whether NAME is one of the words.
among() {
	local name=$1 word
	shift
	for word in "$@"; do
		[[ $word == "$name" ]] && return 0
	done
	return 1
}

# check_names: every name in KVSHIM_SUITE_ONLY a step, every one in
# KVSHIM_SUITE_SKIP a tests/gpu script; else say which and return 1.
check_names() {
	local name bad=0 scripts
	mapfile -t scripts < <(gpu_scripts)
	for name in "${only_names[@]}"; do
		if ! among "$name" "${fixed_steps[@]}" "${scripts[@]}"; then
			echo "gpu-suite: KVSHIM_SUITE_ONLY: no step named '$name'" \
				"(steps: ${fixed_steps[*]}, or a tests/gpu script's file name)" >&2
			bad=1
		fi
	done
	for name in "${skip_names[@]}"; do
		if ! among "$name" "${scripts[@]}"; then
			echo "gpu-suite: KVSHIM_SUITE_SKIP: no tests/gpu script named '$name'" >&2
			bad=1
		fi
	done
	if [[ -n ${KVSHIM_SUITE_ONLY+set} && ${#only_names[@]} -eq 0 ]]; then
		echo "gpu-suite: KVSHIM_SUITE_ONLY is set but names no step" >&2
		bad=1
	fi
	return "$bad"
}

# wanted NAME: whether step NAME runs (KVSHIM_SUITE_ONLY unset, or names it).
wanted() {
	[[ -z ${KVSHIM_SUITE_ONLY+set} ]] || among "$1" "${only_names[@]}"
}

# named NAME: whether KVSHIM_SUITE_ONLY names step NAME.
named() {
	[[ -n ${KVSHIM_SUITE_ONLY+set} ]] && among "$1" "${only_names[@]}"
}

now_ms() {
	date +%s%3N
}

# run_step NAME LOG CMD...: run CMD with its output shown and saved to LOG,
# and record PASS (0), SKIP (77) or FAIL with the seconds it took.
run_step() {
	local name=$1 log=$2 t0 rc result
	shift 2
	echo
	echo "=== $name: $* (log: $log)"
	t0=$(now_ms)
	if command -v timeout >/dev/null; then
		timeout "$step_timeout" "$@" 2>&1 | tee "$log"
	else
		"$@" 2>&1 | tee "$log"
	fi
	rc=${PIPESTATUS[0]}
	case $rc in
	0) result=PASS ;;
	77) result=SKIP ;;
	124) result="FAIL (timed out after ${step_timeout}s)" ;;
	*) result="FAIL (exit $rc)" ;;
	esac
	steps+=("$name")
	results+=("$result")
	seconds+=("$(awk -v d="$(($(now_ms) - t0))" 'BEGIN { printf "%.1f", d / 1000 }')")
}

# A step whose program was not built fails without running.
missing_step() {
	steps+=("$1")
	results+=("FAIL ($2 not built)")
	seconds+=(0.0)
	echo "=== $1: $2 is missing: build the tree first (make check)" >&2
}

show_gpus() {
	if command -v nvidia-smi >/dev/null; then
		nvidia-smi -L
		nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
	else
		echo "nvidia-smi not found"
	fi
}

run_tests() {
	if ! wanted tests; then
		return
	elif [[ ! -x tests/kvshim-tests ]]; then
		missing_step tests tests/kvshim-tests
	elif [[ $emu == 1 ]]; then
		run_step "tests (emulation)" "$outdir/tests.log" \
			env -u KVSHIM_TEST_GPU KVEMU_DEVICE_BYTES=4G tests/kvshim-tests
	else
		run_step tests "$outdir/tests.log" \
			env KVSHIM_TEST_GPU=1 tests/kvshim-tests
	fi
}

run_bench() {
	if ! wanted bench; then
		:
	elif [[ ! -x tests/bench/bench-alloc ]]; then
		missing_step bench tests/bench/bench-alloc
	else
		run_step bench "$outdir/bench.txt" \
			tests/bench/bench-alloc --csv "$outdir/bench.csv"
		# the driver charges access and unmap per mapping: larger pages
		# trade backing granularity for fewer charges
		run_step "bench, 32 MiB pages" "$outdir/bench-32m.txt" \
			tests/bench/bench-alloc --page-mib 32 --copy-mib 256 \
			--csv "$outdir/bench-32m.csv"
	fi
	# (either, not built, is left out unless named)
	if wanted probe && [[ -x tests/bench/vmm-probe ]]; then
		run_step "driver probe" "$outdir/vmm-probe.txt" tests/bench/vmm-probe
	elif named probe; then
		missing_step "driver probe" tests/bench/vmm-probe
	fi
	# pages one process lets go of, usable by another (shared budget)
	if wanted handoff && [[ -x tests/bench/bench-handoff ]]; then
		run_step "handoff" "$outdir/handoff.txt" tests/bench/bench-handoff
	elif named handoff; then
		missing_step handoff tests/bench/bench-handoff
	fi
	if [[ $emu == 1 ]]; then
		# (a step named in KVSHIM_SUITE_ONLY is not left out unseen)
		local name
		for name in startup bandwidth long-prompt; do
			if named "$name"; then
				steps+=("$name")
				results+=("SKIP (a GPU's only)")
				seconds+=(0.0)
			fi
		done
		return
	fi
	# a KV cache built plain and on kvshim spans, phase by phase
	if wanted startup; then
		run_step "cache start-up" "$outdir/startup.txt" \
			python3 tests/bench/startup.py --json "$outdir/startup.json"
	fi
	# map cost, kernel and copy-engine bandwidth by handle size
	if wanted bandwidth; then
		run_step "span bandwidth" "$outdir/span-bandwidth.txt" \
			env KVSHIM_SUITE_OUT="$outdir" python3 tests/bench/span_bandwidth.py
	fi
	# long prompts with warm and cold pages, mapping ahead on and off, and
	# steady decode, plain against kvshim-run
	if wanted long-prompt; then
		run_step "long prompts" "$outdir/long-prompt.txt" \
			env KVSHIM_SUITE_OUT="$outdir" python3 tests/bench/long_prompt.py \
			--pages 2M,32M --no-ahead
	fi
}

# Every tests/gpu/*.sh and *.py; KVSHIM_SUITE_OUT tells them where to write.
run_gpu_scripts() {
	local f base
	export KVSHIM_SUITE_OUT=$outdir
	shopt -s nullglob
	for f in tests/gpu/*.sh tests/gpu/*.py; do
		base=$(basename "$f")
		wanted "$base" || continue
		if among "$base" "${skip_names[@]}"; then
			echo "=== gpu/$base: skipped (KVSHIM_SUITE_SKIP)"
			continue
		fi
		case $f in
		*.sh) run_step "gpu/$base" "$outdir/gpu-${base%.*}.log" bash "$f" ;;
		*.py) run_step "gpu/$base" "$outdir/gpu-${base%.*}.log" python3 "$f" ;;
		esac
	done
	shopt -u nullglob
}

summary() {
	local i failed=0
	echo
	echo "=== summary (logs in $outdir)"
	printf '%-28s %-32s %8s\n' step result seconds
	for i in "${!steps[@]}"; do
		printf '%-28s %-32s %8s\n' "${steps[i]}" "${results[i]}" "${seconds[i]}"
		[[ ${results[i]} == FAIL* ]] && failed=1
	done
	return "$failed"
}

check_names || exit 2
mkdir -p "$outdir" || exit 1
echo "kvshim GPU suite: $(date '+%Y-%m-%d %H:%M:%S %Z'), tree $root, results in $outdir"
[[ -n ${KVSHIM_SUITE_ONLY+set} ]] && echo "KVSHIM_SUITE_ONLY: ${only_names[*]}"
[[ $emu == 1 ]] && echo "KVSHIM_SUITE_EMU=1: running on the CPU emulation, not on a GPU"
show_gpus 2>&1 | tee "$outdir/gpus.txt"
setup_env
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-} KVSHIM_LIB=$KVSHIM_LIB"
run_tests
run_bench
run_gpu_scripts
summary
