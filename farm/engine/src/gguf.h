/* GGUF v2/v3 reader: mmaps a file, indexes its metadata and tensors, never copies tensor data. */
#ifndef FARM_GGUF_H
#define FARM_GGUF_H

#include <stddef.h>
#include <stdint.h>

enum gguf_vtype {
    GV_U8 = 0, GV_I8, GV_U16, GV_I16, GV_U32, GV_I32, GV_F32, GV_BOOL, GV_STR, GV_ARR, GV_U64, GV_I64, GV_F64
};

/* GGML tensor types this engine runs. */
enum {
    GT_F32 = 0, GT_F16 = 1, GT_Q4_0 = 2, GT_Q4_1 = 3, GT_Q5_0 = 6, GT_Q5_1 = 7, GT_Q8_0 = 8, GT_Q4_K = 12,
    GT_Q5_K = 13, GT_Q6_K = 14
};

typedef struct {
    const char *key; /* points into the mapping, not NUL-terminated */
    uint64_t key_len;
    uint32_t type;
    const uint8_t *val; /* raw value in the mapping */
} gguf_kv;

typedef struct {
    const char *name;
    uint64_t name_len;
    uint32_t n_dims;
    int64_t ne[4]; /* ggml order: ne[0] is the contiguous (row) length */
    uint32_t type;
    uint64_t offset;
    const void *data;
    size_t nbytes;
} gguf_tensor;

typedef struct {
    const uint8_t *map;
    size_t size;
    uint32_t version;
    uint64_t n_kv, n_tensors;
    gguf_kv *kv;
    gguf_tensor *tensors;
    size_t alignment;
    size_t data_bytes; /* sum of tensor sizes */
} gguf_file;

/* Opens and validates `path`; on any problem calls farm_fail (exit 2). */
void gguf_open(gguf_file *g, const char *path);
void gguf_close(gguf_file *g);

const gguf_kv *gguf_find(const gguf_file *g, const char *key);
/* Integer/float getters accept any numeric GGUF type; `dflt` when absent. */
int64_t gguf_get_int(const gguf_file *g, const char *key, int64_t dflt);
double gguf_get_float(const gguf_file *g, const char *key, double dflt);
/* Element i of an array of numbers (per-layer values, e.g. OpenELM's head counts), or the value of a scalar
 * key for every i; `dflt` when absent. */
int64_t gguf_get_int_at(const gguf_file *g, const char *key, uint64_t i, int64_t dflt);
/* Copies a string value into buf (truncated); returns 0 when absent. */
int gguf_get_str(const gguf_file *g, const char *key, char *buf, size_t cap);
const gguf_tensor *gguf_tensor_find(const gguf_file *g, const char *name);
const char *gguf_type_name(uint32_t type);
size_t gguf_row_bytes(uint32_t type, int64_t n);

#endif
