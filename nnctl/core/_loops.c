/* nnctl.core._loops: what NumPy would run as several whole-buffer passes, as one loop each: every
   optimizer's update (see nnctl/train/optimizers.py), dense's bias with relu or alone and relu's
   gradient (nnctl/model/activations.py), sparse softmax cross-entropy's passes around exp()
   (nnctl/train/losses.py), and the finite check (nnctl/core/finite.py).

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

/* A wrapper's body once its arguments are parsed: the `count` buffers of `objects` as `views`
   (GRADS, the second, read-only), FLOAT_CALL or DOUBLE_CALL on them (B(i): buffer i; n:
   elements) without the GIL, None. */
#define GRADS (1u << 1)
#define B(i) views[i].buf
#define RUN_LOOP(count, FLOAT_CALL, DOUBLE_CALL)                                                 \
    do {                                                                                         \
        char kind = get_buffers(names, objects, views, count, GRADS);                            \
        if (!kind) return NULL;                                                                  \
        Py_ssize_t n = views[0].len / views[0].itemsize;                                         \
        Py_BEGIN_ALLOW_THREADS                                                                   \
        if (kind == 'f') FLOAT_CALL; else DOUBLE_CALL;                                           \
        Py_END_ALLOW_THREADS                                                                     \
        for (int i = count; i > 0;) PyBuffer_Release(&views[--i]);                               \
        Py_RETURN_NONE;                                                                          \
    } while (0)

static PyObject *adam(PyObject *module, PyObject *args) {
    static const char *names[] = {"adam", "params", "grads", "m_sum", "v_sum"};
    PyObject *objects[4];
    Py_buffer views[4];
    double beta_1, beta_2, epsilon, step, decay = 1.0;
    if (!PyArg_ParseTuple(args, "OOOOdddd|d:adam", &objects[0], &objects[1], &objects[2], &objects[3],
                          &beta_1, &beta_2, &epsilon, &step, &decay))
        return NULL;
    RUN_LOOP(4, adam_float(B(0), B(1), B(2), B(3), n, (float)beta_1, (float)beta_2, (float)epsilon, (float)step, (float)decay),
             adam_double(B(0), B(1), B(2), B(3), n, beta_1, beta_2, epsilon, step, decay));
}

static PyObject *sgd(PyObject *module, PyObject *args) {
    static const char *names[] = {"sgd", "params", "grads", "velocity"};
    PyObject *objects[3];
    Py_buffer views[3];
    double momentum, lr;
    int nesterov;
    if (!PyArg_ParseTuple(args, "OOOddp:sgd", &objects[0], &objects[1], &objects[2], &momentum, &lr, &nesterov))
        return NULL;
    RUN_LOOP(3, sgd_float(B(0), B(1), B(2), n, (float)momentum, (float)lr, nesterov),
             sgd_double(B(0), B(1), B(2), n, momentum, lr, nesterov));
}

static PyObject *scaled(PyObject *module, PyObject *args) {
    static const char *names[] = {"scaled", "params", "grads", "squares"};
    PyObject *objects[3];
    Py_buffer views[3];
    double rho, scale, epsilon, lr;
    if (!PyArg_ParseTuple(args, "OOOdddd:scaled", &objects[0], &objects[1], &objects[2], &rho, &scale, &epsilon, &lr))
        return NULL;
    RUN_LOOP(3, scaled_float(B(0), B(1), B(2), n, (float)rho, (float)scale, (float)epsilon, (float)lr),
             scaled_double(B(0), B(1), B(2), n, rho, scale, epsilon, lr));
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
    Py_ssize_t rows = units ? n / units : 0;
    Py_BEGIN_ALLOW_THREADS
    if (kind == 'f') float_loop(B(1), bias_view.buf, B(0), rows, units);
    else double_loop(B(1), bias_view.buf, B(0), rows, units);
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
    Py_ssize_t n = views[0].len / views[0].itemsize;
    Py_BEGIN_ALLOW_THREADS
    if (kind == 'f') relu_grad_float(B(1), B(2), B(0), n);
    else relu_grad_double(B(1), B(2), B(0), n);
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
                     kind == 'q' ? "int64 labels" : "floats of the logits' dtype");
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

static PyObject *all_finite(PyObject *module, PyObject *array) {
    Py_buffer view;
    if (PyObject_GetBuffer(array, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    char kind = buffer_kind(&view);
    if (kind != 'f' && kind != 'd') {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "all_finite: expected a contiguous float32 or float64 buffer, received another");
        return NULL;
    }
    int finite;
    Py_ssize_t n = view.len / view.itemsize;
    Py_BEGIN_ALLOW_THREADS
    finite = kind == 'f' ? finite_float(view.buf, n) : finite_double(view.buf, n);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return PyBool_FromLong(finite);
}

static PyMethodDef methods[] = {
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
