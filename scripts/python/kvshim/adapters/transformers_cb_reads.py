"""Hugging Face transformers (5.x) continuous batching: what one batch reads.

transformers sizes its static batch buffers for a batch that reads the
whole KV cache: ContinuousBatchingIOs._setup_static_tensors allocates read
indices of num_pages + max_batch_tokens and, with sdpa or eager attention,
an attention mask of max_batch_tokens x (num_pages + max_batch_tokens),
and writes them whole at start (num_pages = num_blocks * block_size, the
cache's capacity, sized from the memory the engine is shown). Under kvshim
the cache is lazy and shown a whole GPU: those buffers are real and huge
(45 GB for a 28-layer model on an H200) whatever the requests hold. With
CUDA graphs, its warm-up hands every block to one fake request (the adapter
would back the whole cache) and builds that request's mask through
[max_batch_tokens, num_pages] temporaries (which alone run out of memory).

With transformers_cb.py (which calls apply_read_budget once a cache is
attached), this module:
- gives the cache a read budget R, the most KV tokens one batch reads
  (choose_read_tokens): cache.num_pages, which transformers' scheduler
  takes as its cache budget per batch and its padding as a cap, becomes R,
  and the static buffers are sized for R instead of the capacity; the block
  pool and the KV spans keep the capacity transformers gave them;
- admits a request only if its prompt and max_new_tokens fit in R, else
  fails it with a message that says so (through transformers' own error
  path, as a request it cannot take); a request without max_new_tokens
  stops at R tokens;
- runs the warm-up on the padding: the fake requests' block tables name the
  write-trash block (backed with the cache), nothing is taken from the
  block manager, and the warm-up reads at most R tokens; a captured graph
  holds addresses, not index values, so replays with real blocks are as
  without kvshim;
- builds attention masks in place, without [q, k] temporaries, once a probe
  shows it gives the masks transformers' own function gives.
A piece of transformers that does not look as expected is left as it is,
with a warning; R is applied only when the buffers, the warm-up and the
admission check are all wired.
"""
import collections
import contextlib
import functools
import inspect
import os
import sys
import threading
import time

import kvshim
from kvshim.adapters import warn

READ_TOKENS_VAR = "KVSHIM_CB_READ_TOKENS"
READ_TOKENS_MAX = 1 << 30        # as kvshim-config's KV_READ_TOKENS_MAX
SIZE_MAX = (1 << 64) - 1         # the most bytes kvshim-config reads
KV_PAD_VAR = "KVSHIM_CB_KV_PAD"
# auto pads a step's KV read to a multiple of this many tokens, where
# transformers' own kv_padding_interval_size is coarser (16384 in 5.17).
# A batch's time follows the padded read, not the KV in use: on an H200
# the medium engine of tests/bench/colocate.py took 26 ms a batch below
# 16384 tokens in use and 44 above, and its engines held 3600 to 8000 on
# average (docs/BENCHMARKS.md, session 55). With 8192, two replays of the
# rate 3 trace gave the small and medium a p99 TTFT 1.23x to 1.76x shorter
# than the static split's where with 16384 they were 0.97x to 1.15x
# (session 56); the static split padded alike gained as much. The price is
# up to twice the CUDA graph keys (each padded size a set of keys), about
# 850 MiB more of the whole GPU (nvidia-smi) over three engines there.
KV_PAD_AUTO = 8192
AUTO_READ_CAP = 64 * 1024        # auto, from a workload: at most this (tokens)
AUTO_READ_SERVER = 64 * 1024     # auto, no workload known: at least this
# A request admitted this long without its first token while the bound
# that follows the share binds is taken as starved by it: transformers'
# scheduler spends the budget per batch on the requests before it
# (decoding first) and skips one whose past tokens no longer fit (likely:
# docs/BENCHMARKS.md, session 34, where an admitted request waited 10.3 s
# on an H200 with its blocks held, the engine's steps beginning every 0.03
# to 0.21 s and its other first tokens taking at most 0.5 s). 0.5 s was
# the default until session 45; 0.25 s is close to those gaps between
# steps, so a request that would have had its token soon may count as
# starved and raise the bound (a batch wider than the share, run without a
# CUDA graph). It is the default because, at a 3 GiB budget on an H200,
# three engines with it met the static split's p99 TTFT at 6 GiB for
# every model by medians where with 0.5 s the medium missed, on one
# request held 0.70 s until a raise (one run, two replays each;
# docs/BENCHMARKS.md, session 45). Not yet measured at 6 GiB.
STARVED_S = 0.25
STARVED_MS_VAR = "KVSHIM_CB_STARVED_MS"   # sets it (milliseconds)
STARVED_MS_MAX = 60000           # as kvshim-config's KV_STARVED_MS_MAX
_starved = []                    # the seconds in force, read once

_NEEDED = frozenset(("io", "runner", "scheduler"))
_wired = set()                   # pieces patched, of _NEEDED
_warned = set()
_building = threading.local()    # .hints: the workload of the cache being built
_MISSING = object()


def _warn_once(key, msg):
    if key not in _warned:
        _warned.add(key)
        warn(msg)


# ---- the read budget ----------------------------------------------------------

def _leading(digits):
    """The number ASCII digits write, as kvshim-config reads it: leading
    zeros skipped, and past 20 digits only known to be too large (Python
    refuses to convert strings of over 4300 digits)."""
    digits = digits.lstrip("0")
    return int(digits or "0") if len(digits) <= 20 else SIZE_MAX + 1


def _token_count(var, value, expected, zero):
    """A number of tokens as kvshim-config reads one (digits, an optional K
    or M suffix, 1 to 1G). Raises ValueError naming var and why: expected
    for what is not one, zero for 0, too large for a number past 1G, or
    digits past it followed by anything (kvshim-config reads the digits
    first)."""
    lead = len(value) - len(value.lstrip("0123456789"))
    if lead and _leading(value[:lead]) > READ_TOKENS_MAX:
        raise ValueError("%s=%s: too large (at most 1G tokens)" % (var, value))
    text, scale = value, 1
    if text[-1:] in ("k", "K"):
        text, scale = text[:-1], 1 << 10
    elif text[-1:] in ("m", "M"):
        text, scale = text[:-1], 1 << 20
    if not text or not text.isascii() or not text.isdigit():
        raise ValueError("%s=%s: %s" % (var, value, expected))
    n = _leading(text) * scale
    if n == 0:
        raise ValueError("%s=%s: %s" % (var, value, zero))
    if n > READ_TOKENS_MAX:
        raise ValueError("%s=%s: too large (at most 1G tokens)" % (var, value))
    return n


# KVSHIM_CB_READ_TOKENS given as a memory size: the tokens a cache of that
# many bytes holds (a static share's), counted once the cache is known
ReadBytes = collections.namedtuple("ReadBytes", "bytes text")


def _memory_size(var, value):
    """A memory size as kvshim-config reads one for KVSHIM_CB_READ_TOKENS:
    digits, then K, M, G or T, then B or iB (case aside), from 1 byte.
    Raises ValueError naming var and why."""
    expected = "expected a number of bytes, with an optional K, M, G or T suffix"
    lead = len(value) - len(value.lstrip("0123456789"))
    if not lead or not value.isascii():
        raise ValueError("%s=%s: %s" % (var, value, expected))
    n, rest = _leading(value[:lead]), value[lead:].lower()
    if n > SIZE_MAX:
        raise ValueError("%s=%s: too large" % (var, value))
    shift = {"k": 10, "m": 20, "g": 30, "t": 40}.get(rest[:1])
    if shift is None or rest[1:] not in ("b", "ib"):
        raise ValueError("%s=%s: %s" % (var, value, expected))
    if n > SIZE_MAX >> shift:
        raise ValueError("%s=%s: too large" % (var, value))
    if n == 0:
        raise ValueError("%s=%s: must be above zero (off: the whole cache)" % (var, value))
    return n << shift


def read_tokens_setting(value):
    """KVSHIM_CB_READ_TOKENS as kvshim-config reads it: "auto" (also when
    unset), "off" (or none), a number of tokens (digits, an optional K or M
    suffix, 1 to 1G), or a memory size (digits, K, M, G or T, then B or
    iB: a ReadBytes). The B tells them apart: 16M is tokens, 16MiB bytes.
    Raises ValueError naming the variable and why."""
    if value is None or value.lower() == "auto":
        return "auto"
    if value.lower() in ("off", "none"):
        return "off"
    if len(value) >= 2 and value[-1] in "bB" and value[-2] not in "0123456789":
        return ReadBytes(_memory_size(READ_TOKENS_VAR, value), value)
    return _token_count(READ_TOKENS_VAR, value, "expected auto, off, a number of tokens "
                        "(an optional K or M suffix) or a memory size (K, M, G or T, then "
                        "B or iB)", "must be above zero (off: the whole cache)")


def bytes_per_block(cache):
    """The bytes one block takes over all the cache's KV tensors, or 0 when
    they cannot be read."""
    try:
        return sum(int(cache.block_size) * t.stride(0) * t.element_size()
                   for t in list(cache.key_cache) + list(cache.value_cache))
    except (AttributeError, TypeError, ValueError):
        return 0


def memory_tokens(setting, block, per_block):
    """The tokens a cache of setting.bytes holds, whole blocks of block
    tokens of per_block bytes, as a static cache of that size is cut (a
    ReadBytes), and a phrase saying so. Raises ValueError when it holds no
    whole block, or per_block is not known (0)."""
    if per_block <= 0:
        raise ValueError("%s=%s: the cache's KV tensors cannot be read to count its tokens"
                         % (READ_TOKENS_VAR, setting.text))
    blocks = setting.bytes // per_block
    if not blocks:
        raise ValueError("%s=%s: holds no whole block of this cache (%d bytes a block)"
                         % (READ_TOKENS_VAR, setting.text, per_block))
    tokens = blocks * block
    return tokens, "%s=%s: the %d tokens a cache of %d bytes holds" % (
        READ_TOKENS_VAR, setting.text, tokens, setting.bytes)


def kv_pad_setting(value):
    """KVSHIM_CB_KV_PAD as kvshim-config reads it: None for auto (also
    when unset; apply_kv_pad makes it KV_PAD_AUTO or transformers' own),
    or a number of tokens as read_tokens_setting reads one. Raises
    ValueError naming the variable and why."""
    if value is None or value.lower() == "auto":
        return None
    expected = "expected auto or a number of tokens, with an optional K or M suffix"
    if value.lower() in ("off", "none"):
        raise ValueError("%s=%s: %s" % (KV_PAD_VAR, value, expected))
    return _token_count(KV_PAD_VAR, value, expected, expected)


def starved_ms_setting(value):
    """KVSHIM_CB_STARVED_MS as kvshim-config reads it: STARVED_S in
    milliseconds when unset, or a whole number of milliseconds from 1 to
    STARVED_MS_MAX, digits only. Raises ValueError naming the variable and
    why."""
    if value is None:
        return round(STARVED_S * 1000)
    # (kvshim-config reads the digits first: a run of them past the most
    # is too large, whatever follows)
    lead = len(value) - len(value.lstrip("0123456789"))
    if lead and _leading(value[:lead]) > STARVED_MS_MAX:
        raise ValueError("%s=%s: too large (at most %d milliseconds)"
                         % (STARVED_MS_VAR, value, STARVED_MS_MAX))
    if not lead or lead != len(value) or _leading(value) == 0:
        raise ValueError("%s=%s: expected a whole number of milliseconds from 1 to %d, digits "
                         "only" % (STARVED_MS_VAR, value, STARVED_MS_MAX))
    return _leading(value)


def starved_s():
    """The seconds an admitted request waits without its first token or
    progress before it counts as starved by the bound (see follow_share):
    KVSHIM_CB_STARVED_MS, read once; a bad value warns, and STARVED_S
    stands."""
    if not _starved:
        try:
            ms = starved_ms_setting(os.environ.get(STARVED_MS_VAR))
        except ValueError as e:
            _warn_once("starved", "%s: %g s stands" % (e, STARVED_S))
            ms = round(STARVED_S * 1000)
        _starved.append(ms / 1000.0)
    return _starved[0]


def _positive(x):
    try:
        x = int(x)
    except (TypeError, ValueError):
        return 0
    return max(x, 0)


def choose_read_tokens(setting, capacity, hints=None, max_requests=None, max_positions=None,
                       interval=0, block=0, how=None):
    """The read budget R for a cache of capacity tokens, and a phrase saying
    how it was chosen. R is None where transformers' own sizing stands:
    setting "off", or R not below the capacity.
    - a number: that many tokens, rounded up to whole blocks of block
      tokens only (transformers pads a batch's read up to it, as it pads a
      static cache's, which is whole blocks, up to its size); how, when
      given, says where the number came from (a memory size);
    - auto, with the workload generate_batch describes (its WorkloadHints:
      the longest prompt, max_new_tokens, the number of requests): every
      token the requests of one batch may hold, min(requests,
      max_requests_per_batch) x (longest prompt + max_new_tokens), at most
      AUTO_READ_CAP and never less than one whole request;
    - auto, otherwise (a server; or max_new_tokens unset): the model's
      max_position_embeddings, and at least AUTO_READ_SERVER.
    Auto's R is rounded up to a multiple of interval (transformers' own
    kv_padding_interval_size, of which auto's padding, KV_PAD_AUTO, is a
    divisor), so the widest batch reads R exactly; a number is not, so that
    a read budget set to a static cache's size gives the batch shapes (the
    CUDA graph keys) that cache gives at the same padding."""
    if setting == "off":
        return None, "%s=off" % READ_TOKENS_VAR
    prompt = _positive(getattr(hints, "max_prompt_length", 0))
    new = _positive(getattr(hints, "max_generated_length", 0))
    requests = _positive(getattr(hints, "num_requests", 0))
    if isinstance(setting, int):
        read, how = setting, how or "%s=%d" % (READ_TOKENS_VAR, setting)
    elif prompt and new and requests:
        longest = prompt + new
        per_batch = min(requests, _positive(max_requests) or requests)
        read = max(longest, min(per_batch * longest, AUTO_READ_CAP))
        how = ("auto: %d requests a batch of up to %d + %d tokens"
               % (per_batch, prompt, new))
    else:
        read = max(_positive(max_positions), AUTO_READ_SERVER)
        how = "auto: no workload given, max(max_position_embeddings, %d)" % AUTO_READ_SERVER
    # a number to whole blocks, auto to the padding's interval
    step = _positive(block) if isinstance(setting, int) else _positive(interval)
    read = _round_up(read, step)
    if read >= capacity:
        return None, "%s, not below the cache's %d tokens" % (how, capacity)
    return read, how


def apply_read_budget(cache, cb_config):
    """Give a cache kvshim manages its read budget: cache.num_pages and
    cache.kvshim_read_tokens become R, cache.kvshim_read_how says how it
    was chosen. Returns R, or None where transformers' sizing stands (R not
    below the capacity, KVSHIM_CB_READ_TOKENS=off or malformed, or a piece
    not wired, with a warning for the last two)."""
    missing = _NEEDED - _wired
    if missing:
        _warn_once("wired", "transformers continuous batching not as expected (%s not wired): "
                   "its static batch buffers are sized for the whole cache"
                   % ", ".join(sorted(missing)))
        return None
    try:
        setting = read_tokens_setting(os.environ.get(READ_TOKENS_VAR))
    except ValueError as e:
        _warn_once("setting", "%s: transformers' static batch buffers are sized for the whole "
                   "cache" % e)
        return None
    try:
        capacity = int(cache.num_pages)
        int(cache.block_size)
        max_positions = getattr(cache.config, "max_position_embeddings", None)
    except (AttributeError, TypeError, ValueError) as e:
        _warn_once("cache", "transformers continuous batching not as expected (%s): its static "
                   "batch buffers are sized for the whole cache" % e)
        return None
    how = None
    if isinstance(setting, ReadBytes):
        try:
            setting, how = memory_tokens(setting, int(cache.block_size), bytes_per_block(cache))
        except ValueError as e:
            _warn_once("setting", "%s: transformers' static batch buffers are sized for the "
                       "whole cache" % e)
            return None
    read, how = choose_read_tokens(
        setting, capacity, getattr(_building, "hints", None),
        getattr(cb_config, "max_requests_per_batch", None), max_positions,
        getattr(cb_config, "kv_padding_interval_size", 0), int(cache.block_size), how)
    cache.kvshim_read_how = how
    # kvshim's own choice follows a shared budget's share (follow_share),
    # up to R, or the whole cache where R would not be below it (a cache
    # sized for its own share of memory: as one engine of three on an
    # H200 at 6 GiB, its batches read up to 49152 tokens, where its
    # static share's read 21824, and the engine held 1.4 GiB more beside
    # its KV cache: docs/BENCHMARKS.md, session 33); on the interval
    # transformers pads a batch's KV read to (kvshim_read_most: the most
    # it reads, set only where it follows)
    if setting == "auto":
        cache.kvshim_read_most = capacity if read is None else read
        cache.kvshim_read_interval = _positive(getattr(cb_config, "kv_padding_interval_size",
                                                       0))
    if read is None:
        return None
    cache.num_pages = read
    cache.kvshim_read_tokens = read
    return read


def _request_tokens(state, read):
    """The most KV tokens request state may read: its prompt and
    max_new_tokens; for one without max_new_tokens (it stops at read:
    fit_request), what it holds now (its prompt, or position_offset once
    past it) and its next token, so that the bound need not stay at read
    while it grows a token a step; read where that cannot be told. At most
    read."""
    try:
        prompt = len(state.initial_tokens)
    except (AttributeError, TypeError):
        return read
    new = getattr(state, "max_new_tokens", None)
    if isinstance(new, int):
        return min(prompt + new, read)
    at = getattr(state, "position_offset", None)
    if isinstance(at, int) and not isinstance(at, bool) and at >= 0:
        return min(max(prompt, at) + 1, read)
    return read


def follow_share(cache, scheduler, entitled, now=None):
    """Bound what one batch of the engine reads, for its next scheduling
    pass, by its part of a shared budget. entitled: the blocks the engine
    is entitled to (kvshim_group_share_entitled: its weighted part were
    every process sharing the GPU to want all, so it moves as processes
    come and go, not with their load), or None where no budget is shared.
    cache.num_pages (transformers' budget per batch, and the cap its
    padding of a batch's read meets) becomes those blocks' tokens, within
    the read budget R its buffers are sized for (the whole cache where R
    would not be below it), and never below what the
    largest request it holds (running or waiting) reads, rounded up to the
    interval transformers pads a batch's read to: a request the
    budget per batch cannot take alone would wait forever, and one running
    would fail the engine. Alone on its GPU an engine reads up to R, as
    without sharing; beside others, up to its share, as a static share's
    cache would let it (on an H200, three engines reading at most their
    static shares met the static split's p99 TTFT where reading up to R
    did not: docs/BENCHMARKS.md, sessions 30 to 33). Only with the read
    budget chosen by kvshim (auto): a number set by the operator stands.
    A request the scheduler admitted (it holds blocks) is never starved by
    the bound: one without its first token starved_s() (STARVED_S unless
    KVSHIM_CB_STARVED_MS says otherwise) after the adapter
    first saw it admitted, or saw its prefill move on (position_offset,
    where transformers keeps it), raises the bound, pass by pass while it
    starves, by what the starving requests read (on top of the bound, at
    most the blocks in use); one starving twice as long, to what every
    admitted request reads (the blocks in use), so that transformers
    schedules them all. (A raise is a wider batch, whose CUDA graph an
    engine keeps: on an H200, raised straight to the blocks in use in a
    rate 6 warm-up, the large engine captured graphs reading 49152 tokens
    where its bound read 21824, and held 868 MiB more beside its KV cache
    than static's: docs/BENCHMARKS.md, session 35; so a batch wider than
    the share runs without one: see compute_eagerly.) now: time.monotonic(),
    for tests.
    Returns the bound, or None where it does not apply."""
    read = getattr(cache, "kvshim_read_most", None)
    if read is None:
        return None
    cap = read
    seen = getattr(cache, "kvshim_admitted_at", None)
    if seen is None:
        seen = cache.kvshim_admitted_at = {}
    binds = False
    if entitled is not None:
        block = int(cache.block_size)
        cap = max(int(entitled) * block, block)
        binds = cap < read
        if binds:
            # the share's bound before any raise (see compute_eagerly)
            cache.kvshim_share_read = cap
            now = time.monotonic() if now is None else now
            starved = starved_s()
            most, starving, longest = _held(scheduler, seen, now, read, starved)
            # transformers pads a batch's read to its interval, at most
            # num_pages, and keys a CUDA graph on the padded size: raised
            # for a request, the bound goes to the interval (the share's
            # moves only as processes come and go), or each new largest
            # request would be a new key
            step = _positive(getattr(cache, "kvshim_read_interval", 0))
            if starving:
                in_use = _tokens_in_use(cache, read)
                # on top of the bound in force, padded as below: on top of
                # the largest request's read alone, the padding would take
                # a raise smaller than its slack back
                force = min(cap if most <= cap else _round_up(most, step), read)
                most = max(most, in_use if longest >= 2 * starved
                           else min(force + starving, in_use))
            if most > cap:
                cap = _round_up(most, step)
        cap = min(cap, read)
    # the share binding no more: what was seen is forgotten (not when the
    # guard raised the bound to R, or a request still starving would wait
    # starved_s() again at the share)
    if not binds:
        seen.clear()
        cache.kvshim_share_read = None
    cache.num_pages = cap
    return cap


def _round_up(n, step):
    """n rounded up to a multiple of step (n itself for no step)."""
    return -(-n // step) * step if step else n


def _held(scheduler, seen, now, read, starved):
    """What the scheduler's requests (running or waiting) read at most, and
    of the admitted ones without their first token that have starved
    starved seconds (see _starved_for), what they read in all and the longest
    they have waited: (most, starving, longest). seen keeps only the
    requests admitted without their first token."""
    most, starving, longest, live = 0, 0, 0.0, set()
    for queue in ("active_requests", "waiting_requests"):
        for state in list((getattr(scheduler, queue, None) or {}).values()):
            most = max(most, _request_tokens(state, read))
            if queue != "active_requests" or not _no_token_yet(state):
                continue
            live.add(state.request_id)
            waited = _starved_for(seen, state, now)
            if waited >= starved:
                starving += _request_tokens(state, read)
                longest = max(longest, waited)
    for rid in [r for r in seen if r not in live]:
        del seen[rid]
    return most, starving, longest


def _starved_for(seen, state, now):
    """The seconds admitted request state, without its first token, has
    waited since seen (request id: (since, position_offset)) first had it
    or its prefill last moved on (a prefill in chunks moves every pass it
    is scheduled); seen is kept up to date."""
    at = getattr(state, "position_offset", None)
    since, was = seen.get(state.request_id, (now, at))
    if at != was:
        since = now
    seen[state.request_id] = (since, at)
    return now - since


def _no_token_yet(state):
    """Whether request state is one transformers admitted that has not
    given its first token (False where that cannot be told)."""
    try:
        return len(state.generated_tokens) == 0 and state.request_id is not None
    except (AttributeError, TypeError):
        return False


def _tokens_in_use(cache, read):
    """The KV tokens the blocks in use hold (the cache's less its free
    ones, in which its prefix cache's count), at least what every
    admitted request reads; read where that cannot be told."""
    try:
        used = int(cache.num_blocks) - int(cache._block_manager.num_free_blocks)
        return max(used, 0) * int(cache.block_size)
    except (AttributeError, TypeError, ValueError):
        return read


def auto_kv_pad(own):
    """The padding KVSHIM_CB_KV_PAD=auto sets where transformers' own
    kv_padding_interval_size is own: KV_PAD_AUTO where own is a coarser
    whole number, else None (its own stands). A plain run that is to read
    kvshim's shapes pads by it too (tests/bench/built_tree.py)."""
    if not isinstance(own, int) or isinstance(own, bool) or own <= KV_PAD_AUTO:
        return None
    return KV_PAD_AUTO


def apply_kv_pad(cache, cb_config):
    """Pad each step's KV read to a multiple of KVSHIM_CB_KV_PAD tokens (at
    most cache.num_pages, the read budget where it applies): transformers'
    kv_padding_interval_size, which with the padded queries and longest KV
    keys its CUDA graphs. Under kvshim an engine may read more than a
    static share's cache holds, and each KV size it meets is a key it
    captures once; a coarser padding meets fewer, a finer one shorter
    steps. auto is KV_PAD_AUTO where transformers' own is coarser.
    cache.kvshim_kv_pad becomes the padding set. Returns it, or None where
    transformers' own stands (auto with its own as fine, a malformed value
    or a continuous batching config without the setting, with a warning
    for the last two where a number was set)."""
    try:
        pad = kv_pad_setting(os.environ.get(KV_PAD_VAR))
    except ValueError as e:
        _warn_once("kv_pad", "%s: transformers' own KV padding is kept" % e)
        return None
    if pad is None:
        pad = auto_kv_pad(getattr(cb_config, "kv_padding_interval_size", None))
        if pad is None:
            return None
    if not isinstance(getattr(cb_config, "kv_padding_interval_size", None), int):
        _warn_once("kv_pad_config", "transformers continuous batching not as expected (no "
                   "kv_padding_interval_size in its config): %s=%d is not applied"
                   % (KV_PAD_VAR, pad))
        return None
    cb_config.kv_padding_interval_size = pad
    cache.kvshim_kv_pad = pad
    cache.kvshim_read_interval = pad
    return pad


def fit_request(state, read, how=""):
    """Check a request against the read budget as it joins the scheduler.
    Raises ValueError for one whose prompt and max_new_tokens pass R: the
    scheduler skips a request whose past tokens pass its budget (it would
    wait forever), and a longer one would pass the key length batches are
    padded to (capped at R). A request without max_new_tokens is made to
    stop at R tokens."""
    prompt = len(state.initial_tokens)
    new = state.max_new_tokens
    if new is not None and prompt + new <= read:
        return
    if new is None and prompt <= read:
        limit = getattr(state, "_new_tokens_limit", None)
        if not isinstance(limit, int):
            _warn_once("unbounded", "transformers: a request without max_new_tokens waits "
                       "forever once it passes %d tokens (%s)" % (read, READ_TOKENS_VAR))
        elif limit > read - prompt:
            state._new_tokens_limit = read - prompt
            _warn_once("unbounded", "transformers: requests without max_new_tokens stop at %d "
                       "tokens, the most one batch reads (%s; %s)" % (read, how, READ_TOKENS_VAR))
        return
    raise ValueError("kvshim: request %s of %d prompt tokens and %s new ones passes the %d KV "
                     "tokens one batch reads (%s): it could never be scheduled; set %s higher"
                     % (state.request_id, prompt, "unlimited" if new is None else new, read,
                        how, READ_TOKENS_VAR))


# ---- the static buffers -------------------------------------------------------

class _ReadBudgetView:
    """The cache as ContinuousBatchingIOs sizes its buffers from it: its
    num_blocks covers the read budget; everything else is the cache's."""

    def __init__(self, cache, read):
        self._cache = cache
        self.num_blocks = -(-read // cache.block_size)

    def __getattr__(self, name):
        return getattr(self._cache, name)


def _mask_in_place(torch, orig):
    """transformers' build_attention_mask writing each request's block in
    place (fill, then triu): no [seqlen_q, seqlen_k] temporaries. Sliding
    windows go to the original."""
    @functools.wraps(orig)
    def build_attention_mask(attention_mask, cumulative_seqlens_q, cumulative_seqlens_k,
                             sliding_window=1):
        if sliding_window > 1:
            return orig(attention_mask, cumulative_seqlens_q, cumulative_seqlens_k,
                        sliding_window)
        low = torch.finfo(attention_mask.dtype).min
        for i in range(len(cumulative_seqlens_q) - 1):
            q0, q1 = cumulative_seqlens_q[i], cumulative_seqlens_q[i + 1]
            k0, k1 = cumulative_seqlens_k[i], cumulative_seqlens_k[i + 1]
            diagonal = (k1 - k0) - (q1 - q0) + 1 if 1 <= q1 - q0 < k1 - k0 else 1
            block = attention_mask[..., q0:q1, k0:k1]
            block.fill_(low)
            block.triu_(diagonal)
        return None
    return build_attention_mask


# requests of (query, key) lengths covering prefill, chunked prefill and decode
_MASK_PROBES = (([0, 3, 4, 9], [0, 5, 9, 14]), ([0, 4], [0, 4]), ([0, 1, 2, 5], [0, 7, 8, 11]))


def _same_masks(torch, orig, mine):
    """Whether mine writes the masks orig writes, on small CPU masks."""
    for q, k in _MASK_PROBES:
        theirs = torch.zeros((1, 1, q[-1], k[-1] + 3), dtype=torch.bfloat16)
        ours = theirs.clone()
        orig(theirs, q, k, 1)
        mine(ours, q, k, 1)
        if not torch.equal(theirs, ours):
            return False
    return True


_MASK_PARAMS = ["attention_mask", "cumulative_seqlens_q", "cumulative_seqlens_k", "sliding_window"]


def _params(fn):
    """The names of fn's parameters, or None where fn has none to read (not
    a function, or one inspect cannot read)."""
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return None


def _patch_mask(mod):
    orig = getattr(mod, "build_attention_mask", None)
    torch = getattr(mod, "torch", None)
    params = _params(orig)
    why = None
    if torch is None or params != _MASK_PARAMS:
        why = "build_attention_mask%s" % (" takes %s" % params if params else " not found")
    else:
        mine = _mask_in_place(torch, orig)
        try:
            same = _same_masks(torch, orig, mine)
        except Exception as e:  # a probe that cannot run says no
            same, why = False, "build_attention_mask probe failed: %s" % e
        if same:
            mod.build_attention_mask = mine
            return
        why = why or "build_attention_mask builds other masks"
    warn("transformers continuous batching not as expected (%s): attention masks are built "
         "with transformers' temporaries" % why)


def patch_io_module(mod):
    """ContinuousBatchingIOs sizes its static buffers for the cache's read
    budget (kvshim_read_tokens) instead of its capacity; masks are built in
    place."""
    cls = getattr(mod, "ContinuousBatchingIOs", None)
    orig = getattr(cls, "_setup_static_tensors", None)
    if not callable(orig):
        warn("transformers continuous batching not as expected (no ContinuousBatchingIOs."
             "_setup_static_tensors): its static batch buffers are sized for the whole cache")
        return
    if vars(cls).get("_kvshim_patched"):
        return

    @functools.wraps(orig)
    def _setup_static_tensors(self, *args, **kwargs):
        cache = getattr(self, "cache", None)
        read = getattr(cache, "kvshim_read_tokens", None)
        if read is None:
            return orig(self, *args, **kwargs)
        self.cache = _ReadBudgetView(cache, read)
        try:
            return orig(self, *args, **kwargs)
        finally:
            self.cache = cache

    cls._setup_static_tensors = _setup_static_tensors
    cls._kvshim_patched = True
    _wired.add("io")
    _patch_mask(mod)


# ---- the warm-up --------------------------------------------------------------

@contextlib.contextmanager
def _warmup_on_padding(cache):
    """While transformers warms up: a fake request's block table names the
    write-trash block (the last padding block, backed with the cache, which
    padding tokens write and nothing reads as KV) for every block it asks
    for, and the block manager gives nothing. Yields False, changing
    nothing, when the cache's layer groups keep no block tables."""
    try:
        trash = int(cache.num_blocks) + 1
        block_size = int(cache.block_size)
        groups = list(cache.group_cache_managers)
        tables = [cm.block_table for cm in groups]
    except (AttributeError, TypeError, ValueError):
        tables = None
    if not tables or not all(isinstance(t, dict) for t in tables):
        yield False
        return
    # a sliding window's table is indexed over the whole window
    least = [-(-_positive(getattr(cm, "sliding_window", 0)) // block_size) for cm in groups]

    def allocate_blocks(n_blocks, request_id, allocated_blocks):
        for table, n in zip(tables, least):
            table.setdefault(request_id, []).extend([trash] * max(n_blocks, n))
        return n_blocks

    def free_blocks(request_id):
        for table in tables:
            table.pop(request_id, None)

    saved = {name: vars(cache).get(name, _MISSING) for name in ("allocate_blocks", "free_blocks")}
    cache.allocate_blocks, cache.free_blocks = allocate_blocks, free_blocks
    try:
        yield True
    finally:
        for name, value in saved.items():
            if value is _MISSING:
                delattr(cache, name)
            else:
                setattr(cache, name, value)


_WARMUP_PARAMS = ["self", "model", "num_q_tokens", "max_kv_read"]


def patch_runner_module(mod):
    """ModelRunner.run_one_warmup, on a cache kvshim manages, warms up with a
    request of R tokens instead of the whole cache (padded, its reads fill
    the buffers as the largest batch does) and runs on the padding block;
    ModelRunner.compute_batch runs a batch wider than the engine's share
    without a CUDA graph (_patch_compute). Each is patched where it looks as
    expected, the one without the other."""
    cls = getattr(mod, "ModelRunner", None)
    if isinstance(cls, type):
        _patch_compute(cls)
    orig = getattr(cls, "run_one_warmup", None)
    params = _params(orig)
    if params != _WARMUP_PARAMS:
        warn("transformers continuous batching not as expected (ModelRunner.run_one_warmup %s): "
             "the warm-up backs every block it reads" % ("takes %s" % params if params
                                                         else "not found"))
        return
    if vars(cls).get("_kvshim_patched"):
        return

    @functools.wraps(orig)
    def run_one_warmup(self, model, num_q_tokens, max_kv_read):
        cache = getattr(self, "cache", None)
        if getattr(cache, "kvshim_tracker", None) is None:
            return orig(self, model=model, num_q_tokens=num_q_tokens, max_kv_read=max_kv_read)
        if max_kv_read is not None:
            # transformers warms up with a request of the whole cache
            # (num_pages - num_q_tokens cached, num_q_tokens new): one of R
            max_kv_read = min(max_kv_read, max(cache.num_pages - num_q_tokens, 0))
        with _warmup_on_padding(cache) as on_padding:
            if not on_padding:
                _warn_once("warmup", "transformers continuous batching not as expected (no "
                           "block tables): the warm-up backs the blocks it reads")
            return orig(self, model=model, num_q_tokens=num_q_tokens, max_kv_read=max_kv_read)

    cls.run_one_warmup = run_one_warmup
    cls._kvshim_patched = True
    _wired.add("runner")


_COMPUTE_PARAMS = ["self", "model", "batch_data"]


def compute_eagerly(runner):
    """Whether the batch runner is about to compute (its IOs prepared)
    reads more KV tokens than the engine's share of a shared budget
    (cache.kvshim_share_read, which follow_share keeps) on transformers'
    varlen path with CUDA graphs, and no graph is kept for its shape: such
    a batch is run without capturing one. It is wider than the share
    because follow_share raised the bound for a starving request, or for
    one that reads more than the share alone; transformers would capture
    a graph for it into the pool all its graphs share and keep it, and the
    pool's memory sits outside the KV budget (on an H200 the large engine
    held 1100 MiB more beside its KV cache than static's after a warm-up
    in which it captured 13 graphs wider than its share: docs/BENCHMARKS.md,
    session 40). A graph kept for the shape (captured while the share was
    larger) is replayed. Running without one keeps no graph pool's memory,
    but the batch's own temporaries come from PyTorch's caching allocator,
    whose cache stays outside the budget too until PyTorch gives it back
    (torch.cuda.graph empties it as a capture begins; session 41: +568 MiB
    for 23 s, likely after one such batch): give_back_cache does after
    each such batch. False where any of it cannot be told (warned once)."""
    cache = getattr(runner, "cache", None)
    share = getattr(cache, "kvshim_share_read", None)
    if share is None or getattr(runner, "use_cuda_graph_varlen", False) is not True:
        return False
    ios = getattr(runner, "inputs_and_outputs", None)
    try:
        pairs = getattr(ios, "io_pairs", None)
        if pairs is not None:           # asynchronous: the pair about to run
            ios = pairs[ios.current_pair].device_io
        # (the decode path's graphs read no KV: their key has none)
        if ios.use_block_table or int(ios.max_kv_read) <= share:
            return False
        return ios.graphs.get_graph(ios._get_graph_key()) is None
    except (AttributeError, TypeError, ValueError, IndexError, KeyError) as e:
        _warn_once("eager", "transformers continuous batching not as expected (its batch "
                   "IOs: %s: %s): a batch wider than the engine's share is captured as a "
                   "CUDA graph, whose memory the engine keeps" % (type(e).__name__, e))
        return False


def _capturing():
    """Whether a stream of this process captures a CUDA graph now (kvshim
    sees every capture: kvshim.capture_wait); False where kvshim cannot
    tell."""
    try:
        return not kvshim.capture_wait(0)
    except (OSError, AttributeError, kvshim.KvshimError):
        return False


def give_back_cache():
    """PyTorch's cache of free device memory given back to the driver
    (torch.cuda.empty_cache, as torch.cuda.graph does when a capture
    begins): what a batch run without a graph took for its temporaries
    (compute_eagerly). When it frees memory it waits for the device's
    queued work (cudaFree's), which with transformers' asynchronous
    batching costs that step's overlap of host and device. Not while a
    stream of the process captures (another engine's thread, say): a
    capture in CUDA's global mode forbids those frees and syncs, a
    forbidden call may end it, and a recent PyTorch frees nothing then;
    the cache goes at the next such batch or capture. Returns whether
    PyTorch's reserved memory fell: not without torch or with CUDA not set
    up, not beside a capture, nor where PyTorch refused (warned once: a
    CUDA error there may be the batch's own, which its engine meets next)."""
    cuda = getattr(sys.modules.get("torch"), "cuda", None)
    ready = getattr(cuda, "is_initialized", None)
    empty = getattr(cuda, "empty_cache", None)
    reserved = getattr(cuda, "memory_reserved", None)
    try:
        if not all(map(callable, (ready, empty, reserved))) or not ready() or _capturing():
            return False
        before = reserved()
        empty()
        return reserved() < before
    except RuntimeError as e:
        _warn_once("empty", "PyTorch's cache not given back after a batch run without a CUDA "
                   "graph (%s: %s): its temporaries stay beside the KV budget" %
                   (type(e).__name__, e))
        return False


def _patch_compute(cls):
    """ModelRunner.compute_batch runs a batch compute_eagerly picks as
    transformers runs one without CUDA graphs, counts it in the cache's
    tracker (eager), and then, unless KVSHIM_CB_GIVE_BACK is off, gives
    PyTorch's cache back (give_back_cache; counted as cache_given_back)."""
    if vars(cls).get("_kvshim_compute_patched"):
        return
    orig = getattr(cls, "compute_batch", None)
    params = _params(orig)
    if params != _COMPUTE_PARAMS:
        warn("transformers continuous batching not as expected (ModelRunner.compute_batch %s): "
             "a batch wider than the engine's share is captured as a CUDA graph, whose memory "
             "the engine keeps" % ("takes %s" % params if params else "not found"))
        return

    @functools.wraps(orig)
    def compute_batch(self, model, batch_data):
        if not compute_eagerly(self):
            return orig(self, model, batch_data)
        tracker = getattr(self.cache, "kvshim_tracker", None)
        if tracker is not None:
            tracker.eager += 1
        was, self.use_cuda_graph_varlen = self.use_cuda_graph_varlen, False
        try:
            out = orig(self, model, batch_data)
        finally:
            self.use_cuda_graph_varlen = was
        # (imported here: transformers_cb imports this module)
        from kvshim.adapters.transformers_cb import give_back_on
        if give_back_on() and give_back_cache() and tracker is not None:
            tracker.cache_given_back += 1
        return out

    cls.compute_batch = compute_batch
    cls._kvshim_compute_patched = True


# ---- requests and workloads -----------------------------------------------------

def patch_scheduler_module(mod):
    """Scheduler.add_waiting_request checks each request against the read
    budget (fit_request); transformers fails one it refuses, with the
    message, as a request it cannot take."""
    cls = getattr(mod, "Scheduler", None)
    orig = getattr(cls, "add_waiting_request", None)
    if not callable(orig):
        warn("transformers continuous batching not as expected (no Scheduler."
             "add_waiting_request): its static batch buffers are sized for the whole cache")
        return
    if vars(cls).get("_kvshim_patched"):
        return

    @functools.wraps(orig)
    def add_waiting_request(self, state, *args, **kwargs):
        cache = getattr(self, "cache", None)
        read = getattr(cache, "kvshim_read_tokens", None)
        if read is not None:
            fit_request(state, read, getattr(cache, "kvshim_read_how", ""))
        return orig(self, state, *args, **kwargs)

    cls.add_waiting_request = add_waiting_request
    cls._kvshim_patched = True
    _wired.add("scheduler")


def patch_manager(mod):
    """ContinuousBatchingManager keeps the workload hints generate_batch
    passes it, for the read budget of the cache it builds."""
    cls = getattr(mod, "ContinuousBatchingManager", None)
    init = getattr(cls, "__init__", None)
    create = getattr(cls, "_create_batch_processor", None)
    try:
        sig = inspect.signature(init)
    except (TypeError, ValueError):
        sig = None
    if sig is None or "workload_hints" not in sig.parameters or not callable(create):
        warn("transformers continuous batching not as expected (no workload hints): the read "
             "budget is chosen without generate_batch's workload")
        return
    if vars(cls).get("_kvshim_hints_patched"):
        return

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        try:
            hints = sig.bind(self, *args, **kwargs).arguments.get("workload_hints")
        except TypeError:
            hints = None
        self._kvshim_hints = hints

    @functools.wraps(create)
    def _create_batch_processor(self, *args, **kwargs):
        _building.hints = getattr(self, "_kvshim_hints", None)
        try:
            return create(self, *args, **kwargs)
        finally:
            _building.hints = None

    cls.__init__ = __init__
    cls._create_batch_processor = _create_batch_processor
    cls._kvshim_hints_patched = True
