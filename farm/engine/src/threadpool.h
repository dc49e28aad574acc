/* A persistent pthread pool: n-1 workers plus the calling thread run one task at a time, the call
 * returning when all have finished (an implicit barrier). Threads are created once per process. */
#ifndef FARM_THREADPOOL_H
#define FARM_THREADPOOL_H

typedef void (*pool_task)(void *arg, int ith, int nth);
typedef struct pool pool_t;

pool_t *pool_create(int n_threads);
/* Runs task(arg, ith, nth) on every thread (ith 0 is the caller) and waits for all of them. */
void pool_run(pool_t *p, pool_task task, void *arg);
int pool_size(const pool_t *p);
/* Idle workers go to sleep at once rather than spin and yield until the next pool_run: for a caller
 * that hands the CPU to another process between runs (farm-engine --lockstep). */
void pool_park(pool_t *p);
void pool_destroy(pool_t *p);

#endif
