// Teacher-forced logits from llama.cpp for one golden case, with flash attention and weight repacking switchable,
// to measure how far llama.cpp moves from its own golden output under equally correct settings.
// usage: llama_logits MODEL FA(0|1) REPACK(0|1) N_PROMPT PROMPT_IDS... GENERATED_IDS...
#include "llama.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    const char *path = argv[1]; int fa = atoi(argv[2]); int repack = atoi(argv[3]);
    int np = atoi(argv[4]); int *p = malloc(sizeof(int)*np); for (int i=0;i<np;i++) p[i]=atoi(argv[5+i]);
    int ng = argc - 5 - np; int *g = malloc(sizeof(int)*ng); for (int i=0;i<ng;i++) g[i]=atoi(argv[5+np+i]);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params(); mp.use_extra_bufts = repack;
    struct llama_model *m = llama_model_load_from_file(path, mp);
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = np + ng + 8; cp.n_batch = np; cp.n_ubatch = np; cp.n_threads = 2; cp.n_threads_batch = 2;
    cp.flash_attn_type = fa ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    struct llama_context *c = llama_init_from_model(m, cp);
    llama_decode(c, llama_batch_get_one(p, np));
    for (int i = 0; i < ng; i++) {
        float *l = llama_get_logits_ith(c, -1);
        printf("%.4f ", l[g[i]]);
        llama_decode(c, llama_batch_get_one(&g[i], 1));
    }
    printf("\n");
    return 0;
}
