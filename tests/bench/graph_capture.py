"""The CUDA graphs a transformers continuous-batching engine can meet,
captured before it serves, as a production engine captures its batch sizes
at start: colocate.py's --capture-keys, in every configuration alike.

transformers 5.17 keys a batch's graph on its queries padded to
q_padding_interval_size (64), the KV it reads padded to
kv_padding_interval_size (16384; kvshim's adapter sets 8192), at most the cache's num_pages
(model_runner.py, maybe_pad_inputs), and its longest KV padded to a power
of 2 from 1024, at most num_pages (input_outputs.py, get_model_kwargs and
_get_graph_key), and captures one the first time it meets a key
(docs/BENCHMARKS.md, session 26). A model with full attention only: a
sliding window's layer group adds its own longest KV to the key. Its own warm-up captures the widest key alone, and colocate's
engines do not run it. Here, for each key, one fake request of one query
token, with as many past tokens as make its KV pad to the key's longest,
is padded to the key's queries and KV read, as ModelRunner.run_one_warmup
pads its own, and the runner captures the graph (compute_batch); a key the
batch does not come out as is skipped, and counted. Batches on the decode
fast path (flash attention's block table, keyed on their queries alone)
are not covered: colocate's engines run sdpa, which has none; nor is
asynchronous batching (two IO pairs, a batch's results read from one while
the other runs). Imports nothing of transformers until capture_all runs."""

import contextlib
import time

LONGEST_LEAST = 1024    # transformers pads the longest KV to a power of 2 from this


def _intervals(step, most):
    """The multiples of step below most, and most itself: the sizes
    transformers pads to with that interval, capped at most."""
    sizes = {min(j * step, most) for j in range(1, -(-most // step) + 1)}
    return sorted(sizes)


def varlen_keys(max_batch_tokens, read_most, q_step, kv_step, longest):
    """Every key of a batch without the decode fast path that an engine
    whose batches take at most max_batch_tokens queries and read at most
    read_most KV tokens (num_pages) can form, its requests holding at most
    longest tokens each: (queries, KV read, longest KV), padded as
    transformers pads them, the widest first (as transformers' own warm-up
    captures the widest, so that the graphs' shared pool grows least). A
    key whose longest KV no request within its KV read and queries pads to
    is left out: no batch forms it. Some kept may be formed by no batch
    either (a KV read above the first interval that as many requests as
    its queries, each within the longest, cannot fill): each costs a
    capture, not a wrong graph."""
    if min(max_batch_tokens, read_most, q_step, kv_step, longest) <= 0:
        raise ValueError("varlen_keys: sizes must be positive (got %r)"
                         % ((max_batch_tokens, read_most, q_step, kv_step, longest),))
    queries = _intervals(q_step, max_batch_tokens)
    reads = _intervals(kv_step, read_most)
    longest_kv, p = set(), LONGEST_LEAST
    while True:
        longest_kv.add(min(p, read_most))
        if p >= longest:
            break
        p *= 2
    # the fewest tokens a request pads to each longest KV from
    least = dict(zip(sorted(longest_kv), [1] + [l + 1 for l in sorted(longest_kv)[:-1]]))
    keys = [(q, k, l) for q in queries for k in reads for l in sorted(longest_kv)
            if least[l] <= k + q]
    keys.sort(key=lambda t: (t[0] * (t[1] + t[0]), t[2]), reverse=True)
    return keys


def capture_all(proc, model, keys, num_pages, on_padding=None, make_states=None,
                prefilling=None):
    """Capture, on transformers' batch processor proc (on its generation
    thread, between steps: nothing else may use its IOs meanwhile), a CUDA
    graph for each of keys (see varlen_keys, for a read of num_pages
    tokens) its graph cache lacks, with the cache's num_pages (which caps
    the longest KV's padding; under kvshim its adapter moves it pass by
    pass) at num_pages meanwhile. on_padding(cache): a context in which the
    fake requests' blocks are taken, yielding whether it could (kvshim's
    adapter: on its padding block, backing nothing); None: from the cache,
    as transformers' own warm-up takes them. make_states and prefilling
    stand for transformers' create_warmup_future_states and
    RequestStatus.PREFILLING (tests). Every block taken is given back and
    num_pages put back, whatever fails. Raises ValueError with
    asynchronous batching. Returns a dict: captured, present (in the cache
    already), eager (run without a graph: under kvshim, a batch wider than
    the engine's share), skipped (no blocks for the fake request, or the
    batch keyed otherwise), on_padding (None without one), seconds."""
    io = proc.inputs_and_outputs
    if getattr(io, "io_pairs", None) is not None:
        raise ValueError("asynchronous batching (two IO pairs): not covered")
    if make_states is None or prefilling is None:
        from transformers.generation.continuous_batching.requests import RequestStatus
        from transformers.generation.continuous_batching.utils import create_warmup_future_states
        make_states = make_states or create_warmup_future_states
        prefilling = prefilling or RequestStatus.PREFILLING
    cache, runner = proc.cache, proc.model_runner
    done = dict(captured=0, present=0, eager=0, skipped=0, on_padding=None, seconds=0.0)
    t0, was = time.perf_counter(), cache.num_pages
    cache.num_pages = num_pages
    try:
        with (on_padding(cache) if on_padding is not None
              else contextlib.nullcontext()) as padded:
            if on_padding is not None:
                done["on_padding"] = bool(padded)
            for key in keys:
                if io.graphs.get_graph(key) is not None:
                    done["present"] += 1
                    continue
                q, kv, longest = key
                # its tokens within what the batch reads (padded to longest)
                states = make_states(1, prefilling, 1, min(longest, kv + q) - 1, cache)
                try:
                    if not states:
                        done["skipped"] += 1
                        continue
                    io.prepare_batch_tensors(states, runner.logit_processor, False, q, kv,
                                             use_padding=True)
                    batch = io.get_model_kwargs(use_padding=True)
                    if tuple(io._get_graph_key()) != tuple(key):
                        done["skipped"] += 1
                        continue
                    runner.compute_batch(model, batch)
                    done["captured" if io.graphs.get_graph(key) is not None else "eager"] += 1
                finally:
                    for fs in states:
                        cache.free_blocks(fs.state.request_id)
    finally:
        cache.num_pages = was
        done["seconds"] = time.perf_counter() - t0
    return done
