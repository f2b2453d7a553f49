#!/usr/bin/env python3
"""Copy a GGUF file's metadata (no tensors) with some keys overridden, for tokenizer-only reference runs.

    python3 tools/make_vocab_variant.py SRC.gguf DST.gguf tokenizer.ggml.pre=llama-bpe ...
Needs llama.cpp's gguf-py (`pip install gguf`); llama.cpp loads the result with vocab_only.
"""
import sys

from gguf import GGUFReader, GGUFValueType, GGUFWriter

src, dst = sys.argv[1], sys.argv[2]
overrides = dict(a.split("=", 1) for a in sys.argv[3:])
reader = GGUFReader(src)
writer = GGUFWriter(dst, reader.fields["general.architecture"].contents())
for key, field in reader.fields.items():
    if key.startswith("GGUF.") or key == "general.architecture":
        continue
    vtype = field.types[0]
    value = field.contents()
    if key in overrides:
        text = overrides.pop(key)
        value = text == "true" if vtype == GGUFValueType.BOOL else text
    writer.add_key_value(key, value, vtype, sub_type=field.types[-1] if vtype == GGUFValueType.ARRAY else None)
for key, text in overrides.items():
    if text in ("true", "false"):
        writer.add_bool(key, text == "true")
    else:
        writer.add_string(key, text)
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
