#!/usr/bin/env python3
"""llama-bench's pp/tg measurement through llama.cpp's C API, as bound by the `llama-cpp-python` package.

Run by bench/compare in a child process of its own (so that its peak resident memory is llama.cpp's alone). Prints
one JSON object: the test, tokens/s of each repetition, and the llama-cpp-python and llama.cpp build it ran.

    python3 bench/llama_cpp_bench.py --model M.gguf --test tg128@d4096 --threads 2 --reps 2

The workload is llama-bench's (tools/llama-bench/llama-bench.cpp in llama.cpp): random tokens (the first one BOS
where the model adds one), one warm-up run, then per repetition: clear the cache, restore the prefilled depth, time
ppN as one batch of N tokens or tgN as N single-token decodes. Same thread count for batches and single tokens, flash
attention on (llama.cpp's golden settings in this repository), weights repacked as llama.cpp does by default.

Only the low-level bindings (`llama_cpp/llama_cpp.py`) are loaded, not the package's high-level `Llama` class, so
neither numpy nor the package's other dependencies are needed; LLAMA_CPP_LIB_PATH selects another libllama.
"""
import argparse
import ctypes
import importlib.util
import json
import pathlib
import random
import re
import sys
import time
import types


def load_bindings():
    """Imports `llama_cpp.llama_cpp` without running the package's __init__ (which pulls in numpy and more)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llama_cpp_bench: the llama_cpp package is not importable (install llama-cpp-python, or put its "
                 "source on PYTHONPATH)")
    package_dir = pathlib.Path(list(spec.submodule_search_locations)[0])
    package = types.ModuleType("llama_cpp")
    package.__path__ = [str(package_dir)]
    sys.modules["llama_cpp"] = package
    import llama_cpp.llama_cpp as bindings
    return bindings, package_dir


def package_version(package_dir):
    """The llama-cpp-python version: installed metadata, else the source's __init__.py."""
    try:
        from importlib.metadata import version, PackageNotFoundError
        try:
            return version("llama-cpp-python")
        except PackageNotFoundError:
            pass
    except ImportError:
        pass
    found = re.search(r'__version__\s*=\s*"([^"]+)"', (package_dir / "__init__.py").read_text())
    return found.group(1) if found else "unknown"


def parse_test(text):
    """'pp512', 'tg128' or 'tg128@d4096' → (kind, n, depth)."""
    found = re.fullmatch(r"(pp|tg)(\d+)(?:@d(\d+))?", text)
    if not found:
        sys.exit(f"llama_cpp_bench: bad test '{text}' (expected ppN, tgN or tgN@dD)")
    return found.group(1), int(found.group(2)), int(found.group(3) or 0)


def attach_threadpool(L, ctx, threads):
    """Gives the context a persistent ggml thread pool, as llama-bench does; without one, ggml starts and joins its
    threads on every decode. The bindings do not wrap these calls, so they are called from the libraries directly
    (the parameter struct is filled by ggml itself, so its layout need not be known here). Returns whether it worked.
    """
    lib_dir = pathlib.Path(getattr(L, "_base_path", ""))
    candidates = sorted(lib_dir.glob("libggml-cpu.so*")) + sorted(lib_dir.glob("libggml.so*"))
    for path in candidates:
        try:
            lib = ctypes.CDLL(str(path))
            new = lib.ggml_threadpool_new
            init = lib.ggml_threadpool_params_init
        except (OSError, AttributeError):
            continue
        params = ctypes.create_string_buffer(4096)  # struct ggml_threadpool_params is about 530 bytes
        init.argtypes, init.restype = [ctypes.c_void_p, ctypes.c_int], None
        new.argtypes, new.restype = [ctypes.c_void_p], ctypes.c_void_p
        init(params, threads)
        pool = new(params)
        if not pool:
            return False
        attach = L._lib.llama_attach_threadpool
        attach.argtypes, attach.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p], None
        attach(ctx, pool, pool)
        return True
    return False


class Bench:
    """One model and context, with llama-bench's prompt and generation loops."""

    def __init__(self, L, model_path, threads, n_ctx, batch, threadpool):
        self.L = L
        L.llama_backend_init()
        model_params = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(str(model_path).encode(), model_params)
        if not self.model:
            sys.exit(f"llama_cpp_bench: llama.cpp cannot load {model_path}")
        params = L.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = batch
        params.n_ubatch = batch
        params.n_threads = threads
        params.n_threads_batch = threads
        params.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, params)
        if not self.ctx:
            sys.exit("llama_cpp_bench: llama.cpp cannot create a context")
        self.threadpool = threadpool and attach_threadpool(L, self.ctx, threads)
        self.batch = batch
        vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(vocab)
        self.bos = L.llama_vocab_bos(vocab) if L.llama_vocab_get_add_bos(vocab) else None
        self.rng = random.Random(42)

    def token(self):
        return self.rng.randrange(self.n_vocab)

    def decode(self, tokens):
        array = (self.L.llama_token * len(tokens))(*tokens)
        if self.L.llama_decode(self.ctx, self.L.llama_batch_get_one(array, len(tokens))) != 0:
            sys.exit("llama_cpp_bench: llama_decode failed")

    def prompt(self, n):
        """Evaluates n random tokens in batches of at most `batch` (one batch for n ≤ batch)."""
        done = 0
        while done < n:
            size = min(n - done, self.batch)
            tokens = [self.token() for _ in range(size)]
            if done == 0 and self.bos is not None:
                tokens[0] = self.bos
            self.decode(tokens)
            done += size
        self.L.llama_synchronize(self.ctx)

    def generate(self, n):
        """Evaluates n tokens one at a time, each after the previous one's result is ready."""
        token = self.bos if self.bos is not None else self.token()
        for _ in range(n):
            self.decode([token])
            self.L.llama_synchronize(self.ctx)
            token = self.token()

    def clear(self):
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), False)

    def save(self):
        size = self.L.llama_state_seq_get_size(self.ctx, 0)
        state = (ctypes.c_uint8 * size)()
        self.L.llama_state_seq_get_data(self.ctx, state, size, 0)
        return state

    def restore(self, state):
        if self.L.llama_state_seq_set_data(self.ctx, state, len(state), 0) == 0:
            sys.exit("llama_cpp_bench: cannot restore the prefilled context")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="path to a .gguf file")
    ap.add_argument("--test", required=True, help="ppN, tgN or tgN@dD (D tokens of context before the test)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2, help="timed repetitions after the warm-up")
    ap.add_argument("--no-threadpool", action="store_true",
                    help="let ggml start its threads per decode (what the package's Llama class does) instead of "
                         "attaching a persistent pool as llama-bench does")
    args = ap.parse_args()
    kind, n, depth = parse_test(args.test)
    L, package_dir = load_bindings()

    bench = Bench(L, args.model, args.threads, n_ctx=n + depth, batch=max(512, n if kind == "pp" else 0),
                  threadpool=not args.no_threadpool)
    run = bench.prompt if kind == "pp" else bench.generate
    run(n if kind == "pp" else 1)  # warm-up, as llama-bench
    state = None
    if depth:
        bench.clear()
        bench.prompt(depth)
        state = bench.save()
    rates = []
    for _ in range(args.reps):
        bench.clear()
        if state is not None:
            bench.restore(state)
        started = time.perf_counter()
        run(n)
        rates.append(n / (time.perf_counter() - started))
    L.llama_free(bench.ctx)
    L.llama_model_free(bench.model)
    print(json.dumps({
        "engine": "llama.cpp (llama-cpp-python)",
        "version": package_version(package_dir),
        "system_info": L.llama_print_system_info().decode(errors="replace").strip(),
        "test": args.test,
        "threads": args.threads,
        "threadpool": "attached" if bench.threadpool else "ggml's per-call default",
        "samples_ts": rates,
    }))


if __name__ == "__main__":
    main()
