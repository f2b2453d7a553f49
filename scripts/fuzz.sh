#!/usr/bin/env bash
# Long runs of the stable-toolchain fuzzers: the GGUF reader, both real tokenizers, the chat-template renderer
# (conversations and template sources) and the request parser. Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] (default
# 300). Each target runs alone (the machine has two cores); a crash saves its input under target/fuzz-crashes/ and
# stops the run. Totals per target go to stdout and accumulate in target/fuzz-history.txt. With FULCRUM_FUZZ_CASES=N
# each target runs N executions instead of a time. The models must be pulled (scripts/test.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-300}"
stats="$(mktemp)"
trap 'rm -f "$stats"' EXIT
cargo build --release --locked --workspace --tests
run() { # package, test binary selector, test name
    FULCRUM_FUZZ_SECONDS="$seconds" FULCRUM_FUZZ_STATS="$stats" FULCRUM_FUZZ_SEED="${FULCRUM_FUZZ_SEED:-$RANDOM$RANDOM}" \
        cargo test --release --locked -q -p "$1" $2 -- --exact "$3" --nocapture --test-threads 1
}
run fulcrum-gguf "--test mutation" fuzz_gguf_reader
run fulcrum-tokenizer "--test properties" fuzz_qwen_tokenizer
run fulcrum-tokenizer "--test properties" fuzz_gemma_tokenizer
run fulcrum-engine "--test fuzz_chat" fuzz_chat_conversations
run fulcrum-engine "--test fuzz_chat" fuzz_chat_template_sources
run fulcrum-cli "--bin fulcrum" serve::request::tests::fuzz_request_parser
echo
echo "target executions seconds"
cat "$stats"
sed "s/^/$(date -u +%Y-%m-%dT%H:%MZ) $(git rev-parse --short HEAD) /" "$stats" >> target/fuzz-history.txt
echo
echo "executions per target over every run recorded here (target/fuzz-history.txt):"
awk '{ total[$3] += $4 } END { for (t in total) printf "%-24s %d\n", t, total[t] }' target/fuzz-history.txt | sort
