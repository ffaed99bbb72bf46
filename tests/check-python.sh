#!/bin/sh
# The Python sources read by pyflakes: a name used but never defined, or a
# function defined twice (the later replaces the earlier), fails here
# rather than on the GPU machine, where paths the CPU emulation cannot run
# (torch, transformers) first meet them. Skipped (77) without pyflakes;
# scripts/setup.sh installs it (Debian's pyflakes3).
src=${srcdir:-.}
if command -v pyflakes3 >/dev/null 2>&1; then
	flakes=pyflakes3
elif command -v pyflakes >/dev/null 2>&1; then
	flakes=pyflakes
else
	echo "check-python: pyflakes not found (apt-get install pyflakes3): skipped"
	exit 77
fi
cd "$src" || exit 1
files=$(find scripts tests -name '*.py' -not -path '*/.*' | sort)
if ! out=$($flakes $files scripts/kvshim-top 2>&1); then
	echo "$out"
	echo "check-python: pyflakes found the above"
	exit 1
fi
echo "check-python: $(echo $files | wc -w) sources and kvshim-top clean"
