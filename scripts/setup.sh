#!/usr/bin/env bash
# Install what building kvshim needs (Debian/Ubuntu, through apt-get, only
# what is missing) and build it in the source tree. Used by demo.sh and
# test.sh; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v autoreconf >/dev/null || need+=(autoconf)
command -v automake >/dev/null || need+=(automake)
command -v libtoolize >/dev/null || need+=(libtool)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v make >/dev/null || need+=(make)
command -v cc >/dev/null || need+=(gcc)
command -v pyflakes3 >/dev/null || command -v pyflakes >/dev/null || need+=(pyflakes3)
if command -v pkg-config >/dev/null; then
	pkg-config --exists libelf || need+=(libelf-dev)
	pkg-config --exists check || need+=(check)
else
	need+=(libelf-dev check)
fi
if [ "${#need[@]}" -gt 0 ]; then
	echo "kvshim setup: installing ${need[*]}"
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo=sudo
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi

cuda=${CUDA_HOME:-/usr/local/cuda}
if [ ! -f "$cuda/include/cuda.h" ]; then
	echo "kvshim setup: no CUDA toolkit headers at $cuda/include (set CUDA_HOME)" >&2
	exit 1
fi

if [ ! -x configure ] || [ configure.ac -nt configure ] || [ Makefile.am -nt Makefile.in ]; then
	autoreconf -fi
fi
if [ ! -f Makefile ] || [ configure -nt config.status ]; then
	./configure --with-cuda="$cuda"
fi
make -j"$(nproc)"
