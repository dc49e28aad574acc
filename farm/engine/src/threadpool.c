/* Thread pool. Workers spin briefly on a generation counter (a decode step issues ~100 tasks of a few
 * microseconds each, so waking through the kernel each time would dominate), then yield, then sleep on a
 * condition variable so an idle engine does not burn a core. Yielding matters when the device is
 * oversubscribed (background load, fewer free cores than threads): a pure spin would burn the time slice
 * the thread we wait for needs. */
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "common.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

#define SPIN_ITERS 4000    /* ~0.1-0.5 ms of pause-spinning ... */
#define YIELD_ITERS 20000  /* ... then sched_yield for a few ms before a worker sleeps */

struct pool {
    int n;
    pthread_t *threads;
    _Atomic int generation;
    _Atomic int pending;
    _Atomic int stop;
    _Atomic int parked; /* pool_park: sleep now instead of spinning until the next pool_run */
    pool_task task;
    void *arg;
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

typedef struct {
    pool_t *p;
    int ith;
} worker_arg;

static void *worker(void *a) {
    worker_arg *wa = a;
    pool_t *p = wa->p;
    const int ith = wa->ith;
    free(wa);
    int seen = 0;
    for (;;) {
        int spins = 0, gen;
        while ((gen = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen) {
            if (atomic_load_explicit(&p->parked, memory_order_relaxed)) spins = SPIN_ITERS + YIELD_ITERS;
            if (++spins < SPIN_ITERS) {
                CPU_RELAX();
                continue;
            }
            if (spins < SPIN_ITERS + YIELD_ITERS) {
                sched_yield();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            while (atomic_load(&p->generation) == seen) pthread_cond_wait(&p->cv, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        seen = gen;
        if (atomic_load(&p->stop)) return NULL;
        p->task(p->arg, ith, p->n);
        atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel);
    }
}

pool_t *pool_create(int n) {
    pool_t *p = calloc(1, sizeof *p);
    if (!p) farm_fail("out of memory");
    p->n = n < 1 ? 1 : n;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->threads = calloc((size_t)p->n, sizeof *p->threads);
    for (int i = 1; i < p->n; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        wa->p = p;
        wa->ith = i;
        if (pthread_create(&p->threads[i], NULL, worker, wa) != 0) farm_fail("cannot create thread");
    }
    return p;
}

int pool_size(const pool_t *p) { return p->n; }

void pool_park(pool_t *p) { atomic_store_explicit(&p->parked, 1, memory_order_relaxed); }

static void publish(pool_t *p) {
    atomic_store_explicit(&p->parked, 0, memory_order_relaxed);
    atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

void pool_run(pool_t *p, pool_task task, void *arg) {
    if (p->n == 1) {
        task(arg, 0, 1);
        return;
    }
    p->task = task;
    p->arg = arg;
    publish(p);
    task(arg, 0, p->n);
    for (int spins = 0; atomic_load_explicit(&p->pending, memory_order_acquire) > 0; spins++) {
        if (spins < SPIN_ITERS) CPU_RELAX();
        else sched_yield();
    }
}

void pool_destroy(pool_t *p) {
    if (!p) return;
    atomic_store(&p->stop, 1);
    if (p->n > 1) publish(p);
    for (int i = 1; i < p->n; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->threads);
    free(p);
}
