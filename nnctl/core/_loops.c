/* nnctl.core._loops: what NumPy would run as several whole-buffer passes, as one loop each: every
   optimizer's update (see nnctl/train/optimizers.py), dense's bias with relu or alone and relu's
   gradient (nnctl/model/activations.py), sparse softmax cross-entropy's passes around exp()
   (nnctl/train/losses.py), and the finite check (nnctl/core/finite.py); the batch's gather
   (nnctl/data/batches.py); and the pool of threads the loops share with NumPy's OpenBLAS.

   NumPy runs an update as whole-buffer passes, one per operation: 10 passes over 5 buffers for
   Adam, a quarter of a training step on an MLP. These loops read each element once. Each performs
   the same IEEE operations in the same order with the same roundings as its NumPy passes (no FMA
   contraction: -ffp-contract=off; sqrt and division are correctly rounded in both), so the
   weights are bit-identical whether or not this module was built; tests/test_optimizers.py and
   tests/test_step_loops.py hold that. It is optional: pip builds it when a C compiler
   is present, and nnctl falls back to the NumPy passes when it is not.

   A factor of exactly 1 (x * 1 == x for every IEEE value) lets one loop serve two optimizers:
   AdamW's decoupled decay is Adam's with decay 1 skipped, Adagrad's accumulator is RMSprop's
   with rho = 1 and 1 - rho = 1.

   A decaying state (Adam's sums, SGD's velocity, RMSprop's squares) whose gradient has stopped
   (a dead unit, an input that is mostly zero) shrinks into the subnormal range within a thousand
   steps, where every multiply takes a slow microcode path: on MNIST-like data Adam's loop took
   5x as long from the second epoch on. So each stored state below the smallest normal number is
   flushed to zero (FLUSH), by the NumPy passes too (nnctl.train.optimizers.flush_subnormal): its
   contribution to an update is below any weight's rounding.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef _MSC_VER
#define restrict __restrict
#endif

/* One build runs at the widest vector width the CPU has (GCC picks the clone at load time). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

/* A subnormal value (or -0) becomes 0: an absolute value, a compare and a select, which vectorise
   (a NaN compares false and stays). */
#define FLUSH(X, ABS, TINY) (ABS(X) < (TINY) ? (TINY) - (TINY) : (X))

/* Adam's (and AdamW's) passes, element by element: params = params * decay (AdamW only);
   m_sum = m_sum * beta_1 + g; v_sum = v_sum * beta_2 + g * g;
   params = params + (m_sum / (sqrt(v_sum) + epsilon)) * step. */
#define ADAM_LOOP(NAME, T, SQRT, ABS, TINY)                                                      \
    VECTOR_CLONES static void NAME(T *restrict params, const T *restrict grads, T *restrict m_sum, \
                                   T *restrict v_sum, Py_ssize_t n, T beta_1, T beta_2,          \
                                   T epsilon, T step, T decay) {                                 \
        for (Py_ssize_t i = 0; i < n; i++) {                                                     \
            T g = grads[i];                                                                      \
            T p = params[i] * decay;                                                             \
            T m = m_sum[i] * beta_1;                                                             \
            m = m + g;                                                                           \
            m = FLUSH(m, ABS, TINY);                                                               \
            m_sum[i] = m;                                                                        \
            T square = g * g;                                                                    \
            T v = v_sum[i] * beta_2;                                                             \
            v = v + square;                                                                      \
            v = FLUSH(v, ABS, TINY);                                                               \
            v_sum[i] = v;                                                                        \
            T denominator = SQRT(v);                                                             \
            denominator = denominator + epsilon;                                                 \
            T update = m / denominator;                                                          \
            update = update * step;                                                              \
            params[i] = p + update;                                                              \
        }                                                                                        \
    }

/* SGD with momentum's passes: velocity = velocity * momentum + g; then
   params = params - velocity * lr, or with Nesterov params = params - (velocity * momentum + g) * lr. */
#define SGD_LOOP(NAME, T, ABS, TINY)                                                             \
    VECTOR_CLONES static void NAME(T *restrict params, const T *restrict grads,                  \
                                   T *restrict velocity, Py_ssize_t n, T momentum, T lr,         \
                                   int nesterov) {                                               \
        if (nesterov) {                                                                          \
            for (Py_ssize_t i = 0; i < n; i++) {                                                 \
                T g = grads[i];                                                                  \
                T v = velocity[i] * momentum;                                                    \
                v = v + g;                                                                       \
                v = FLUSH(v, ABS, TINY);                                                           \
                velocity[i] = v;                                                                 \
                T update = v * momentum;                                                         \
                update = update + g;                                                             \
                update = update * lr;                                                            \
                params[i] = params[i] - update;                                                  \
            }                                                                                    \
        } else {                                                                                 \
            for (Py_ssize_t i = 0; i < n; i++) {                                                 \
                T v = velocity[i] * momentum;                                                    \
                v = v + grads[i];                                                                \
                v = FLUSH(v, ABS, TINY);                                                           \
                velocity[i] = v;                                                                 \
                T update = v * lr;                                                               \
                params[i] = params[i] - update;                                                  \
            }                                                                                    \
        }                                                                                        \
    }

/* RMSprop's (and Adagrad's) passes: squares = squares * rho + (g * g) * scale;
   params = params - (g / (sqrt(squares) + epsilon)) * lr. */
#define SCALED_LOOP(NAME, T, SQRT, ABS, TINY)                                                    \
    VECTOR_CLONES static void NAME(T *restrict params, const T *restrict grads,                  \
                                   T *restrict squares, Py_ssize_t n, T rho, T scale, T epsilon, \
                                   T lr) {                                                       \
        for (Py_ssize_t i = 0; i < n; i++) {                                                     \
            T g = grads[i];                                                                      \
            T s = squares[i] * rho;                                                              \
            T square = g * g;                                                                    \
            square = square * scale;                                                             \
            s = s + square;                                                                      \
            s = FLUSH(s, ABS, TINY);                                                               \
            squares[i] = s;                                                                      \
            T denominator = SQRT(s);                                                             \
            denominator = denominator + epsilon;                                                 \
            T update = g / denominator;                                                          \
            update = update * lr;                                                                \
            params[i] = params[i] - update;                                                      \
        }                                                                                        \
    }

/* relu(x + bias), the bias broadcast over rows of `units` (none: relu(x)), as NumPy's add and
   maximum(v, 0) compute it: v where v > 0 or v is NaN, else +0 (so -0 becomes +0, in NumPy's
   vector loops and its scalar ones alike). `out` may be `x` itself (dense's pre-activation). The
   same loop without relu is dense's bias alone (a linear activation): x + bias. */
#define RELU(V) ((V) > 0 || (V) != (V) ? (V) : 0)
#define LINEAR(V) (V)
#define BIAS_LOOP(NAME, T, ACTIVATION)                                                           \
    VECTOR_CLONES static void NAME(const T *x, const T *restrict bias, T *out, Py_ssize_t rows,   \
                                   Py_ssize_t units) {                                           \
        for (Py_ssize_t r = 0; r < rows; r++, x += units, out += units) {                        \
            if (bias) {                                                                          \
                for (Py_ssize_t j = 0; j < units; j++) {                                         \
                    T v = x[j] + bias[j];                                                        \
                    out[j] = ACTIVATION(v);                                                      \
                }                                                                                \
            } else {                                                                             \
                for (Py_ssize_t j = 0; j < units; j++) out[j] = ACTIVATION(x[j]);                \
            }                                                                                    \
        }                                                                                        \
    }

/* relu's gradient from its output: g * (out > 0), NumPy's multiply by the boolean mask as 1 or 0
   (so g * 0 keeps g's sign, and a NaN or infinite g gives NaN where the unit is off). */
#define RELU_GRAD_LOOP(NAME, T)                                                                  \
    VECTOR_CLONES static void NAME(const T *restrict g, const T *restrict out,                   \
                                   T *restrict input_grad, Py_ssize_t n) {                       \
        for (Py_ssize_t i = 0; i < n; i++) input_grad[i] = g[i] * (T)(out[i] > 0);               \
    }

/* Sparse softmax cross-entropy from logits, the passes before and after NumPy's exp (whose vector
   exp, and the sum after it, stay NumPy's): each row shifted by its maximum, as NumPy's maximum
   reduces it (a NaN stays; between equal values the later one), with the label's shifted logit
   picked; then the softmax's gradient, ((e / sum) - onehot) * scale. */
#define MAX_STEP(TOP, X) ((TOP) != (TOP) || (TOP) > (X) ? (TOP) : (X)) /* NumPy's maximum(top, x) */
#define LANES 8 /* rows whose maxima are taken side by side: each is a chain of dependent selects */
#define XENT_SHIFT_LOOP(NAME, T)                                                                 \
    VECTOR_CLONES static void NAME(const T *restrict logits, const int64_t *restrict labels,     \
                                   T *restrict shifted, T *restrict picked, Py_ssize_t rows,     \
                                   Py_ssize_t classes) {                                         \
        T top[LANES];                                                                            \
        for (Py_ssize_t r = 0; r < rows; r += LANES) {                                           \
            const T *row = logits + r * classes;                                                 \
            Py_ssize_t lanes = rows - r < LANES ? rows - r : LANES;                              \
            if (lanes == LANES) {                                                                \
                for (int q = 0; q < LANES; q++) top[q] = row[q * classes];                       \
                for (Py_ssize_t j = 1; j < classes; j++)                                         \
                    for (int q = 0; q < LANES; q++) top[q] = MAX_STEP(top[q], row[q * classes + j]); \
            } else {                                                                             \
                for (Py_ssize_t q = 0; q < lanes; q++) {                                         \
                    top[q] = row[q * classes];                                                   \
                    for (Py_ssize_t j = 1; j < classes; j++) top[q] = MAX_STEP(top[q], row[q * classes + j]); \
                }                                                                                \
            }                                                                                    \
            for (Py_ssize_t q = 0; q < lanes; q++) {                                             \
                T *out = shifted + (r + q) * classes;                                            \
                for (Py_ssize_t j = 0; j < classes; j++) out[j] = row[q * classes + j] - top[q]; \
                picked[r + q] = out[labels[r + q]];                                              \
            }                                                                                    \
        }                                                                                        \
    }

#define XENT_GRAD_LOOP(NAME, T)                                                                  \
    VECTOR_CLONES static void NAME(T *restrict grad, const T *restrict sums,                     \
                                   const int64_t *restrict labels, Py_ssize_t rows,              \
                                   Py_ssize_t classes, T scale) {                                \
        for (Py_ssize_t r = 0; r < rows; r++, grad += classes) {                                 \
            for (Py_ssize_t j = 0; j < classes; j++) {                                           \
                T p = grad[j] / sums[r];                                                         \
                grad[j] = (j == labels[r] ? p - 1 : p) * scale;                                  \
            }                                                                                    \
        }                                                                                        \
    }

/* Whether every element is finite: its exponent bits are not all ones. An integer OR over the
   bits vectorises where a float sum (NumPy's check) cannot, and never overflows to a false inf. */
#define FINITE_LOOP(NAME, T, U, EXPONENT)                                                        \
    VECTOR_CLONES static int NAME(const U *restrict bits, Py_ssize_t n) {                         \
        U bad = 0;                                                                               \
        for (Py_ssize_t i = 0; i < n; i++) bad |= (U)((bits[i] & EXPONENT) == EXPONENT);          \
        return !bad;                                                                             \
    }

ADAM_LOOP(adam_float, float, sqrtf, fabsf, FLT_MIN)
ADAM_LOOP(adam_double, double, sqrt, fabs, DBL_MIN)
SGD_LOOP(sgd_float, float, fabsf, FLT_MIN)
SGD_LOOP(sgd_double, double, fabs, DBL_MIN)
SCALED_LOOP(scaled_float, float, sqrtf, fabsf, FLT_MIN)
SCALED_LOOP(scaled_double, double, sqrt, fabs, DBL_MIN)
BIAS_LOOP(relu_float, float, RELU)
BIAS_LOOP(relu_double, double, RELU)
BIAS_LOOP(bias_float, float, LINEAR)
BIAS_LOOP(bias_double, double, LINEAR)
RELU_GRAD_LOOP(relu_grad_float, float)
RELU_GRAD_LOOP(relu_grad_double, double)
XENT_SHIFT_LOOP(xent_shift_float, float)
XENT_SHIFT_LOOP(xent_shift_double, double)
XENT_GRAD_LOOP(xent_grad_float, float)
XENT_GRAD_LOOP(xent_grad_double, double)
FINITE_LOOP(finite_float, float, uint32_t, 0x7f800000u)
FINITE_LOOP(finite_double, double, uint64_t, 0x7ff0000000000000ull)

/* Below this many elements a loop runs on the calling thread alone: handing out work costs about
   a microsecond. */
#define POOL_SPLIT_MIN 16384

/* --- one pool of threads for OpenBLAS and these loops -------------------------------------------

   NumPy's OpenBLAS runs its products on threads of its own, which spin for a while after each
   product and then sleep. Between products a training step runs these loops on one thread, and a
   thread of nnctl's own could not take the second core from OpenBLAS's spinning one (half of Adam
   on a second thread gained nothing). So nnctl gives OpenBLAS this pool instead (OpenBLAS's
   caller-managed threading, openblas_set_threads_callback_function), and the loops below split
   their elements across the same threads. OpenBLAS still decides how a product is divided, so its
   results are bit-identical; the loops are elementwise, so theirs are too. */
#if defined(__linux__) && defined(__GNUC__)
#define NNCTL_POOL 1
#include <dlfcn.h> /* with <link.h>: GNU extensions, which Python.h has turned on (_GNU_SOURCE) */
#include <link.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

#define POOL_MAX_THREADS 256
/* A worker spins this long for the next task before it sleeps: a step's products and loops come
   microseconds apart, and waking a sleeping thread costs tens of microseconds. */
#define POOL_SPIN_NS 5000000
typedef void (*part_fn)(void *task, int part, int parts);
typedef void (*openblas_dojob)(int thread, void *job, int data);
typedef void (*openblas_threads)(int sync, openblas_dojob dojob, int jobs, size_t job_size, void *job_data, int data);

static struct {
    pthread_mutex_t dispatch; /* one task at a time */
    pthread_mutex_t sleep_lock;
    pthread_cond_t wakeup;
    atomic_uint_fast64_t generation; /* bumped once a task is published */
    atomic_int unfinished;           /* workers yet to finish the current task */
    atomic_int sleepers;
    int workers;
    uint_fast64_t born[POOL_MAX_THREADS]; /* the generation each worker started at */
    part_fn run;
    void *task;
    int parts;
    int (*blas_threads)(void); /* OpenBLAS's current thread count, once the pool is shared with it */
    atomic_ulong blas_tasks;   /* OpenBLAS's parallel calls through the pool (for tests) */
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};

static _Thread_local int in_pool; /* this thread runs a part of a task: a nested task starts threads */

static uint_fast64_t next_generation(uint_fast64_t seen) {
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (unsigned spins = 1;; spins++) {
        uint_fast64_t current = atomic_load_explicit(&pool.generation, memory_order_acquire);
        if (current != seen) return current;
        CPU_RELAX();
        if (spins % 1024 == 0) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            if ((now.tv_sec - start.tv_sec) * 1000000000L + (now.tv_nsec - start.tv_nsec) > POOL_SPIN_NS) break;
        }
    }
    pthread_mutex_lock(&pool.sleep_lock);
    atomic_fetch_add(&pool.sleepers, 1);
    uint_fast64_t current;
    while ((current = atomic_load(&pool.generation)) == seen) pthread_cond_wait(&pool.wakeup, &pool.sleep_lock);
    atomic_fetch_sub(&pool.sleepers, 1);
    pthread_mutex_unlock(&pool.sleep_lock);
    return current;
}

static void *pool_worker(void *argument) {
    int part = (int)(intptr_t)argument; /* worker w runs part w; the caller runs part 0 */
    in_pool = 1;
    for (uint_fast64_t seen = pool.born[part];;) {
        seen = next_generation(seen);
        if (part < pool.parts) pool.run(pool.task, part, pool.parts);
        atomic_fetch_sub_explicit(&pool.unfinished, 1, memory_order_release);
    }
    return NULL;
}

/* At least `workers` workers (called with `dispatch` held); 0, or -1 where a thread would not start. */
static int pool_grow(int workers) {
    if (workers >= POOL_MAX_THREADS) return -1;
    while (pool.workers < workers) {
        int part = pool.workers + 1;
        pthread_t thread;
        pool.born[part] = atomic_load(&pool.generation);
        if (pthread_create(&thread, NULL, pool_worker, (void *)(intptr_t)part) != 0) return -1;
        pthread_detach(thread);
        pool.workers++;
    }
    return 0;
}

typedef struct {
    part_fn run;
    void *task;
    int part, parts;
} lone_part;

static void *run_lone_part(void *argument) {
    lone_part *p = argument;
    in_pool = 1;
    p->run(p->task, p->part, p->parts);
    return NULL;
}

/* A task started from inside another (or with the pool out of threads): threads of its own, since
   OpenBLAS's parts wait for each other and must all run at once. */
static void run_on_new_threads(part_fn run, void *task, int parts) {
    lone_part lone[POOL_MAX_THREADS];
    pthread_t threads[POOL_MAX_THREADS];
    int started[POOL_MAX_THREADS] = {0};
    if (parts > POOL_MAX_THREADS) parts = POOL_MAX_THREADS;
    for (int part = 1; part < parts; part++) {
        lone[part] = (lone_part){run, task, part, parts};
        started[part] = pthread_create(&threads[part], NULL, run_lone_part, &lone[part]) == 0;
        if (!started[part]) run(task, part, parts);
    }
    run(task, 0, parts);
    for (int part = 1; part < parts; part++)
        if (started[part]) pthread_join(threads[part], NULL);
}

/* run(task, part, parts) for every part, all at once, the caller running part 0. */
static void pool_run(part_fn run, void *task, int parts) {
    if (parts <= 1) {
        run(task, 0, 1);
        return;
    }
    if (in_pool) {
        run_on_new_threads(run, task, parts);
        return;
    }
    pthread_mutex_lock(&pool.dispatch);
    if (pool_grow(parts - 1) < 0) { /* still one task at a time: OpenBLAS's parts share its buffers */
        in_pool = 1;
        run_on_new_threads(run, task, parts);
        in_pool = 0;
        pthread_mutex_unlock(&pool.dispatch);
        return;
    }
    pool.run = run;
    pool.task = task;
    pool.parts = parts;
    atomic_store(&pool.unfinished, pool.workers);
    atomic_fetch_add(&pool.generation, 1);
    if (atomic_load(&pool.sleepers)) {
        pthread_mutex_lock(&pool.sleep_lock);
        pthread_cond_broadcast(&pool.wakeup);
        pthread_mutex_unlock(&pool.sleep_lock);
    }
    in_pool = 1;
    run(task, 0, parts);
    in_pool = 0;
    while (atomic_load_explicit(&pool.unfinished, memory_order_acquire)) CPU_RELAX();
    pthread_mutex_unlock(&pool.dispatch);
}

/* A forked child has none of the parent's threads: it starts workers again as tasks need them. */
static void pool_after_fork(void) {
    pthread_mutex_init(&pool.dispatch, NULL);
    pthread_mutex_init(&pool.sleep_lock, NULL);
    pthread_cond_init(&pool.wakeup, NULL);
    atomic_store(&pool.unfinished, 0);
    atomic_store(&pool.sleepers, 0);
    pool.workers = 0;
    in_pool = 0;
}

typedef struct {
    openblas_dojob dojob;
    char *jobs;
    size_t job_size;
    int data;
} blas_task;

static void blas_part(void *task, int part, int parts) {
    blas_task *t = task;
    t->dojob(part, t->jobs + (size_t)part * t->job_size, t->data);
}

/* OpenBLAS's threading callback: every job at once, returning when all are done. */
static void run_blas_jobs(int sync, openblas_dojob dojob, int jobs, size_t job_size, void *job_data, int data) {
    (void)sync; /* OpenBLAS always asks for a synchronous run */
    blas_task task = {dojob, job_data, job_size, data};
    atomic_fetch_add_explicit(&pool.blas_tasks, 1, memory_order_relaxed);
    pool_run(blas_part, &task, jobs);
}

/* The loaded OpenBLAS's symbol `name` with one of the prefixes and suffixes NumPy's builds use. */
static void *openblas_symbol(void *library, const char *name) {
    static const char *prefixes[] = {"scipy_", ""}, *suffixes[] = {"64_", "_64", ""};
    char full[128];
    for (int p = 0; p < 2; p++)
        for (int s = 0; s < 3; s++) {
            snprintf(full, sizeof full, "%s%s%s", prefixes[p], name, suffixes[s]);
            void *symbol = dlsym(library, full);
            if (symbol) return symbol;
        }
    return NULL;
}

/* Each OpenBLAS loaded (NumPy's, and SciPy's own copy where SciPy came first) that takes a
   threading callback gets the pool; the loops follow NumPy's thread count (the first's, where no
   path names NumPy). Each library found stays open: its functions are kept. */
static int share_with_openblas(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    int (**threads)(void) = data;
    if (!info->dlpi_name || !strstr(info->dlpi_name, "openblas")) return 0;
    void *library = dlopen(info->dlpi_name, RTLD_NOW | RTLD_NOLOAD);
    if (!library) return 0;
    void *setter = openblas_symbol(library, "openblas_set_threads_callback_function");
    void *count = openblas_symbol(library, "openblas_get_num_threads");
    if (!setter || !count) {
        dlclose(library);
        return 0;
    }
    ((void (*)(openblas_threads))setter)(run_blas_jobs);
    if (!*threads || strstr(info->dlpi_name, "numpy")) *threads = (int (*)(void))count;
    return 0;
}

/* The loop's threads now: OpenBLAS's count once the pool is shared, else 1. */
static int loop_threads(void) {
    int threads = pool.blas_threads ? pool.blas_threads() : 1;
    return threads < 1 ? 1 : threads > POOL_MAX_THREADS ? POOL_MAX_THREADS : threads;
}
#else
static int loop_threads(void) { return 1; }
#define pool_run(run, task, parts) (run)((task), 0, 1)
#endif

/* A loop over indices [begin, end) (elements, or rows of `weight` elements), split into runs of
   whole cache lines, one a thread. */
typedef void (*range_fn)(void *task, Py_ssize_t begin, Py_ssize_t end);
typedef struct {
    range_fn range;
    void *task;
    Py_ssize_t n;
} split_task;

static void split_part(void *task, int part, int parts) {
    split_task *s = task;
    Py_ssize_t chunk = ((s->n + parts - 1) / parts + 15) / 16 * 16;
    Py_ssize_t begin = part * chunk, end = begin + chunk < s->n ? begin + chunk : s->n;
    if (begin < end) s->range(s->task, begin, end);
}

static void run_split(range_fn range, void *task, Py_ssize_t n, Py_ssize_t weight) {
    int parts = n * weight >= POOL_SPLIT_MIN ? loop_threads() : 1;
    if (parts == 1) {
        range(task, 0, n);
        return;
    }
    split_task split = {range, task, n};
    pool_run(split_part, &split, parts);
}

/* One loop's buffers (by element) and scalars, for its range function. */
typedef struct {
    char kind;
    char *buffers[4];
    double scalars[5];
    int flag;
} loop_task;

#define AT(i) ((void *)(t->buffers[i] + begin * (t->kind == 'f' ? sizeof(float) : sizeof(double))))
#define SF(i) ((float)t->scalars[i])
#define SD(i) (t->scalars[i])

static void adam_range(void *task, Py_ssize_t begin, Py_ssize_t end) {
    loop_task *t = task;
    if (t->kind == 'f') adam_float(AT(0), AT(1), AT(2), AT(3), end - begin, SF(0), SF(1), SF(2), SF(3), SF(4));
    else adam_double(AT(0), AT(1), AT(2), AT(3), end - begin, SD(0), SD(1), SD(2), SD(3), SD(4));
}

static void sgd_range(void *task, Py_ssize_t begin, Py_ssize_t end) {
    loop_task *t = task;
    if (t->kind == 'f') sgd_float(AT(0), AT(1), AT(2), end - begin, SF(0), SF(1), t->flag);
    else sgd_double(AT(0), AT(1), AT(2), end - begin, SD(0), SD(1), t->flag);
}

static void scaled_range(void *task, Py_ssize_t begin, Py_ssize_t end) {
    loop_task *t = task;
    if (t->kind == 'f') scaled_float(AT(0), AT(1), AT(2), end - begin, SF(0), SF(1), SF(2), SF(3));
    else scaled_double(AT(0), AT(1), AT(2), end - begin, SD(0), SD(1), SD(2), SD(3));
}

static void relu_grad_range(void *task, Py_ssize_t begin, Py_ssize_t end) {
    loop_task *t = task;
    if (t->kind == 'f') relu_grad_float(AT(1), AT(2), AT(0), end - begin);
    else relu_grad_double(AT(1), AT(2), AT(0), end - begin);
}

/* A buffer's struct format without its byte-order prefix, or NULL where that order is not native. */
static const char *native_format(const Py_buffer *view) {
    const char *format = view->format;
    if (format[0] == '@' || format[0] == '=') return format + 1;
#if PY_LITTLE_ENDIAN
    if (format[0] == '<') return format + 1;
    if (format[0] == '>' || format[0] == '!') return NULL;
#else
    if (format[0] == '>' || format[0] == '!') return format + 1;
    if (format[0] == '<') return NULL;
#endif
    return format;
}

/* 'f' or 'd' for a native float32 or float64 buffer, 'q' for a native int64 one, 0 otherwise. */
static char buffer_kind(const Py_buffer *view) {
    const char *format = native_format(view);
    if (!format) return 0;
    if (strcmp(format, "f") == 0 && view->itemsize == 4) return 'f';
    if (strcmp(format, "d") == 0 && view->itemsize == 8) return 'd';
    if ((strcmp(format, "q") == 0 || strcmp(format, "l") == 0) && view->itemsize == 8) return 'q';
    return 0;
}

/* The `count` buffers in `objects` as views (writable, but buffer i read-only where bit i of
   `read_only` is set), all C-contiguous float32 or float64 of one dtype and length: their kind
   ('f' or 'd'), or 0 with an exception set and nothing held. names[0] is the function's name. */
static char get_buffers(const char *const *names, PyObject **objects, Py_buffer *views, int count, unsigned read_only) {
    int held = 0;
    for (; held < count; held++) {
        int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | ((read_only >> held) & 1 ? 0 : PyBUF_WRITABLE);
        if (PyObject_GetBuffer(objects[held], &views[held], flags) < 0) goto fail;
    }
    char kind = buffer_kind(&views[0]);
    if (kind == 'q') kind = 0;
    for (int i = 0; i < count; i++) {
        if (!kind || buffer_kind(&views[i]) != kind || views[i].len != views[0].len) {
            PyErr_Format(PyExc_TypeError, "%s: expected %d contiguous float32 or float64 buffers of one "
                         "dtype and length, received a different %s", names[0], count, names[i + 1]);
            goto fail;
        }
    }
    return kind;
fail:
    while (held > 0) PyBuffer_Release(&views[--held]);
    return 0;
}

#define B(i) views[i].buf /* buffer i of a wrapper's views */

/* An update's body once its arguments are parsed: the `count` buffers of `objects` as `views`
   (the gradients, the second, read-only), `range` over all their elements without the GIL, None. */
static PyObject *run_update(const char *const *names, PyObject **objects, Py_buffer *views, int count,
                            range_fn range, loop_task *task) {
    task->kind = get_buffers(names, objects, views, count, 1u << 1);
    if (!task->kind) return NULL;
    for (int i = 0; i < count; i++) task->buffers[i] = views[i].buf;
    Py_ssize_t n = views[0].len / views[0].itemsize;
    Py_BEGIN_ALLOW_THREADS
    run_split(range, task, n, 1);
    Py_END_ALLOW_THREADS
    for (int i = count; i > 0;) PyBuffer_Release(&views[--i]);
    Py_RETURN_NONE;
}

static PyObject *adam(PyObject *module, PyObject *args) {
    static const char *names[] = {"adam", "params", "grads", "m_sum", "v_sum"};
    PyObject *objects[4];
    Py_buffer views[4];
    loop_task task = {.scalars = {0, 0, 0, 0, 1.0}}; /* beta_1, beta_2, epsilon, step, decay */
    if (!PyArg_ParseTuple(args, "OOOOdddd|d:adam", &objects[0], &objects[1], &objects[2], &objects[3],
                          &task.scalars[0], &task.scalars[1], &task.scalars[2], &task.scalars[3], &task.scalars[4]))
        return NULL;
    return run_update(names, objects, views, 4, adam_range, &task);
}

static PyObject *sgd(PyObject *module, PyObject *args) {
    static const char *names[] = {"sgd", "params", "grads", "velocity"};
    PyObject *objects[3];
    Py_buffer views[3];
    loop_task task = {0}; /* momentum, lr; nesterov */
    if (!PyArg_ParseTuple(args, "OOOddp:sgd", &objects[0], &objects[1], &objects[2], &task.scalars[0],
                          &task.scalars[1], &task.flag))
        return NULL;
    return run_update(names, objects, views, 3, sgd_range, &task);
}

static PyObject *scaled(PyObject *module, PyObject *args) {
    static const char *names[] = {"scaled", "params", "grads", "squares"};
    PyObject *objects[3];
    Py_buffer views[3];
    loop_task task = {0}; /* rho, scale, epsilon, lr */
    if (!PyArg_ParseTuple(args, "OOOdddd:scaled", &objects[0], &objects[1], &objects[2], &task.scalars[0],
                          &task.scalars[1], &task.scalars[2], &task.scalars[3]))
        return NULL;
    return run_update(names, objects, views, 3, scaled_range, &task);
}

/* A bias loop's arguments, for its rows [begin, end). */
typedef struct {
    char kind;
    const char *x, *bias;
    char *out;
    Py_ssize_t units;
    void (*float_loop)(const float *, const float *, float *, Py_ssize_t, Py_ssize_t);
    void (*double_loop)(const double *, const double *, double *, Py_ssize_t, Py_ssize_t);
} biased_task;

static void biased_range(void *task, Py_ssize_t begin, Py_ssize_t end) {
    biased_task *t = task;
    size_t offset = (size_t)begin * t->units * (t->kind == 'f' ? sizeof(float) : sizeof(double));
    if (t->kind == 'f') t->float_loop((const void *)(t->x + offset), (const void *)t->bias, (void *)(t->out + offset), end - begin, t->units);
    else t->double_loop((const void *)(t->x + offset), (const void *)t->bias, (void *)(t->out + offset), end - begin, t->units);
}

/* relu(x, bias, out) and add_bias(x, bias, out): parse, check, run float_loop or double_loop, return out. */
static PyObject *biased(PyObject *args, const char *const *names, int bias_required,
                        void (*float_loop)(const float *, const float *, float *, Py_ssize_t, Py_ssize_t),
                        void (*double_loop)(const double *, const double *, double *, Py_ssize_t, Py_ssize_t)) {
    PyObject *objects[2], *bias_object;
    Py_buffer views[2], bias_view = {0};
    if (!PyArg_UnpackTuple(args, names[0], 3, 3, &objects[1], &bias_object, &objects[0])) return NULL;
    char kind = get_buffers(names, objects, views, 2, 1u << 1);
    if (!kind) return NULL;
    Py_ssize_t n = views[0].len / views[0].itemsize, units = views[0].ndim ? views[0].shape[views[0].ndim - 1] : 1;
    if (bias_object != Py_None || bias_required) {
        if (PyObject_GetBuffer(bias_object, &bias_view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) goto fail;
        if (buffer_kind(&bias_view) != kind || bias_view.len / bias_view.itemsize != units) {
            PyBuffer_Release(&bias_view);
            PyErr_Format(PyExc_TypeError, "%s: expected a contiguous bias of x's dtype and last axis (%zd), "
                         "received another", names[0], units);
            goto fail;
        }
    }
    biased_task task = {kind, B(1), bias_view.buf, B(0), units, float_loop, double_loop};
    Py_BEGIN_ALLOW_THREADS
    run_split(biased_range, &task, units ? n / units : 0, units);
    Py_END_ALLOW_THREADS
    if (bias_view.obj) PyBuffer_Release(&bias_view);
    PyBuffer_Release(&views[1]);
    PyBuffer_Release(&views[0]);
    return Py_NewRef(objects[0]);
fail:
    PyBuffer_Release(&views[1]);
    PyBuffer_Release(&views[0]);
    return NULL;
}

static PyObject *relu(PyObject *module, PyObject *args) {
    static const char *names[] = {"relu", "out", "x", "bias"};
    return biased(args, names, 0, relu_float, relu_double);
}

static PyObject *add_bias(PyObject *module, PyObject *args) {
    static const char *names[] = {"add_bias", "out", "x", "bias"};
    return biased(args, names, 1, bias_float, bias_double);
}

static PyObject *relu_grad(PyObject *module, PyObject *args) {
    static const char *names[] = {"relu_grad", "input_grad", "g", "out"};
    PyObject *objects[3];
    Py_buffer views[3];
    if (!PyArg_ParseTuple(args, "OOO:relu_grad", &objects[1], &objects[2], &objects[0])) return NULL;
    char kind = get_buffers(names, objects, views, 3, (1u << 1) | (1u << 2));
    if (!kind) return NULL;
    loop_task task = {kind, {views[0].buf, views[1].buf, views[2].buf}};
    Py_ssize_t n = views[0].len / views[0].itemsize;
    Py_BEGIN_ALLOW_THREADS
    run_split(relu_grad_range, &task, n, 1);
    Py_END_ALLOW_THREADS
    for (int i = 3; i > 0;) PyBuffer_Release(&views[--i]);
    return Py_NewRef(objects[0]);
}

/* One more C-contiguous buffer of `count` elements: of float `kind`, or int64 where kind is 'q'
   (class labels). 0 on success; -1 with an exception set and nothing held. */
static int get_vector(const char *function, const char *name, PyObject *object, Py_buffer *view, char kind,
                      Py_ssize_t count, int writable) {
    if (PyObject_GetBuffer(object, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0) return -1;
    if (buffer_kind(view) != kind || view->len / view->itemsize != count) {
        PyErr_Format(PyExc_TypeError, "%s: expected %s as %zd contiguous %s, received another", function, name, count,
                     kind == 'q' ? "int64 values" : "floats of the logits' dtype");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* Every label in [0, classes): the loops index rows by them. */
static int labels_in_range(const Py_buffer *labels, Py_ssize_t classes) {
    const int64_t *values = labels->buf;
    for (Py_ssize_t i = 0; i < labels->len / 8; i++) {
        if (values[i] < 0 || values[i] >= classes) {
            PyErr_Format(PyExc_IndexError, "expected class labels in [0, %zd), received %lld", classes, (long long)values[i]);
            return 0;
        }
    }
    return 1;
}

static PyObject *xent_shift(PyObject *module, PyObject *args) {
    static const char *names[] = {"xent_shift", "shifted", "logits"};
    PyObject *objects[2], *labels_object, *picked_object;
    Py_buffer views[2], labels, picked;
    if (!PyArg_ParseTuple(args, "OOOO:xent_shift", &objects[1], &labels_object, &objects[0], &picked_object)) return NULL;
    char kind = get_buffers(names, objects, views, 2, 1u << 1);
    if (!kind) return NULL;
    Py_ssize_t rows = views[1].ndim == 2 ? views[1].shape[0] : 0, classes = rows ? views[1].shape[1] : 0;
    if (!rows || !classes) {
        PyErr_SetString(PyExc_TypeError, "xent_shift: expected logits of shape (rows, classes), received another");
        goto release;
    }
    if (get_vector(names[0], "labels", labels_object, &labels, 'q', rows, 0) < 0) goto release;
    if (get_vector(names[0], "picked", picked_object, &picked, kind, rows, 1) < 0) goto release_labels;
    if (labels_in_range(&labels, classes)) {
        Py_BEGIN_ALLOW_THREADS
        if (kind == 'f') xent_shift_float(B(1), labels.buf, B(0), picked.buf, rows, classes);
        else xent_shift_double(B(1), labels.buf, B(0), picked.buf, rows, classes);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&picked);
release_labels:
    PyBuffer_Release(&labels);
release:
    PyBuffer_Release(&views[1]);
    PyBuffer_Release(&views[0]);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

static PyObject *xent_grad(PyObject *module, PyObject *args) {
    static const char *names[] = {"xent_grad", "grad"};
    PyObject *objects[1], *sums_object, *labels_object;
    Py_buffer views[1], sums, labels;
    double scale;
    if (!PyArg_ParseTuple(args, "OOOd:xent_grad", &objects[0], &sums_object, &labels_object, &scale)) return NULL;
    char kind = get_buffers(names, objects, views, 1, 0);
    if (!kind) return NULL;
    Py_ssize_t rows = views[0].ndim == 2 ? views[0].shape[0] : 0, classes = rows ? views[0].shape[1] : 0;
    if (!rows || !classes) {
        PyErr_SetString(PyExc_TypeError, "xent_grad: expected a gradient of shape (rows, classes), received another");
        goto release;
    }
    if (get_vector(names[0], "sums", sums_object, &sums, kind, rows, 0) < 0) goto release;
    if (get_vector(names[0], "labels", labels_object, &labels, 'q', rows, 0) < 0) goto release_sums;
    if (labels_in_range(&labels, classes)) {
        Py_BEGIN_ALLOW_THREADS
        if (kind == 'f') xent_grad_float(B(0), sums.buf, labels.buf, rows, classes, (float)scale);
        else xent_grad_double(B(0), sums.buf, labels.buf, rows, classes, scale);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&labels);
release_sums:
    PyBuffer_Release(&sums);
release:
    PyBuffer_Release(&views[0]);
    if (PyErr_Occurred()) return NULL;
    return Py_NewRef(objects[0]);
}

/* Parts that find a NaN or an infinity each clear the one shared verdict (set before the split). */
#ifdef NNCTL_POOL
#define CLEAR_SHARED(flag) __atomic_store_n(&(flag), 0, __ATOMIC_RELAXED)
#else
#define CLEAR_SHARED(flag) ((flag) = 0)
#endif

static void finite_range(void *task, Py_ssize_t begin, Py_ssize_t end) {
    loop_task *t = task;
    if (!(t->kind == 'f' ? finite_float(AT(0), end - begin) : finite_double(AT(0), end - begin))) CLEAR_SHARED(t->flag);
}

static PyObject *all_finite(PyObject *module, PyObject *array) {
    Py_buffer view;
    if (PyObject_GetBuffer(array, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    char kind = buffer_kind(&view);
    if (kind != 'f' && kind != 'd') {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "all_finite: expected a contiguous float32 or float64 buffer, received another");
        return NULL;
    }
    loop_task task = {kind, {view.buf}, .flag = 1};
    Py_ssize_t n = view.len / view.itemsize;
    Py_BEGIN_ALLOW_THREADS
    run_split(finite_range, &task, n, 1);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return PyBool_FromLong(task.flag);
}

/* A batch's rows gathered from a data set (NumPy's take along axis 0), split across the pool: each
   row's bytes copied whole, so any dtype is copied as it is. */
typedef struct {
    const char *source;
    const int64_t *rows;
    char *out;
    size_t row_bytes;
} gather_task;

static void gather_range(void *task, Py_ssize_t begin, Py_ssize_t end) {
    gather_task *t = task;
    for (Py_ssize_t i = begin; i < end; i++) memcpy(t->out + i * t->row_bytes, t->source + t->rows[i] * t->row_bytes, t->row_bytes);
}

static PyObject *gather_rows(PyObject *module, PyObject *args) {
    PyObject *source_object, *rows_object, *out_object;
    Py_buffer source, rows, out;
    if (!PyArg_ParseTuple(args, "OOO:gather_rows", &source_object, &rows_object, &out_object)) return NULL;
    if (PyObject_GetBuffer(source_object, &source, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    if (PyObject_GetBuffer(out_object, &out, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) goto release_source;
    Py_ssize_t count = out.ndim ? out.shape[0] : 0, length = source.ndim ? source.shape[0] : 0;
    if (!count || !length || source.ndim != out.ndim || strcmp(source.format, out.format) != 0 ||
        source.len / length != out.len / count) {
        PyErr_SetString(PyExc_TypeError, "gather_rows: expected a source and an out of one dtype and row shape, "
                                         "received others");
        goto release_out;
    }
    if (get_vector("gather_rows", "rows", rows_object, &rows, 'q', count, 0) < 0) goto release_out;
    const int64_t *indices = rows.buf;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (indices[i] < 0 || indices[i] >= length) {
            PyErr_Format(PyExc_IndexError, "gather_rows: expected rows in [0, %zd), received %lld", length, (long long)indices[i]);
            goto release_rows;
        }
    }
    gather_task task = {source.buf, indices, out.buf, (size_t)(out.len / count)};
    Py_BEGIN_ALLOW_THREADS
    run_split(gather_range, &task, count, (Py_ssize_t)task.row_bytes / 4);
    Py_END_ALLOW_THREADS
release_rows:
    PyBuffer_Release(&rows);
release_out:
    PyBuffer_Release(&out);
release_source:
    PyBuffer_Release(&source);
    if (PyErr_Occurred()) return NULL;
    return Py_NewRef(out_object);
}

/* share_blas_threads(): OpenBLAS's products and these loops on one pool (see the pool above). */
static PyObject *share_blas_threads(PyObject *module, PyObject *unused) {
#ifdef NNCTL_POOL
    if (!pool.blas_threads) { /* the GIL is held: one caller at a time */
        int (*threads)(void) = NULL;
        dl_iterate_phdr(share_with_openblas, &threads);
        if (threads) {
            pthread_atfork(NULL, NULL, pool_after_fork);
            pool.blas_threads = threads;
        }
    }
#endif
    return PyLong_FromLong(loop_threads());
}

static PyObject *pool_stats(PyObject *module, PyObject *unused) {
#ifdef NNCTL_POOL
    return Py_BuildValue("iik", loop_threads(), pool.workers, (unsigned long)atomic_load(&pool.blas_tasks));
#else
    return Py_BuildValue("iik", 1, 0, 0UL);
#endif
}

static PyMethodDef methods[] = {
    {"gather_rows", gather_rows, METH_VARARGS,
     "gather_rows(source, rows, out) -> out: out[i] = source[rows[i]] along axis 0 (NumPy's take), rows int64."},
    {"share_blas_threads", share_blas_threads, METH_NOARGS,
     "share_blas_threads() -> threads: run NumPy's OpenBLAS products on nnctl's pool, and split these loops "
     "over its threads (OpenBLAS's count); 1 where there is no OpenBLAS to share with. Idempotent."},
    {"pool_stats", pool_stats, METH_NOARGS,
     "pool_stats() -> (loop threads, workers started, OpenBLAS parallel calls run by the pool)."},
    {"adam", adam, METH_VARARGS,
     "adam(params, grads, m_sum, v_sum, beta_1, beta_2, epsilon, step, decay=1): one Adam (AdamW with "
     "decay != 1) update in place."},
    {"sgd", sgd, METH_VARARGS,
     "sgd(params, grads, velocity, momentum, lr, nesterov): one SGD-with-momentum update in place."},
    {"scaled", scaled, METH_VARARGS,
     "scaled(params, grads, squares, rho, scale, epsilon, lr): one RMSprop (Adagrad: rho = scale = 1) "
     "update in place."},
    {"relu", relu, METH_VARARGS,
     "relu(x, bias, out) -> out: relu(x + bias) (bias None: relu(x)), the bias along x's last axis; "
     "out may be x."},
    {"add_bias", add_bias, METH_VARARGS,
     "add_bias(x, bias, out) -> out: x + bias, the bias along x's last axis; out may be x."},
    {"relu_grad", relu_grad, METH_VARARGS,
     "relu_grad(g, out, input_grad) -> input_grad: g * (out > 0), relu's gradient from its output."},
    {"xent_shift", xent_shift, METH_VARARGS,
     "xent_shift(logits, labels, shifted, picked): shifted = logits - each row's max, picked = its label's "
     "shifted logit (sparse softmax cross-entropy before exp)."},
    {"xent_grad", xent_grad, METH_VARARGS,
     "xent_grad(grad, sums, labels, scale) -> grad: (grad / sums - onehot(labels)) * scale in place "
     "(sparse softmax cross-entropy's gradient from exp(shifted) and its row sums)."},
    {"all_finite", all_finite, METH_O,
     "all_finite(array): whether no element of a float32 or float64 buffer is NaN or infinite."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "nnctl.core._loops", NULL, -1, methods};

PyMODINIT_FUNC PyInit__loops(void) { return PyModule_Create(&module); }
