// Dumps every named f32 tensor llama.cpp computes while replaying a golden case (prefill + decode steps).
// usage: llama_trace MODEL OUT N_PROMPT PROMPT_IDS... GENERATED_IDS...
#include "llama.h"
#include "ggml.h"
#include "ggml-backend.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static FILE *out; static int step = 0;
static bool cb(struct ggml_tensor *t, bool ask, void *ud) {
    if (ask) return true;
    if (t->type != GGML_TYPE_F32 || !ggml_is_contiguous(t) || t->name[0] == 0) return true;
    size_t n = ggml_nelements(t);
    float *buf = malloc(n * sizeof(float));
    ggml_backend_tensor_get(t, buf, 0, n * sizeof(float));
    unsigned len = strlen(t->name);
    fwrite(&step, 4, 1, out); fwrite(&len, 4, 1, out); fwrite(t->name, 1, len, out);
    int64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]}; fwrite(ne, 8, 4, out);
    fwrite(buf, 4, n, out); free(buf);
    return true;
}
int main(int argc, char **argv) {
    const char *path = argv[1]; out = fopen(argv[2], "wb");
    int np = atoi(argv[3]); int *p = malloc(sizeof(int)*np); for (int i=0;i<np;i++) p[i]=atoi(argv[4+i]);
    int ng = argc - 4 - np; int *g = malloc(sizeof(int)*ng); for (int i=0;i<ng;i++) g[i]=atoi(argv[4+np+i]);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *m = llama_model_load_from_file(path, mp);
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = np + ng + 8; cp.n_batch = np; cp.n_ubatch = np; cp.n_threads = 2; cp.n_threads_batch = 2;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
    cp.cb_eval = cb; cp.cb_eval_user_data = NULL;
    struct llama_context *c = llama_init_from_model(m, cp);
    llama_decode(c, llama_batch_get_one(p, np));
    for (int i = 0; i < ng; i++) {
        float *l = llama_get_logits_ith(c, -1);
        printf("%.4f ", l[g[i]]);
        step++;
        llama_decode(c, llama_batch_get_one(&g[i], 1));
    }
    printf("\n"); fclose(out);
    return 0;
}
