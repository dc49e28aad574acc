/* farm-llama-logits: every position's logits from llama.cpp's library, for farm's correctness tests.
 *   farm-llama-logits MODEL.gguf ID,ID,... [THREADS] [f16|f32] [last|greedy:G]
 * prints {"n_vocab":V,"n_tokens":N,"kv_type":"f16","logits":[[...],...]} like `farm-engine logits --all`;
 * greedy:G then generates G tokens one llama_decode at a time (argmax), printed as "greedy":[...], like
 * `farm-engine logits --greedy G` (the last position's logits only).
 * The prompt goes in as one batch (one ubatch), flash attention off, KV cache type as asked: the settings
 * farm-engine uses, so the two differ only where their kernels do. Linked against the llama.cpp farm builds
 * (farm.backends.llamacpp_build.logits_program). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

static void quiet(enum ggml_log_level level, const char *text, void *user) {
    (void)user;
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: farm-llama-logits MODEL.gguf ID,ID,... [THREADS] [f16|f32]\n");
        return 2;
    }
    int threads = argc > 3 ? atoi(argv[3]) : 1;
    const int kv_f32 = argc > 4 && !strcmp(argv[4], "f32");
    const int greedy = argc > 5 && !strncmp(argv[5], "greedy:", 7) ? atoi(argv[5] + 7) : 0;
    const int last_only = greedy > 0 || (argc > 5 && !strcmp(argv[5], "last"));
    int n = 0, cap = 16;
    llama_token *toks = malloc(sizeof *toks * cap);
    for (char *p = argv[2]; *p;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p) {
            fprintf(stderr, "bad token list '%s'\n", argv[2]);
            return 2;
        }
        if (n == cap) toks = realloc(toks, sizeof *toks * (cap *= 2));
        toks[n++] = (llama_token)v;
        p = *end == ',' ? end + 1 : end;
    }
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "%s: llama.cpp could not load the model\n", argv[1]);
        return 2;
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)(n + greedy < 64 ? 64 : n + greedy);
    cp.n_batch = cp.n_ubatch = (uint32_t)n;
    cp.n_threads = cp.n_threads_batch = threads;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.type_k = cp.type_v = kv_f32 ? GGML_TYPE_F32 : GGML_TYPE_F16;
    cp.no_perf = 1;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "llama.cpp could not create a context\n");
        return 3;
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    struct llama_batch batch = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        batch.token[i] = toks[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = !last_only || i == n - 1;
    }
    batch.n_tokens = n;
    if (llama_decode(ctx, batch) != 0) {
        fprintf(stderr, "llama_decode failed\n");
        return 3;
    }
    printf("{\"n_vocab\":%d,\"n_tokens\":%d,\"kv_type\":\"%s\",\"logits\":[", n_vocab, n, kv_f32 ? "f32" : "f16");
    for (int i = last_only ? n - 1 : 0; i < n; i++) {
        const float *lg = llama_get_logits_ith(ctx, i);
        printf("%s[", i > (last_only ? n - 1 : 0) ? "," : "");
        for (int v = 0; v < n_vocab; v++) printf("%s%.9g", v ? "," : "", lg[v]);
        printf("]");
    }
    printf("]");
    if (greedy > 0) {
        printf(",\"greedy\":[");
        for (int g = 0; g < greedy; g++) {
            const float *lg = llama_get_logits_ith(ctx, -1);
            llama_token tok = 0;
            for (int v = 1; v < n_vocab; v++) tok = lg[v] > lg[tok] ? v : tok; /* first maximum, as farm's argmax */
            printf("%s%d", g ? "," : "", tok);
            if (g + 1 == greedy) break;
            struct llama_batch one = llama_batch_get_one(&tok, 1);
            if (llama_decode(ctx, one) != 0) {
                fprintf(stderr, "llama_decode failed at generated token %d\n", g);
                return 3;
            }
        }
        printf("]");
    }
    printf("}\n");
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    free(toks);
    return 0;
}
