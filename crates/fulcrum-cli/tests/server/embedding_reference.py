"""Writes embedding_reference.json: llama.cpp's embeddings (llama-cpp-python 0.3.36, the package bench/compare
installs into target/bench-venv) of a few texts with Qwen2.5-Coder-0.5B-Instruct, mean and last-token pooled and
normalised, for openai_client.py to compare with. Usage: embedding_reference.py MODEL.gguf"""
import json, pathlib, sys

import llama_cpp

TEXTS = ["Hello world, this is a test.", "def add(a, b):\n    return a + b",
         "The quick brown fox jumps over the lazy dog."]
out = {"texts": TEXTS}
for name, pooling in [("mean", llama_cpp.LLAMA_POOLING_TYPE_MEAN), ("last", llama_cpp.LLAMA_POOLING_TYPE_LAST)]:
    llm = llama_cpp.Llama(model_path=sys.argv[1], embedding=True, pooling_type=pooling, n_threads=2, n_ctx=512,
                          verbose=False)
    out[name] = [[round(v, 6) for v in llm.embed(t, normalize=True)] for t in TEXTS]
pathlib.Path(__file__).with_name("embedding_reference.json").write_text(json.dumps(out) + "\n")
