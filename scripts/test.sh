#!/usr/bin/env bash
# The whole test suite: build, fetch the three default models (cached after the first run), run every test.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== build (release)"
cargo build --release --locked

echo "== models"
for model in gemma3-270m qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct; do
    ./target/release/fulcrum pull "$model"
done

echo "== browser (Debian's chromium and chromium-driver, for the chat page test)"
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver
fi

echo "== node and npm (for the deployment check's ServiceMonitor schema)"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm
fi

echo "== format"
cargo fmt --all -- --check

echo "== lints"
cargo clippy --release --locked --workspace --all-targets -- -D warnings

echo "== tests"
cargo test --release --locked --workspace

echo "== soak (60 s smoke: load at twice capacity, disconnects, malformed requests, bursts, SIGTERM)"
python3 bench/soak --smoke --json target/soak/smoke.json
