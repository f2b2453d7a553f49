#!/usr/bin/env python3
"""Generate tests/data/<model>.cases.json: texts and the ids llama.cpp's llama_tokenize gives them.

The reference is tools/llama_tokenize_batch.cpp built against llama.cpp at the golden data's commit
(0c1e57098, as vendored in llama-cpp-python 0.3.36). Usage:
    python3 tools/gen_llama_cpp_cases.py PATH/TO/llama_tokenize_batch [MODELS_DIR]
Cases are hand-picked edge cases plus seeded random strings from a pool of tricky code points.
Environment: CASES_RANDOM (random texts per model, default 400; a third of that per variant), CASES_SEED,
CASES_OUT (output directory), CASES_VARIANTS_DIR (where make_vocab_variant.py wrote the variant files).
"""
import json
import os
import random
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TOOL = sys.argv[1]
MODELS = sys.argv[2] if len(sys.argv) > 2 else os.path.expanduser("~/.cache/fulcrum/models")

COMMON = [
    "", " ", "  ", "\n", "\n\n", "\t", "a", "Hello world", " Hello world", "Hello  world", "Hello   world ",
    "hello world   ", "line1\nline2\r\nline3\rline4", "a\n\n  b", "hello!!\n\nworld", "x \n y", "  \n\n  \n",
    "12345", "1234567 89", "3.14159, 2,718", "x=1+2*3/4-5^6", "2024-01-01T00:00:00Z",
    "don't I'LL we've they'RE she'd it's 'twas '", "O'Neil's rock'n'roll", "''''", "'s's's",
    "héllo wörld 日本語 🙂", "naïve café résumé", "Ελληνικά Русский עברית العربية", "हिन्दी भाषा", "ภาษาไทย",
    "한국어 텍스트", "中文，标点。「引号」", "emoji 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️", "𓀀𓀁𓀂 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꙮ",
    "superscripts ² ³ ½ Ⅻ ٣ ۴ ߅", "nbsp\u00a0here\u3000ideographic\u2009thin", "zero\u200bwidth\u200djoiner",
    "combining e\u0301 a\u0308 n\u0303", "control \x01\x02\x7f chars", "tab\tseparated\tvalues\t",
    "def fibonacci(n):\n\tif n < 2:\n\t\treturn n\n\treturn fibonacci(n-1) + fibonacci(n-2)\n",
    "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n", "<html><body class=\"x\">&amp;</body></html>",
    "C:\\path\\to\\file.txt", "https://example.com/a?b=c&d=e#f", "    indented\n        more", "!!!???...,,,",
    "\u2581leading block\u2581", "<0x41><0xFF>", "[multimodal]", "a<b>c</b>", "1\n2\n\n3\n\n\n4",
    "ALL CAPS TEXT", "MiXeD cAsE wOrDs", "trailing newline\n", "\r\n\r\n", " \t \n", "a  \tb",
    "x</s>y", "</s>", "<s>", "<unk>", "<|endoftext|>x", "<end_of_turn>",
]
GEMMA_ONLY = [
    "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n", "<bos>text<eos>", "<unused5> x <unk>",
    "<pad><mask>", "<start_of_image>", "partial <start_of_tur", "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n",
    "\t\t\t\tcode", "x\n\ny\n\n\nz", "<end_of_turn><end_of_turn>",
]
QWEN_ONLY = [
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>", "<|im_start|><|im_end|>",
    "<tool_call>{\"name\": \"f\"}</tool_call>", "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>", "<|im_start",
    "<|repo_name|>x<|file_sep|>y", "[PAD151665]", "<|box_start|>1,2<|box_end|>",
]

POOL = (
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") * 4
    + list("0123456789") * 2
    + list(" " * 30 + "\t\n\n\r")
    + list("'\"!?.,;:-_()[]{}<>/\\|@#$%^&*+=~`")
    + list("éüßçñøåÆŒÉ") + ["e\u0301", "\u0308"]
    + list("日本語中文字한국어ภาษาไทยहिन्दीРусскийΕλληνικάעבריתالعربية")
    + ["🙂", "👍🏽", "👨‍👩‍👧", "🇯🇵", "🦀", "𓀀", "𝔘", "ꙮ", "\u00a0", "\u3000", "\u2009", "\u200b", "\u2581"]
    + list("²³½Ⅻ٣") + ["\x01", "\x7f", "\u0085", "\u2028"]
)
WORDS = ["the", "The", " of", "and", "don't", "I'LL", "we've", "hello", "world", "fn", "def", "return", "12", "345"]


def random_text(rng, specials):
    parts = []
    for _ in range(rng.randint(0, 12)):
        r = rng.random()
        if r < 0.35:
            parts.append(rng.choice(WORDS))
        elif r < 0.45 and specials:
            parts.append(rng.choice(specials))
        else:
            parts.append("".join(rng.choice(POOL) for _ in range(rng.randint(1, 6))))
        if rng.random() < 0.5:
            parts.append(rng.choice([" ", "  ", "\n", " \n", "\t"]))
    return "".join(parts)


def run(model_path, texts, add_special, parse_special):
    data = "\x1e".join(texts).encode("utf-8")
    out = subprocess.run([TOOL, model_path, str(int(add_special)), str(int(parse_special))], input=data,
                         capture_output=True, check=True).stdout.decode()
    lines = out.split("\n")[: len(texts)]
    assert len(lines) == len(texts), (len(lines), len(texts))
    return [[int(x) for x in line.split()] for line in lines]


GEMMA_SPECIALS = ["<start_of_turn>", "<end_of_turn>", "<eos>", "\n\n", "<unused9>"]
QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>"]

# Variants: the real vocabularies with one metadata key changed, to exercise the other pre-tokenizers and
# the SentencePiece space prefix. The GGUF files are made by tools/make_vocab_variant.py into
# $CASES_VARIANTS_DIR as <base>+<key>=<value>.gguf; the tests apply the same override to the real file.
VARIANTS = [
    ("gemma3-270m", "add_space_prefix", "true"),
    ("qwen2.5-coder-0.5b-instruct", "pre", "llama-bpe"),
    ("qwen2.5-coder-0.5b-instruct", "pre", "dbrx"),
    ("qwen2.5-coder-0.5b-instruct", "pre", "gpt-2"),
    ("qwen2.5-coder-0.5b-instruct", "pre", "starcoder"),
    ("qwen2.5-coder-0.5b-instruct", "pre", "default"),
]


def write_cases(name, path, hand, specials, n_random):
    rng = random.Random(int(os.environ.get("CASES_SEED", "20240601")))
    randoms = [random_text(rng, specials) for _ in range(n_random)]
    cases = []
    # The empty text cannot be sent as a record (a trailing separator would end the input early).
    texts = [t for t in hand + randoms if t and "\x1e" not in t]
    for add_special, parse_special in [(True, True), (False, False)]:
        for text, ids in zip(texts, run(path, texts, add_special, parse_special)):
            cases.append({"text": text, "add_special": add_special, "parse_special": parse_special, "ids": ids})
    out_dir = os.environ.get("CASES_OUT", os.path.join(HERE, "..", "tests", "data"))
    with open(os.path.join(out_dir, name + ".cases.json"), "w") as f:
        # One case per line keeps diffs of regenerated files readable.
        f.write('{"model": %s, "reference": "llama.cpp 0c1e57098 llama_tokenize", "cases": [\n' % json.dumps(name))
        f.write(",\n".join(json.dumps(c, ensure_ascii=False) for c in cases))
        f.write("\n]}\n")
    print(name, len(cases), "cases")


def main():
    n_random = int(os.environ.get("CASES_RANDOM", "400"))
    for model, extra, specials in [("gemma3-270m", GEMMA_ONLY, GEMMA_SPECIALS),
                                   ("qwen2.5-coder-0.5b-instruct", QWEN_ONLY, QWEN_SPECIALS)]:
        write_cases(model, os.path.join(MODELS, model + ".gguf"), COMMON + extra, specials, n_random)
    variants_dir = os.environ.get("CASES_VARIANTS_DIR")
    if variants_dir:
        for base, key, value in VARIANTS:
            name = f"{base}+{key}={value}"
            extra, specials = (GEMMA_ONLY, GEMMA_SPECIALS) if base.startswith("gemma") else (QWEN_ONLY, QWEN_SPECIALS)
            write_cases(name, os.path.join(variants_dir, name + ".gguf"), COMMON + extra, specials, n_random // 3)


main()
