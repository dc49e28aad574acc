/* GGUF reader. Every length and offset read from the file is bounds-checked before use, since a
 * truncated or foreign file must end in a clean "exit 2" and never in a crash. */
#include "gguf.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

typedef struct {
    const uint8_t *p, *end;
    const char *path;
} cursor;

static void need(cursor *c, uint64_t n) {
    if ((uint64_t)(c->end - c->p) < n) farm_fail("%s: truncated GGUF file", c->path);
}

static uint32_t rd_u32(cursor *c) {
    uint32_t v;
    need(c, 4);
    memcpy(&v, c->p, 4);
    c->p += 4;
    return v;
}

static uint64_t rd_u64(cursor *c) {
    uint64_t v;
    need(c, 8);
    memcpy(&v, c->p, 8);
    c->p += 8;
    return v;
}

static const char *rd_str(cursor *c, uint64_t *len) {
    *len = rd_u64(c);
    need(c, *len);
    const char *s = (const char *)c->p;
    c->p += *len;
    return s;
}

static uint64_t scalar_size(uint32_t t, const char *path) {
    switch (t) {
    case GV_U8: case GV_I8: case GV_BOOL: return 1;
    case GV_U16: case GV_I16: return 2;
    case GV_U32: case GV_I32: case GV_F32: return 4;
    case GV_U64: case GV_I64: case GV_F64: return 8;
    default: farm_fail("%s: bad GGUF value type %u", path, t);
    }
}

static void skip_value(cursor *c, uint32_t t) {
    if (t == GV_STR) {
        uint64_t n;
        rd_str(c, &n);
    } else if (t == GV_ARR) {
        uint32_t et = rd_u32(c);
        uint64_t n = rd_u64(c);
        if (et == GV_STR) {
            for (uint64_t i = 0; i < n; i++) skip_value(c, GV_STR);
        } else if (et == GV_ARR) {
            farm_fail("%s: nested GGUF arrays are not supported", c->path);
        } else {
            uint64_t sz = scalar_size(et, c->path);
            if (n > (uint64_t)(c->end - c->p) / sz) farm_fail("%s: truncated GGUF file", c->path);
            c->p += n * sz;
        }
    } else {
        uint64_t sz = scalar_size(t, c->path);
        need(c, sz);
        c->p += sz;
    }
}

size_t gguf_row_bytes(uint32_t type, int64_t n) {
    switch (type) {
    case GT_F32: return (size_t)n * 4;
    case GT_F16: return (size_t)n * 2;
    case GT_Q4_0: return (size_t)n / 32 * 18;
    case GT_Q8_0: return (size_t)n / 32 * 34;
    case GT_Q4_1: return (size_t)n / 32 * 20;
    case GT_Q5_0: return (size_t)n / 32 * 22;
    case GT_Q5_1: return (size_t)n / 32 * 24;
    case GT_Q4_K: return (size_t)n / 256 * 144;
    case GT_Q5_K: return (size_t)n / 256 * 176;
    case GT_Q6_K: return (size_t)n / 256 * 210;
    default: return 0;
    }
}

const char *gguf_type_name(uint32_t type) {
    /* ggml.h's enum ggml_type, so an error names the type a user knows ("q4_K"), not its number */
    static const char *const names[] = {
        "f32", "f16", "q4_0", "q4_1", "q4_2 (removed)", "q4_3 (removed)", "q5_0", "q5_1", "q8_0", "q8_1",
        "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q8_K", "iq2_xxs", "iq2_xs", "iq3_xxs", "iq1_s", "iq4_nl",
        "iq3_s", "iq2_s", "iq4_xs", "i8", "i16", "i32", "i64", "f64", "iq1_m", "bf16", "q4_0_4_4 (removed)",
        "q4_0_4_8 (removed)", "q4_0_8_8 (removed)", "tq1_0", "tq2_0", "iq4_nl_4_4 (removed)",
        "iq4_nl_4_8 (removed)", "iq4_nl_8_8 (removed)", "mxfp4", "nvfp4", "q1_0", "q2_0"};
    return type < sizeof names / sizeof *names ? names[type] : "unknown";
}

void gguf_open(gguf_file *g, const char *path) {
    memset(g, 0, sizeof *g);
    int fd = open(path, O_RDONLY);
    if (fd < 0) farm_fail("%s: cannot open model file", path);
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) farm_fail("%s: not a regular file", path);
    if (st.st_size < 24) farm_fail("%s: not a GGUF file (too small)", path);
    int flags = MAP_PRIVATE;
#ifdef MAP_POPULATE
    flags |= MAP_POPULATE; /* fault weights in at load time, so load_ns and not rep 0 pays for it */
#endif
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, flags, fd, 0);
    close(fd);
    if (m == MAP_FAILED) farm_fail("%s: mmap failed", path);
    g->map = m;
    g->size = (size_t)st.st_size;
    cursor c = {g->map, g->map + g->size, path};
    if (memcmp(c.p, "GGUF", 4) != 0) farm_fail("%s: not a GGUF file (bad magic)", path);
    c.p += 4;
    g->version = rd_u32(&c);
    if (g->version < 2 || g->version > 3) farm_fail("%s: unsupported GGUF version %u", path, g->version);
    g->n_tensors = rd_u64(&c);
    g->n_kv = rd_u64(&c);
    if (g->n_kv > g->size || g->n_tensors > g->size) farm_fail("%s: corrupt GGUF header", path);
    g->kv = calloc(g->n_kv + 1, sizeof *g->kv);
    g->tensors = calloc(g->n_tensors + 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors) farm_fail("out of memory");
    for (uint64_t i = 0; i < g->n_kv; i++) {
        gguf_kv *kv = &g->kv[i];
        kv->key = rd_str(&c, &kv->key_len);
        kv->type = rd_u32(&c);
        kv->val = c.p;
        skip_value(&c, kv->type);
    }
    g->alignment = (size_t)gguf_get_int(g, "general.alignment", 32);
    if (g->alignment == 0 || (g->alignment & (g->alignment - 1))) farm_fail("%s: bad general.alignment", path);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        gguf_tensor *t = &g->tensors[i];
        t->name = rd_str(&c, &t->name_len);
        t->n_dims = rd_u32(&c);
        if (t->n_dims < 1 || t->n_dims > 4) farm_fail("%s: tensor with %u dims", path, t->n_dims);
        for (int d = 0; d < 4; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            uint64_t ne = rd_u64(&c);
            if (ne == 0 || ne > (1ULL << 40)) farm_fail("%s: bad tensor dimension", path);
            t->ne[d] = (int64_t)ne;
        }
        t->type = rd_u32(&c);
        t->offset = rd_u64(&c);
    }
    size_t data_start = (size_t)(c.p - g->map);
    data_start = (data_start + g->alignment - 1) / g->alignment * g->alignment;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        gguf_tensor *t = &g->tensors[i];
        size_t rb = gguf_row_bytes(t->type, t->ne[0]);
        t->nbytes = rb * (size_t)(t->ne[1] * t->ne[2] * t->ne[3]);
        g->data_bytes += t->nbytes;
        if (rb == 0) continue; /* unsupported type: reported by the model loader if it is used */
        if (t->offset % g->alignment) farm_fail("%s: misaligned tensor %.*s", path, (int)t->name_len, t->name);
        if (data_start + t->offset > g->size || t->nbytes > g->size - data_start - t->offset)
            farm_fail("%s: tensor %.*s extends past end of file", path, (int)t->name_len, t->name);
        t->data = g->map + data_start + t->offset;
    }
}

void gguf_close(gguf_file *g) {
    if (g->map) munmap((void *)g->map, g->size);
    free(g->kv);
    free(g->tensors);
    memset(g, 0, sizeof *g);
}

const gguf_kv *gguf_find(const gguf_file *g, const char *key) {
    size_t n = strlen(key);
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key_len == n && memcmp(g->kv[i].key, key, n) == 0) return &g->kv[i];
    return NULL;
}

/* The number of GGUF type `type` at p (key: for the error message). */
static int64_t num_at(uint32_t type, const uint8_t *p, const char *key) {
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32; uint64_t u64;
            int64_t i64; float f32; double f64; } u;
    memcpy(&u, p, type == GV_STR || type == GV_ARR ? 0 : scalar_size(type, "gguf"));
    switch (type) {
    case GV_U8: case GV_BOOL: return u.u8;
    case GV_I8: return u.i8;
    case GV_U16: return u.u16;
    case GV_I16: return u.i16;
    case GV_U32: return u.u32;
    case GV_I32: return u.i32;
    case GV_U64: return (int64_t)u.u64;
    case GV_I64: return u.i64;
    case GV_F32: return (int64_t)u.f32;
    case GV_F64: return (int64_t)u.f64;
    default: farm_fail("GGUF key %s is not a number", key);
    }
}

int64_t gguf_get_int(const gguf_file *g, const char *key, int64_t dflt) {
    const gguf_kv *kv = gguf_find(g, key);
    return kv ? num_at(kv->type, kv->val, key) : dflt;
}

int64_t gguf_get_int_at(const gguf_file *g, const char *key, uint64_t i, int64_t dflt) {
    const gguf_kv *kv = gguf_find(g, key);
    if (!kv) return dflt;
    if (kv->type != GV_ARR) return num_at(kv->type, kv->val, key);
    uint32_t type;
    uint64_t n;
    memcpy(&type, kv->val, 4);
    memcpy(&n, kv->val + 4, 8);
    if (type == GV_STR || type == GV_ARR) farm_fail("GGUF key %s is not an array of numbers", key);
    if (i >= n) farm_fail("GGUF key %s has %llu elements, element %llu asked for", key, (unsigned long long)n,
                          (unsigned long long)i);
    return num_at(type, kv->val + 12 + i * scalar_size(type, "gguf"), key);
}

double gguf_get_float(const gguf_file *g, const char *key, double dflt) {
    const gguf_kv *kv = gguf_find(g, key);
    if (!kv) return dflt;
    if (kv->type == GV_F32) {
        float f;
        memcpy(&f, kv->val, 4);
        return f;
    }
    if (kv->type == GV_F64) {
        double d;
        memcpy(&d, kv->val, 8);
        return d;
    }
    return (double)gguf_get_int(g, key, (int64_t)dflt);
}

int gguf_get_str(const gguf_file *g, const char *key, char *buf, size_t cap) {
    const gguf_kv *kv = gguf_find(g, key);
    if (!kv || kv->type != GV_STR || cap == 0) return 0;
    uint64_t n;
    memcpy(&n, kv->val, 8);
    if (n >= cap) n = cap - 1;
    memcpy(buf, kv->val + 8, n);
    buf[n] = 0;
    return 1;
}

const gguf_tensor *gguf_tensor_find(const gguf_file *g, const char *name) {
    size_t n = strlen(name);
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (g->tensors[i].name_len == n && memcmp(g->tensors[i].name, name, n) == 0) return &g->tensors[i];
    return NULL;
}
