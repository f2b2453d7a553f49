#!/usr/bin/env python3
"""Replays a golden case through llama.cpp with flash attention and weight repacking on and off, and prints the
largest difference of each setting's logits from the golden file. Usage: compare.py MODEL CASE."""
import json
import os
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
golden_path = os.environ.get("GOLDEN", os.path.join(here, "../../crates/fulcrum-cli/tests/data/golden.json"))
models_dir = os.environ.get("FULCRUM_MODELS_DIR", os.path.expanduser("~/.cache/fulcrum/models"))
name, case = sys.argv[1], sys.argv[2]
c = json.load(open(golden_path))["models"][name]["cases"][case]
ids = [str(x) for x in c["prompt_ids"] + c["generated_ids"]]
for fa in (1, 0):
    for repack in (1, 0):
        cmd = [os.path.join(here, "llama_logits"), os.path.join(models_dir, name + ".gguf"), str(fa), str(repack),
               str(len(c["prompt_ids"]))] + ids
        logits = [float(x) for x in subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()]
        err = [abs(a - b) for a, b in zip(logits, c["top1_logits"])]
        print(f"{name}/{case} flash_attn={fa} repack={repack}: max {max(err):.4f}, mean {sum(err) / len(err):.4f}")
