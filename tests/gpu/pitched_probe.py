#!/usr/bin/env python3
"""Which pages must be mapped for a 2D copy or memset into VMM memory.

Reserves 8 pages of 2 MiB, maps some of them (one cuMemCreate handle a page,
read-write), and makes one pitched call: cuMemcpy2D from host memory, or
cuMemsetD2D32. Prints a Markdown table of the driver's answer (0: success,
1: CUDA_ERROR_INVALID_VALUE, others as CUresult numbers them) for each case,
and the card. kvshim backs the pages a copy needs before the driver sees it;
this says which those are (docs/BENCHMARKS.md, section 5). On an H200 (driver 580.159.04) every case
fit one rule: refused while a page of [pointer, pointer + the box's bytes)
is unmapped, the x and y offsets left out (one row at dstY 2 ran with page 1
unmapped; three rows were refused). Runs against the real driver, without
kvshim: python3 tests/gpu/pitched_probe.py
"""

import ctypes as C
import subprocess
import sys

PG = 2 << 20
MEMTYPE_HOST, MEMTYPE_DEVICE = 1, 2


class Copy2D(C.Structure):
    _fields_ = [("srcXInBytes", C.c_size_t), ("srcY", C.c_size_t), ("srcMemoryType", C.c_int),
                ("srcHost", C.c_void_p), ("srcDevice", C.c_uint64), ("srcArray", C.c_void_p),
                ("srcPitch", C.c_size_t),
                ("dstXInBytes", C.c_size_t), ("dstY", C.c_size_t), ("dstMemoryType", C.c_int),
                ("dstHost", C.c_void_p), ("dstDevice", C.c_uint64), ("dstArray", C.c_void_p),
                ("dstPitch", C.c_size_t),
                ("WidthInBytes", C.c_size_t), ("Height", C.c_size_t)]


class Location(C.Structure):
    _fields_ = [("type", C.c_int), ("id", C.c_int)]


class AllocProp(C.Structure):
    _fields_ = [("type", C.c_int), ("requestedHandleTypes", C.c_int), ("location", Location),
                ("win32HandleMetaData", C.c_void_p), ("compressionType", C.c_ubyte),
                ("gpuDirectRDMACapable", C.c_ubyte), ("usage", C.c_ushort),
                ("reserved", C.c_ubyte * 4)]


class AccessDesc(C.Structure):
    _fields_ = [("location", Location), ("flags", C.c_int)]


def check(rc, what):
    if rc:
        sys.exit("pitched_probe: %s failed: CUresult %d" % (what, rc))


def main():
    cu = C.CDLL("libcuda.so.1")
    cu.cuMemAddressReserve.argtypes = [C.POINTER(C.c_uint64), C.c_size_t, C.c_size_t,
                                       C.c_uint64, C.c_ulonglong]
    cu.cuMemCreate.argtypes = [C.POINTER(C.c_ulonglong), C.c_size_t, C.c_void_p, C.c_ulonglong]
    cu.cuMemMap.argtypes = [C.c_uint64, C.c_size_t, C.c_size_t, C.c_ulonglong, C.c_ulonglong]
    cu.cuMemSetAccess.argtypes = [C.c_uint64, C.c_size_t, C.c_void_p, C.c_size_t]
    cu.cuMemsetD2D32_v2.argtypes = [C.c_uint64, C.c_size_t, C.c_uint, C.c_size_t, C.c_size_t]
    cu.cuMemAlloc_v2.argtypes = [C.POINTER(C.c_uint64), C.c_size_t]
    check(cu.cuInit(0), "cuInit")
    dev, ctx = C.c_int(), C.c_void_p()
    check(cu.cuDeviceGet(C.byref(dev), 0), "cuDeviceGet")
    check(cu.cuDevicePrimaryCtxRetain(C.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
    check(cu.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    prop = AllocProp()
    prop.type, prop.location.type = 1, 1              # pinned, on device 0
    access = AccessDesc()
    access.location.type, access.flags = 1, 3         # device 0, read-write
    host = (C.c_ubyte * 64)(*([0x11] * 64))

    def span(pages):
        va = C.c_uint64()
        check(cu.cuMemAddressReserve(C.byref(va), 8 * PG, 0, 0, 0), "cuMemAddressReserve")
        for i in pages:
            h = C.c_ulonglong()
            check(cu.cuMemCreate(C.byref(h), PG, C.addressof(prop), 0), "cuMemCreate")
            check(cu.cuMemMap(va.value + i * PG, PG, 0, h.value, 0), "cuMemMap")
            check(cu.cuMemSetAccess(va.value + i * PG, PG, C.addressof(access), 1),
                  "cuMemSetAccess")
        return va.value

    def copy(dst, y=0, x=0, pitch=PG, rows=1):
        c = Copy2D()
        c.dstMemoryType, c.dstDevice, c.dstY, c.dstXInBytes, c.dstPitch = \
            MEMTYPE_DEVICE, dst, y, x, pitch
        c.srcMemoryType, c.srcHost, c.srcPitch = MEMTYPE_HOST, C.cast(host, C.c_void_p), 64
        c.WidthInBytes, c.Height = 64, rows
        return cu.cuMemcpy2D_v2(C.byref(c))

    def memset(dst, pitch=PG, rows=1):
        return cu.cuMemsetD2D32_v2(dst, pitch, 7, 16, rows)

    plain = C.c_uint64()
    check(cu.cuMemAlloc_v2(C.byref(plain), 8 * PG), "cuMemAlloc")
    cases = [
        ("cuMemAlloc'd, all", None, "copy: pointer page 0, dstY 2, 3 rows PG apart",
         lambda v: copy(plain.value, y=2, rows=3)),
        ("0 to 7", range(8), "copy: pointer page 0, dstY 2, 3 rows PG apart",
         lambda v: copy(v, y=2, rows=3)),
        ("0, 2, 3, 4", [0, 2, 3, 4], "copy: pointer page 0, dstY 2, 3 rows PG apart",
         lambda v: copy(v, y=2, rows=3)),
        ("0, 2, 3, 4", [0, 2, 3, 4], "copy: pointer page 2, 3 rows PG apart",
         lambda v: copy(v + 2 * PG, rows=3)),
        ("0, 2, 3, 4", [0, 2, 3, 4], "memset: pointer page 2, 3 rows PG apart",
         lambda v: memset(v + 2 * PG, rows=3)),
        ("0, 2", [0, 2], "copy: pointer page 0, dstY 2, 1 row (page 1 unmapped: past the "
         "row's 64 bytes from the pointer, before the row)",
         lambda v: copy(v, y=2)),
        ("0, 2, 3", [0, 2, 3], "copy: pointer page 0, dstY 2, 2 rows PG apart (page 1 within the "
         "box's bytes from the pointer)",
         lambda v: copy(v, y=2, rows=2)),
        ("2, 3, 4", [2, 3, 4], "copy: pointer page 0 (unmapped), dstX 2 PG, 1 row",
         lambda v: copy(v, x=2 * PG)),
        ("all but 1", [0, 2, 3, 4, 5, 6, 7], "copy: pointer page 0, dstY 2, 3 rows PG apart",
         lambda v: copy(v, y=2, rows=3)),
        ("2, 4, 6", [2, 4, 6], "copy: pointer page 2, 3 rows 2 PG apart (3, 5 skipped)",
         lambda v: copy(v + 2 * PG, pitch=2 * PG, rows=3)),
        ("2, 4, 6", [2, 4, 6], "memset: pointer page 2, 3 rows 2 PG apart (3, 5 skipped)",
         lambda v: memset(v + 2 * PG, pitch=2 * PG, rows=3)),
        ("2 to 6", [2, 3, 4, 5, 6], "copy: pointer page 2, 3 rows 2 PG apart",
         lambda v: copy(v + 2 * PG, pitch=2 * PG, rows=3)),
        ("2 to 6", [2, 3, 4, 5, 6], "memset: pointer page 2, 3 rows 2 PG apart",
         lambda v: memset(v + 2 * PG, pitch=2 * PG, rows=3)),
        ("2, 4", [2, 4], "copy: 1 row of 64 bytes from page 2 into page 3",
         lambda v: copy(v + 3 * PG - 32, pitch=2 * PG)),
    ]
    try:
        card = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                               "--format=csv,noheader", "-i", "0"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        card = "unknown"
    print("pitched_probe: %s; pages of 2 MiB, one handle each; 0: success, "
          "1: CUDA_ERROR_INVALID_VALUE" % card)
    print("| pages mapped | call | CUresult |")
    print("|---|---|---|")
    for label, pages, call, fn in cases:
        v = span(pages) if pages is not None else None
        print("| %s | %s | %d |" % (label, call, fn(v)))
    # last, for a fault would break the context: the bytes from the pointer
    # mapped, the box's page not (the call's code, then cuCtxSynchronize's)
    v = span([0])
    rc = copy(v, y=2)
    print("| 0 | copy: pointer page 0, dstY 2, 1 row (the row's page 2 unmapped), then "
          "cuCtxSynchronize | %d, then %d |" % (rc, cu.cuCtxSynchronize()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
