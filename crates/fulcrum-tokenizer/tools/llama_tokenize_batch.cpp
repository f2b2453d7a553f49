// Reference tokenizer for tools/gen_llama_cpp_cases.py: tokenizes stdin records separated by \x1e with
// llama.cpp's llama_tokenize and prints one line of ids per record.
// Build against a llama.cpp checkout (the golden data's: commit 0c1e57098):
//   g++ -O1 -std=c++17 -I$L/include -I$L/ggml/include llama_tokenize_batch.cpp -L$L/build/bin \
//       -lllama -lggml -lggml-base -Wl,-rpath,$L/build/bin -o llama_tokenize_batch
// Usage: llama_tokenize_batch MODEL.gguf ADD_SPECIAL(0|1) PARSE_SPECIAL(0|1) < records
#include "llama.h"
#include <cstdio>
#include <string>
#include <vector>
#include <iostream>
#include <sstream>
int main(int argc, char ** argv) {
    llama_backend_init();
    auto mp = llama_model_default_params();
    mp.vocab_only = true;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) return 1;
    const llama_vocab * vocab = llama_model_get_vocab(model);
    bool add_special = argc > 2 ? atoi(argv[2]) : 1;
    bool parse_special = argc > 3 ? atoi(argv[3]) : 1;
    std::stringstream ss; ss << std::cin.rdbuf(); std::string all = ss.str();
    size_t start = 0;
    while (start < all.size()) {
        size_t end = all.find('\x1e', start);
        if (end == std::string::npos) end = all.size();
        std::string text = all.substr(start, end - start);
        start = end + 1;
        std::vector<llama_token> toks(text.size() * 2 + 16);
        int n = llama_tokenize(vocab, text.data(), text.size(), toks.data(), toks.size(), add_special, parse_special);
        if (n < 0) { toks.resize(-n); n = llama_tokenize(vocab, text.data(), text.size(), toks.data(), toks.size(), add_special, parse_special); }
        for (int i = 0; i < n; ++i) printf(i ? " %d" : "%d", toks[i]);
        printf("\n");
    }
    llama_model_free(model);
}
