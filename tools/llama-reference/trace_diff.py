#!/usr/bin/env python3
"""Compares two tensor traces (llama.cpp's from llama_trace, Fulcrum's from FULCRUM_TRACE=FILE) op by op and prints,
for each step and named tensor, the largest absolute difference and the share of bit-identical values.
Usage: trace_diff.py LLAMA_TRACE FULCRUM_TRACE [MAX_STEP]"""
import struct
import sys
from collections import defaultdict

import numpy as np


def read(path):
    data = open(path, "rb").read()
    out, seen, o = [], defaultdict(int), 0
    prev = None
    while o < len(data):
        step, n = struct.unpack_from("<iI", data, o)
        o += 8
        name = data[o:o + n].decode()
        o += n
        ne = struct.unpack_from("<4q", data, o)
        o += 32
        count = ne[0] * ne[1] * ne[2] * ne[3]
        values = np.frombuffer(data, dtype="<f4", count=count, offset=o)
        o += 4 * count
        k = seen[(step, name)]
        seen[(step, name)] += 1
        out.append((step, name, k, ne, values, prev))
        prev = name
    return out


# llama.cpp names a few tensors more than once or not at all: map them to Fulcrum's names.
def llama_key(step, name, k, prev):
    base = name.split("-")[0]
    layer = name[len(base):]
    if base in ("Qcur", "Kcur") and k == 2:
        return (step, f"{base}_rope{layer}")
    if base in ("Qcur", "Kcur", "Vcur") and k > 0:
        return None
    if prev and prev.startswith("kqv_out-") and name.startswith("node_"):
        return (step, "attn_out" + prev[len("kqv_out"):])
    if base == "norm" or " (" in name or name.startswith("node_"):
        return None
    return (step, name)


def main():
    llama = {}
    for step, name, k, ne, values, prev in read(sys.argv[1]):
        key = llama_key(step, name, k, prev)
        if key:
            llama[key] = values.reshape(-1, ne[0]) if ne[0] else values
    max_step = int(sys.argv[3]) if len(sys.argv) > 3 else 1 << 30
    for step, name, k, ne, values, _ in read(sys.argv[2]):
        if step > max_step or (step, name) not in llama:
            continue
        ours = values.reshape(-1, ne[0])
        ref = llama[(step, name)].reshape(-1, ours.shape[1])
        rows = min(len(ours), len(ref))
        a, b = ours[-rows:], ref[-rows:]
        same = np.mean(a.view(np.uint32) == b.view(np.uint32))
        print(f"step {step:2d} {name:20s} max|diff| {np.max(np.abs(a - b)):.3e}  identical {same * 100:6.2f}%")


main()
