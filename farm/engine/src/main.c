/* farm-engine: the command line. Subcommands bench, logits and info; every result is one JSON object on
 * stdout, phase markers go to stderr, and bad input ends with one line on stderr and exit code 2.
 *
 * bench timing, per repetition (all raw CLOCK_MONOTONIC ns):
 *   prefill  = one batched forward pass over the n_prompt prompt tokens plus the argmax of the last
 *              token's logits; prefill_ns = prefill_end - prefill_start, prefill t/s = n_prompt / prefill_s.
 *   ttft     = prefill_start until the first generated token id is known = prefill_ns when n_prompt > 0;
 *              with -p 0 it is the duration of the first decode step (the first token comes from it).
 *   decode   = exactly n_gen single-token forward passes, each followed by the argmax that picks the next
 *              input (the first input is the token chosen by prefill, or BOS with -p 0), like llama-bench's
 *              tg test; decode_ns = decode_end - decode_start, decode t/s = n_gen / decode_s.
 *   decode_token_ns = the n_gen steps one by one (they sum to decode_ns): the per-token view that a
 *              burst of interference or a single slow step cannot hide in a total.
 *   decode_preemptions = involuntary context switches of the process during the decode: how often
 *              the scheduler gave one of its cores to someone else (a busy host, not the engine).
 *   depth    = -d D: before each repetition's prefill, D tokens fill the KV cache (one untimed batched pass, as
 *              llama-bench -d); prefill then runs at positions D.., decode after it. Default 0.
 * The KV cache holds n_depth + n_prompt + n_gen positions; every repetition restarts at position 0.
 *
 * --lockstep R,W (bench): before every timed phase (each repetition's prefill, each decode step) read one
 * byte from fd R, after it write one byte to fd W. farm-pair (src/pair) runs two builds this way, their
 * steps interleaved A B B A on one core, so both see the same host at millisecond distance. decode_ns is
 * then the sum of the steps (the waits between them are not the engine's time); without --lockstep the
 * steps are back to back and the sum equals the wall time, so the two definitions agree.
 *
 * logits -m M --tokens 1,2,3 [-t T] [--kv f16|f32] [--all] [--ubatch N] [--greedy G]: the last (or every)
 * token's logits after the prompt path; --ubatch 1 feeds the tokens one at a time through the decode path;
 * --greedy G then generates G tokens through the decode path (argmax, KV cache), printed as "greedy". */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common.h"
#include "model.h"

#define BOS_FALLBACK 1

void farm_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("farm-engine: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void usage(void) {
    farm_fail("usage: farm-engine bench|logits|info -m MODEL.gguf [options] (see the source header of main.c)");
}

typedef struct {
    const char *model, *tokens;
    int n_prompt, n_gen, n_depth, threads, reps, warmup, kv_f16, all, seed, ubatch, greedy;
    int sync_in, sync_out; /* --lockstep R,W; -1 = free running */
} opts_t;

static int parse_int(const char *flag, const char *v, int lo) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || end == v || x < lo || x > 1000000) farm_fail("bad value '%s' for %s", v, flag);
    return (int)x;
}

static void parse(int argc, char **argv, opts_t *o) {
    *o = (opts_t){.n_prompt = 512, .n_gen = 128, .threads = 1, .reps = 5, .warmup = 1, .kv_f16 = 1, .ubatch = 512,
                 .sync_in = -1, .sync_out = -1};
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--all")) {
            o->all = 1;
            continue;
        }
        if (i + 1 >= argc) farm_fail("option %s needs a value", a);
        const char *v = argv[++i];
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) o->model = v;
        else if (!strcmp(a, "-p")) o->n_prompt = parse_int(a, v, 0);
        else if (!strcmp(a, "-n")) o->n_gen = parse_int(a, v, 0);
        else if (!strcmp(a, "-d")) o->n_depth = parse_int(a, v, 0);
        else if (!strcmp(a, "-t")) o->threads = parse_int(a, v, 1);
        else if (!strcmp(a, "-r")) o->reps = parse_int(a, v, 1);
        else if (!strcmp(a, "-w")) o->warmup = parse_int(a, v, 0);
        else if (!strcmp(a, "--seed")) o->seed = parse_int(a, v, 0);
        else if (!strcmp(a, "--tokens")) o->tokens = v;
        else if (!strcmp(a, "--ubatch")) o->ubatch = parse_int(a, v, 1);
        else if (!strcmp(a, "--greedy")) o->greedy = parse_int(a, v, 0);
        else if (!strcmp(a, "--lockstep")) {
            if (sscanf(v, "%d,%d", &o->sync_in, &o->sync_out) != 2 || o->sync_in < 0 || o->sync_out < 0 ||
                fcntl(o->sync_in, F_GETFD) < 0 || fcntl(o->sync_out, F_GETFD) < 0)
                farm_fail("--lockstep needs two open file descriptors R,W, got '%s'", v);
        }
        else if (!strcmp(a, "--kv")) {
            if (strcmp(v, "f16") && strcmp(v, "f32")) farm_fail("--kv must be f16 or f32, got '%s'", v);
            o->kv_f16 = !strcmp(v, "f16");
        } else farm_fail("unknown option %s", a);
    }
    if (!o->model) farm_fail("missing -m MODEL.gguf");
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static void phase(const char *name, int64_t ns) {
    fprintf(stderr, "FARM_PHASE %s %lld\n", name, (long long)ns);
    fflush(stderr);
}

static int64_t peak_rss_bytes(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %lld kB", &kb) == 1) break;
    if (f) fclose(f);
    if (kb >= 0) return kb * 1024;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (int64_t)ru.ru_maxrss * 1024;
}

/* Involuntary context switches of the process so far: how often the scheduler took a core away. */
static long involuntary_switches(void) {
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_nivcsw : 0;
}

/* Lock-step turn taking (--lockstep): wait for the conductor's go, then report the phase done. A closed
 * pipe means the conductor is gone: stop quietly rather than time steps nobody is pairing. */
static void turn_wait(const opts_t *o) {
    if (o->sync_in < 0) return;
    char b;
    ssize_t n;
    do n = read(o->sync_in, &b, 1);
    while (n < 0 && errno == EINTR);
    if (n != 1) farm_fail("lockstep: the conductor closed fd %d", o->sync_in);
}

static void turn_done(const opts_t *o, pool_t *pool) {
    if (o->sync_out < 0) return;
    pool_park(pool); /* the other build's turn: our idle workers must not spin on its cores */
    const char b = '.';
    ssize_t n;
    do n = write(o->sync_out, &b, 1);
    while (n < 0 && errno == EINTR);
    if (n != 1) farm_fail("lockstep: cannot write to fd %d", o->sync_out);
}

static void json_ints(const int64_t *x, int n) {
    putchar('[');
    for (int i = 0; i < n; i++) printf("%s%lld", i ? "," : "", (long long)x[i]);
    putchar(']');
}

static void json_str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20) printf("\\u%04x", *s);
        else putchar(*s);
    }
    putchar('"');
}

static void print_model_fields(const model_t *m, const char *path) {
    const char *base = strrchr(path, '/');
    printf("\"model_filename\":");
    json_str(base ? base + 1 : path);
    printf(",\"model_type\":\"%s %lldM %s\",\"model_size\":%zu,\"model_n_params\":%lld", m->arch,
           (long long)((m->n_params + 500000) / 1000000), gguf_type_name((uint32_t)m->main_type), m->gg.data_bytes,
           (long long)m->n_params);
}

static int cmd_bench(const opts_t *o) {
    int64_t t0 = farm_now_ns();
    model_t m;
    model_load(&m, o->model);
    const int P = o->n_prompt, G = o->n_gen, D = o->n_depth;
    const int widest = P > D ? P : D;
    ctx_t c;
    ctx_init(&c, &m, D + P + G, widest > 512 ? 512 : (widest > 0 ? widest : 1), o->threads, o->kv_f16, 0);
    const int64_t load_ns = farm_now_ns() - t0;
    int *prompt = malloc(sizeof(int) * (size_t)(D + P > 0 ? D + P : 1)); /* the depth's tokens, then the prompt's */
    uint64_t s = 0x9E3779B97F4A7C15ULL ^ (uint64_t)o->seed; /* deterministic prompt ids (xorshift) */
    for (int i = 0; i < D + P; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        prompt[i] = (int)(s % (uint64_t)m.n_vocab);
    }
    const int bos = (int)gguf_get_int(&m.gg, "tokenizer.ggml.bos_token_id", BOS_FALLBACK) % m.n_vocab;
    const int n_reps = o->warmup + o->reps;
    int64_t(*ts)[4] = calloc((size_t)n_reps, sizeof *ts);
    int64_t *ttft = calloc((size_t)n_reps, sizeof *ttft);
    int64_t *tok_ns = calloc((size_t)n_reps * (size_t)(G > 0 ? G : 1), sizeof *tok_ns); /* per decode step */
    long *preempt = calloc((size_t)n_reps, sizeof *preempt);
    int64_t *decode_ns = calloc((size_t)n_reps, sizeof *decode_ns);
    for (int r = 0; r < n_reps; r++) {
        int tok = bos;
        if (D > 0) forward(&c, prompt, D, 0, 0); /* the cache's depth: before the timed phases, untimed */
        turn_wait(o);
        ts[r][0] = farm_now_ns();
        phase("prefill_start", ts[r][0]);
        if (P > 0) {
            forward(&c, prompt + D, P, D, 0);
            tok = argmax(c.logits, m.n_vocab);
        }
        ts[r][1] = farm_now_ns();
        phase("prefill_end", ts[r][1]);
        ttft[r] = ts[r][1] - ts[r][0];
        turn_done(o, c.pool);
        ts[r][2] = farm_now_ns();
        phase("decode_start", ts[r][2]);
        int64_t t_step = ts[r][2];
        decode_ns[r] = 0;
        const long csw0 = involuntary_switches();
        for (int g = 0; g < G; g++) {
            if (o->sync_in >= 0) {
                turn_wait(o);
                t_step = farm_now_ns();
            }
            forward(&c, &tok, 1, D + P + g, 0);
            tok = argmax(c.logits, m.n_vocab);
            const int64_t t_done = farm_now_ns();
            tok_ns[(size_t)r * G + g] = t_done - t_step;
            decode_ns[r] += t_done - t_step;
            t_step = t_done;
            turn_done(o, c.pool);
            if (g == 0 && P == 0) ttft[r] = tok_ns[(size_t)r * G];
        }
        ts[r][3] = t_step;
        preempt[r] = involuntary_switches() - csw0;
        phase("decode_end", ts[r][3]);
    }
    printf("{\"engine\":\"farm-ref\",\"version\":\"%s\",\"build_flags\":", FARM_VERSION);
    json_str(FARM_BUILD_FLAGS);
    printf(",\"simd\":\"%s\",", FARM_SIMD);
    print_model_fields(&m, o->model);
    printf(",\"n_threads\":%d,\"n_prompt\":%d,\"n_gen\":%d,\"n_depth\":%d,\"kv_type\":\"%s\",\"clock\":\"CLOCK_MONOTONIC\"",
           o->threads, P, G, D, o->kv_f16 ? "f16" : "f32");
    printf(",\"load_ns\":%lld,\"peak_rss_bytes\":%lld,\"lockstep\":%s,\"repetitions\":[", (long long)load_ns,
           (long long)peak_rss_bytes(), o->sync_in >= 0 ? "true" : "false");
    for (int r = 0; r < n_reps; r++) {
        printf("%s{\"rep\":%d,\"warmup\":%s,\"prefill_start_ns\":%lld,\"prefill_end_ns\":%lld,\"decode_start_ns\":%lld,"
               "\"decode_end_ns\":%lld,\"prefill_ns\":%lld,\"decode_ns\":%lld,\"ttft_ns\":%lld,\"n_prompt\":%d,"
               "\"n_gen\":%d,\"decode_preemptions\":%ld,\"decode_token_ns\":",
               r ? "," : "", r, r < o->warmup ? "true" : "false", (long long)ts[r][0], (long long)ts[r][1],
               (long long)ts[r][2], (long long)ts[r][3], (long long)(ts[r][1] - ts[r][0]),
               (long long)decode_ns[r], (long long)ttft[r], P, G, preempt[r]);
        json_ints(tok_ns + (size_t)r * G, G);
        printf("}");
    }
    printf("]}\n");
    free(prompt);
    free(ts);
    free(ttft);
    free(tok_ns);
    free(preempt);
    free(decode_ns);
    ctx_free(&c);
    model_free(&m);
    return 0;
}

static int cmd_logits(const opts_t *o) {
    if (!o->tokens || !*o->tokens) farm_fail("logits needs --tokens ID,ID,...");
    model_t m;
    model_load(&m, o->model);
    int n = 1;
    for (const char *p = o->tokens; *p; p++) n += *p == ',';
    int *toks = malloc(sizeof(int) * (size_t)n);
    char *buf = strdup(o->tokens), *save = NULL;
    int k = 0;
    for (char *tk = strtok_r(buf, ",", &save); tk; tk = strtok_r(NULL, ",", &save)) {
        const int id = parse_int("--tokens", tk, 0);
        if (id >= m.n_vocab) farm_fail("token id %d out of range [0, %d)", id, m.n_vocab);
        toks[k++] = id;
    }
    free(buf);
    if (k == 0) farm_fail("logits needs --tokens ID,ID,...");
    ctx_t c;
    /* --ubatch 1 runs the prompt token by token: the decode (GEMV + KV cache) path, testable on logits */
    ctx_init(&c, &m, k + o->greedy, o->ubatch, o->threads, o->kv_f16, o->all);
    forward(&c, toks, k, 0, o->all);
    printf("{\"n_vocab\":%d,\"n_tokens\":%d,\"kv_type\":\"%s\",\"simd\":\"%s\",\"logits\":[", m.n_vocab, k,
           o->kv_f16 ? "f16" : "f32", FARM_SIMD);
    const int rows = o->all ? k : 1;
    for (int r = 0; r < rows; r++) {
        const float *lg = c.logits + (size_t)r * m.n_vocab;
        if (o->all) printf("%s[", r ? "," : "");
        for (int i = 0; i < m.n_vocab; i++) printf("%s%.9g", i ? "," : "", lg[i]);
        if (o->all) printf("]");
    }
    printf("]");
    if (o->greedy > 0) { /* generation as bench decodes: one token per forward pass, the next is the argmax */
        int tok = argmax(c.logits + (size_t)(rows - 1) * m.n_vocab, m.n_vocab);
        printf(",\"greedy\":[%d", tok);
        for (int g = 1; g < o->greedy; g++) {
            forward(&c, &tok, 1, k + g - 1, 0);
            tok = argmax(c.logits, m.n_vocab);
            printf(",%d", tok);
        }
        printf("]");
    }
    printf("}\n");
    free(toks);
    ctx_free(&c);
    model_free(&m);
    return 0;
}

static int cmd_info(const opts_t *o) {
    model_t m;
    model_load(&m, o->model);
    printf("{\"engine\":\"farm-ref\",\"version\":\"%s\",\"simd\":\"%s\",\"arch\":\"%s\",\"name\":", FARM_VERSION,
           FARM_SIMD, m.arch);
    json_str(m.name);
    printf(",\"n_layers\":%d,\"d_model\":%d,\"n_heads\":%d,\"n_kv_heads\":%d,\"head_dim\":%d,\"d_ff\":%d,"
           "\"vocab_size\":%d,\"context_length\":%d,\"rope_theta\":%.9g,\"rope_style\":\"%s\",\"rms_eps\":%.9g,"
           "\"tied_embeddings\":%s,\"qkv_bias\":%s,",
           m.n_layers, m.d_model, m.n_heads, m.n_kv_heads, m.head_dim, m.d_ff, m.n_vocab, m.n_ctx_train,
           m.rope_theta, m.rope_neox ? "neox" : "norm", m.rms_eps, m.tied ? "true" : "false",
           m.qkv_bias ? "true" : "false");
    print_model_fields(&m, o->model);
    printf(",\"gguf_version\":%u,\"alignment\":%zu,\"tensors\":{", m.gg.version, m.gg.alignment);
    for (uint64_t i = 0; i < m.gg.n_tensors; i++) {
        const gguf_tensor *t = &m.gg.tensors[i];
        printf("%s\"%.*s\":\"%s\"", i ? "," : "", (int)t->name_len, t->name, gguf_type_name(t->type));
    }
    printf("}}\n");
    model_free(&m);
    return 0;
}

int main(int argc, char **argv) {
    quant_init();
    if (argc < 2) usage();
    opts_t o;
    if (!strcmp(argv[1], "--version")) {
        printf("farm-engine %s %s %s\n", FARM_VERSION, FARM_SIMD, FARM_BUILD_FLAGS);
        return 0;
    }
    if (strcmp(argv[1], "bench") && strcmp(argv[1], "logits") && strcmp(argv[1], "info")) usage();
    parse(argc, argv, &o);
    if (!strcmp(argv[1], "bench")) return cmd_bench(&o);
    if (!strcmp(argv[1], "logits")) return cmd_logits(&o);
    return cmd_info(&o);
}
