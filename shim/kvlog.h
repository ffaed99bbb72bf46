/*
 * kvlog.h - logging, as hooks/ reach it. The log belongs to the lowest
 * layer (allocator/log.h) so that every layer can use it; hooks/ compile
 * without allocator/ on their include path, so that nothing there can
 * include prim.h or the allocator's headers, and reach the log through this
 * one header. (tests/check-layers.sh allows this include and no other that
 * climbs out of its folder.)
 */
#ifndef KV_KVLOG_H
#define KV_KVLOG_H

#include "../allocator/log.h"

#endif /* KV_KVLOG_H */
