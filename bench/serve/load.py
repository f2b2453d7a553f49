#!/usr/bin/env python3
"""Load generator for OpenAI-compatible servers: output tokens/s, TTFT and TBT (median and p99) at several
concurrency levels, and the shared-prefix workload's TTFT. Standard library only; loopback and bounded.

usage: load.py URL [--concurrency 1,4,8] [--requests-per-client 3] [--prompt-tokens 100] [--max-tokens 128]
               [--shared-prefix]    # a ~1,000-token system prompt with varied questions
               [--ban-tokens 151643,151645]   # logit_bias -100 on these ids: every answer runs to --max-tokens
               [--extra '{"response_format": {...}}']   # fields added to every request's body
"""
import argparse
import json
import statistics
import threading
import time
import urllib.request

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega").split()


def prompt_text(i, n_words):
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(n_words))


def stream_one(url, body):
    """Sends one streaming chat request; returns (ttft, [token arrival times], completion tokens)."""
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    arrivals, usage = [], None
    with urllib.request.urlopen(req, timeout=600) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for c in chunk.get("choices", []):
                if c.get("delta", {}).get("content"):
                    arrivals.append(time.perf_counter())
    ttft = arrivals[0] - start if arrivals else float("nan")
    return ttft, arrivals, (usage or {}).get("completion_tokens", len(arrivals))


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def run_level(url, concurrency, per_client, messages_for, max_tokens, ban_tokens=(), extra=None):
    ttfts, tbts, tokens = [], [], 0
    lock = threading.Lock()

    def client(k):
        nonlocal tokens
        for r in range(per_client):
            body = {"messages": messages_for(k * per_client + r), "max_tokens": max_tokens, "temperature": 0,
                    "stream": True, "stream_options": {"include_usage": True}}
            if ban_tokens:
                body["logit_bias"] = {str(t): -100 for t in ban_tokens}
            body.update(extra or {})
            ttft, arrivals, n = stream_one(url, body)
            with lock:
                ttfts.append(ttft)
                tbts.extend(b - a for a, b in zip(arrivals, arrivals[1:]))
                tokens += n

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"concurrency": concurrency, "output_tokens": tokens, "output_tokens_per_s": tokens / wall,
            "ttft_median_ms": 1e3 * statistics.median(ttfts), "ttft_p99_ms": 1e3 * percentile(ttfts, 99),
            "tbt_median_ms": 1e3 * statistics.median(tbts), "tbt_p99_ms": 1e3 * percentile(tbts, 99)}


def workload(shared_prefix, prompt_words):
    """The messages of request i: a ~1,000-word shared system prompt and a varied question, or its own prompt."""
    if shared_prefix:
        system = prompt_text(0, 1000)
        return lambda i: [{"role": "system", "content": system},
                          {"role": "user", "content": f"Question {i}: " + prompt_text(i + 1, 12)}]
    return lambda i: [{"role": "user", "content": prompt_text(i, prompt_words)}]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--requests-per-client", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=100)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--shared-prefix", action="store_true")
    ap.add_argument("--ban-tokens", default="", help="comma-separated token ids given logit_bias -100 (the model's "
                    "end-of-generation tokens make every answer run to --max-tokens)")
    ap.add_argument("--extra", type=json.loads, default={}, help="a JSON object of fields added to every request "
                    "(a response_format, a spec)")
    a = ap.parse_args()
    messages_for = workload(a.shared_prefix, a.prompt_tokens)
    for c in map(int, a.concurrency.split(",")):
        print(json.dumps(run_level(a.url, c, a.requests_per_client, messages_for, a.max_tokens,
                                   [int(t) for t in a.ban_tokens.split(",") if t.strip()], a.extra)), flush=True)


if __name__ == "__main__":
    main()
