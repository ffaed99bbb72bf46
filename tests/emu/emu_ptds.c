/*
 * emu_ptds.c: the per-thread default stream forms of the memsets and copies (emu_ptds.h lists
 * them), so that a library interposing on them can be tested against the driver's contract.
 *
 * Each is counted, failed and held under its own name (kvemu_calls("cuMemcpy_ptds")), then runs
 * its plain form's body, whose own entry passes uncounted (KV_EMU_ENTER_AS): a test sees which of
 * the two a caller reached. The plain form is called through its hidden alias, so a preloaded
 * library's wrapper of the plain name is never reached from here. What each does is the plain
 * form's, checks and faults included: an unmapped page it touches is CUDA_ERROR_ILLEGAL_ADDRESS.
 *
 * The stream [choice]: a _ptsz form's NULL stream is the calling thread's per-thread default
 * stream (CU_STREAM_PER_THREAD, as the real driver reads it), any other handle is passed on as it
 * is. A _ptds form runs as its plain synchronous form, with the legacy stream's capture rules
 * (tests/emu/README.md, rule 5), where the real one runs on the per-thread default stream; and
 * what the capture statistics name (last_refused) is the plain form.
 */
#include "emu_int.h"

#define KV_EMU_PT_DEFINE(X, name, ver, plain, params, args)                                      \
    KV_EMU_API CUresult name params                                                              \
    {                                                                                            \
        KV_EMU_ENTER_AS(name, plain);                                                            \
        return kv_emu_local_##plain args;                                                        \
    }                                                                                            \
    KV_EMU_ALIAS(name);

KV_EMU_PER_THREAD(KV_EMU_PT_DEFINE, _)
