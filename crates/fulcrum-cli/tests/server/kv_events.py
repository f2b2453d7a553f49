"""KV events as routers read them: `fulcrum serve --kv-events-endpoint` publishes its prefix cache's changes over
ZeroMQ in vLLM's format, and a subscriber written against vLLM's published schema (pyzmq and msgspec, the libraries
vLLM's own publisher and example subscriber use) follows the cache exactly.

Usage: kv_events.py FULCRUM_BINARY. Starts its own servers (the 270M model, a small pool so that blocks are evicted).
"""

import json
import socket
import subprocess
import sys
import time
import urllib.request

import msgspec
import zmq

from common import check

FULCRUM = sys.argv[1]
MODEL = "gemma3-270m"
BLOCK = 16


# vLLM's KV-event schema (vllm/distributed/kv_events.py): msgspec structs, array-like, tagged by class name.
class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list
    data_parallel_rank: int | None = None


class KVCacheEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
    pass


class BlockStored(KVCacheEvent):
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None


class BlockRemoved(KVCacheEvent):
    block_hashes: list[int]
    medium: str | None


class AllBlocksCleared(KVCacheEvent):
    pass


class KVEventBatch(EventBatch):
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]


# The schema of vLLM's first publishers (no medium, no LoRA name): older consumers must decode our batches too.
class OldStored(msgspec.Struct, array_like=True, tag="BlockStored"):
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None


class OldRemoved(msgspec.Struct, array_like=True, tag="BlockRemoved"):
    block_hashes: list[int]


class OldCleared(msgspec.Struct, array_like=True, tag="AllBlocksCleared"):
    pass


class OldBatch(msgspec.Struct, array_like=True):
    ts: float
    events: list[OldStored | OldRemoved | OldCleared]


decode = msgspec.msgpack.Decoder(type=KVEventBatch).decode
decode_old = msgspec.msgpack.Decoder(type=OldBatch).decode


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, path, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def start(port, *flags):
    server = subprocess.Popen(
        [FULCRUM, "serve", "-m", MODEL, "-t", "2", "--ctx", "128", "--kv-memory", "4", "--port", str(port), *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        if server.poll() is not None:
            raise AssertionError(f"the server exited: {server.stderr.read()}")
        time.sleep(0.2)
    raise AssertionError("the server did not come up")


class Follower:
    """A router's view of one replica's cache, built from its events only."""

    def __init__(self, sub, replay_port=None):
        self.sub = sub
        self.replay_port = replay_port
        self.cached = set()
        self.tokens = {}
        self.parent = {}
        self.seq = None
        self.payloads = {}

    def apply(self, batch):
        for e in batch.events:
            if isinstance(e, BlockStored):
                check_ok = len(e.token_ids) == BLOCK * len(e.block_hashes) and e.block_size == BLOCK
                assert check_ok, f"a stored event's sizes: {e}"
                assert e.medium == "CPU" and e.lora_id is None, e
                if e.parent_block_hash is not None:
                    assert e.parent_block_hash in self.cached, "a stored block's parent is cached"
                parent = e.parent_block_hash
                for i, h in enumerate(e.block_hashes):
                    self.cached.add(h)
                    self.tokens[h] = e.token_ids[i * BLOCK : (i + 1) * BLOCK]
                    self.parent[h] = parent
                    parent = h
            elif isinstance(e, BlockRemoved):
                for h in e.block_hashes:
                    assert h in self.cached, f"removed block {h} was stored before"
                    self.cached.discard(h)
            else:
                self.cached.clear()

    def predict(self, tokens):
        """The prefix-cache hit, in blocks, that a router following the events expects for `tokens`."""
        parent, hit = None, 0
        # The server keeps at least one prompt token to compute.
        for i in range((len(tokens) - 1) // BLOCK):
            chunk = tokens[i * BLOCK : (i + 1) * BLOCK]
            match = [h for h in self.cached if self.parent.get(h) == parent and self.tokens[h] == chunk]
            if not match:
                break
            parent, hit = match[0], hit + 1
        return hit

    def take(self, seq, payload):
        self.seq = seq
        self.payloads[seq] = payload
        batch = decode(payload)
        old = decode_old(payload)
        assert len(old.events) == len(batch.events) and batch.data_parallel_rank == 0
        self.apply(batch)
        return batch

    def drain(self, quiet=0.5, until=None, timeout=30):
        """Applies batches until none arrives for `quiet` seconds (and `until(batches)` holds); returns them."""
        got = []
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.sub.poll(int(quiet * 1000)) == 0:
                if until is None or until(got):
                    return got
                continue
            topic, seq, payload = self.sub.recv_multipart()
            assert topic == b"kv@fulcrum", topic
            seq = int.from_bytes(seq, "big")
            expected = 0 if self.seq is None else self.seq + 1
            if seq != expected:
                # Batches published before this subscriber joined (or lost on the way): a router asks for them
                # again, as vLLM's replay protocol offers.
                assert self.replay_port is not None, f"sequence numbers run on: {expected} then {seq}"
                missed = [(s, p) for s, p in replay(self.replay_port, expected) if s < seq]
                assert [s for s, _ in missed] == list(range(expected, seq)), "replay fills the gap"
                for s, p in missed:
                    got.append(self.take(s, p))
            got.append(self.take(seq, payload))
        raise AssertionError("timed out waiting for KV events")


def events_of(batches, kind):
    return [e for b in batches for e in b.events if isinstance(e, kind)]


def replay(port, start):
    """Every buffered batch from `start`, as vLLM's replay protocol gives them (a DEALER speaking REQ's envelope, so
    that one request can take the many replies)."""
    ctx = zmq.Context.instance()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send_multipart([b"", start.to_bytes(8, "big")])
    out = []
    while True:
        assert dealer.poll(10_000), "a replay answer"
        empty, seq, payload = dealer.recv_multipart()
        assert empty == b"", "replies carry REQ's empty delimiter"
        seq = int.from_bytes(seq, "big", signed=True)
        if seq == -1:
            break
        out.append((seq, payload))
    dealer.close(linger=0)
    return out


def bound_publisher():
    port, pub, rep = free_port(), free_port(), free_port()
    server = start(
        port,
        "--kv-events-endpoint",
        f"tcp://*:{pub}",
        "--kv-events-replay-endpoint",
        f"tcp://*:{rep}",
        "--kv-events-topic",
        "kv@fulcrum",
    )
    try:
        ctx = zmq.Context.instance()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"kv@fulcrum")
        sub.connect(f"tcp://127.0.0.1:{pub}")
        follower = Follower(sub, rep)

        prompt = (
            "The GNU General Public License is a free, copyleft license for software and other kinds of works. "
            "The licenses for most software and other practical works are designed to take away your freedom to "
            "share and change the works."
        )
        tokens = post(port, "/tokenize", {"content": prompt})["tokens"]
        full = len(tokens) // BLOCK
        r = post(port, "/v1/completions", {"prompt": prompt, "max_tokens": 4, "temperature": 0})
        batches = follower.drain(until=lambda got: events_of(got, BlockStored))
        stored = events_of(batches, BlockStored)
        check(stored[0].parent_block_hash is None, "the first stored block starts a chain (no parent)")
        chain = [h for e in stored for h in e.block_hashes]
        check(len(chain) >= full, f"every full prompt block is announced ({len(chain)} >= {full})")
        got = [t for h in chain[:full] for t in follower.tokens[h]]
        check(got == tokens[: full * BLOCK], "the announced token ids are the prompt's, block by block")
        for a, b in zip(stored, stored[1:]):
            check(b.parent_block_hash == a.block_hashes[-1], "each stored event continues the chain")
        first_chain = chain
        # The start-up batch (published before this subscriber joined, once the engine had calibrated) comes back
        # through replay.
        first = replay(rep, 0)
        check(
            len(first) >= 1 and first[0][0] == 0 and isinstance(decode(first[0][1]).events[0], AllBlocksCleared),
            "replay from 0 gives the start-up batch: all blocks cleared",
        )


        again = post(port, "/v1/completions", {"prompt": prompt, "max_tokens": 4, "temperature": 0})
        cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]
        check(cached >= BLOCK * (full - 1) and cached > 0, f"the repeat hits the cache ({cached} tokens)")
        check(again["choices"][0]["text"] == r["choices"][0]["text"], "and answers the same")
        batches = follower.drain()
        check(not events_of(batches, BlockStored), "a cache hit stores nothing new")

        # Different prompts overflow the pool: the oldest prefixes are evicted and announced as removed.
        n_blocks = None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as m:
            for line in m.read().decode().splitlines():
                if line.startswith("vllm:cache_config_info{"):
                    n_blocks = int(line.split('num_gpu_blocks="')[1].split('"')[0])
        check(n_blocks is not None, f"/metrics states the pool's blocks ({n_blocks})")
        removed = []
        for i in range(6):
            other = f"Request {i}: " + " ".join(f"word{i}x{j}" for j in range(12))
            post(port, "/v1/completions", {"prompt": other, "max_tokens": 2, "temperature": 0})
            removed += events_of(follower.drain(), BlockRemoved)
            check(len(follower.cached) <= n_blocks, f"the follower never holds more than {n_blocks} blocks")
        check(removed, f"evictions are announced ({sum(len(e.block_hashes) for e in removed)} blocks removed)")
        evicted = {h for e in removed for h in e.block_hashes}
        check(evicted & set(first_chain), "the first prompt's blocks were among those evicted")
        # What the follower believes is cached is what the server finds cached.
        for text in [prompt, other]:
            ids = post(port, "/tokenize", {"content": text})["tokens"]
            expect = follower.predict(ids)
            after = post(port, "/v1/completions", {"prompt": text, "max_tokens": 1, "temperature": 0})
            hit = after["usage"]["prompt_tokens_details"]["cached_tokens"] // BLOCK
            check(hit == expect, f"the follower predicts the server's prefix hit ({hit} blocks)")
            follower.drain()

        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/reset_prefix_cache", method="POST"))
        batches = follower.drain(until=lambda got: any(isinstance(e, AllBlocksCleared) for b in got for e in b.events))
        check(not follower.cached, "POST /reset_prefix_cache announces all blocks cleared")
        fresh = post(port, "/v1/completions", {"prompt": prompt, "max_tokens": 1, "temperature": 0})
        check(fresh["usage"]["prompt_tokens_details"]["cached_tokens"] == 0, "and nothing is cached after it")
        stored = events_of(follower.drain(until=lambda got: events_of(got, BlockStored)), BlockStored)
        check(stored[0].block_hashes[0] == first_chain[0], "a block's hash is the same every time it is stored")

        # Replay gives back exactly what was published.
        seen = min(follower.payloads)
        replayed = dict(replay(rep, seen))
        check(
            all(replayed.get(s) == p for s, p in follower.payloads.items()),
            f"replay from {seen} returns the {len(follower.payloads)} published batches byte for byte",
        )
        sub.close(linger=0)
    finally:
        server.terminate()
        server.wait(timeout=60)


def connecting_publisher():
    """vLLM's --kv-events-config form, with an endpoint to connect to: the subscriber binds, as an llm-d scheduler does."""
    port, pub = free_port(), free_port()
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.bind(f"tcp://127.0.0.1:{pub}")
    config = {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": f"tcp://127.0.0.1:{pub}",
        "topic": "kv@fulcrum",
    }
    server = start(port, "--kv-events-config", json.dumps(config))
    try:
        # No replay here: batches published before the connection (and its subscription) is up are missed, as with
        # any PUB socket; distinct requests go until one is seen.
        for i in range(40):
            post(port, "/v1/completions", {"prompt": f"hello {i} " * 20, "max_tokens": 1, "temperature": 0})
            if sub.poll(250):
                break
        topic, seq, payload = sub.recv_multipart()
        stored = events_of([decode(payload)], BlockStored)
        check(topic == b"kv@fulcrum" and stored, f"a server connecting to a bound subscriber publishes to it (batch {int.from_bytes(seq, 'big')})")
    finally:
        server.terminate()
        server.wait(timeout=60)
        sub.close(linger=0)
    bad = subprocess.run(
        [FULCRUM, "serve", "-m", MODEL, "--kv-events-config", '{"enable_kv_cache_events": true, "bogus": 1}'],
        capture_output=True,
        text=True,
        timeout=60,
    )
    check(bad.returncode != 0 and "bogus" in bad.stderr, "an unknown --kv-events-config field is an error naming it")


bound_publisher()
connecting_publisher()
print("all KV-event checks passed")
