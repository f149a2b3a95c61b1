/* nnctl.core._loops: Adam's update as one loop over the flat buffers (see nnctl/train/optimizers.py).

   NumPy runs an update as whole-buffer passes, one per operation: 10 passes over 5 buffers for
   Adam, a quarter of a training step on an MLP. This loop reads each element once. It performs
   the same IEEE operations in the same order with the same roundings as those passes (no FMA
   contraction: -ffp-contract=off; sqrt and division are correctly rounded in both), so the
   weights are bit-identical whether or not this module was built; tests/test_optimizers.py
   holds that. It is optional: pip builds it when a C compiler is present, and nnctl falls back to
   the NumPy passes when it is not.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
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

/* The NumPy passes, element by element: m_sum = m_sum * beta_1 + g; v_sum = v_sum * beta_2 + g * g;
   params = params + (m_sum / (sqrt(v_sum) + epsilon)) * step. */
#define ADAM_LOOP(NAME, T, SQRT)                                                                 \
    VECTOR_CLONES static void NAME(T *restrict params, const T *restrict grads, T *restrict m_sum, \
                                   T *restrict v_sum, Py_ssize_t n, T beta_1, T beta_2,          \
                                   T epsilon, T step) {                                          \
        for (Py_ssize_t i = 0; i < n; i++) {                                                     \
            T g = grads[i];                                                                      \
            T m = m_sum[i] * beta_1;                                                             \
            m = m + g;                                                                           \
            m_sum[i] = m;                                                                        \
            T square = g * g;                                                                    \
            T v = v_sum[i] * beta_2;                                                             \
            v = v + square;                                                                      \
            v_sum[i] = v;                                                                        \
            T denominator = SQRT(v);                                                             \
            denominator = denominator + epsilon;                                                 \
            T update = m / denominator;                                                          \
            update = update * step;                                                              \
            params[i] = params[i] + update;                                                      \
        }                                                                                        \
    }

ADAM_LOOP(adam_float, float, sqrtf)
ADAM_LOOP(adam_double, double, sqrt)

/* 'f' or 'd' for a native float32 or float64 buffer, 0 otherwise. */
static char float_kind(const Py_buffer *view) {
    const char *format = view->format;
    if (format[0] == '@' || format[0] == '=') format++;
#if PY_LITTLE_ENDIAN
    if (format[0] == '<') format++;
#else
    if (format[0] == '>' || format[0] == '!') format++;
#endif
    if (strcmp(format, "f") == 0 && view->itemsize == 4) return 'f';
    if (strcmp(format, "d") == 0 && view->itemsize == 8) return 'd';
    return 0;
}

static PyObject *adam(PyObject *module, PyObject *args) {
    PyObject *objects[4];
    double beta_1, beta_2, epsilon, step;
    if (!PyArg_ParseTuple(args, "OOOOdddd:adam", &objects[0], &objects[1], &objects[2], &objects[3],
                          &beta_1, &beta_2, &epsilon, &step))
        return NULL;
    static const char *names[4] = {"params", "grads", "m_sum", "v_sum"};
    Py_buffer views[4];
    int held = 0;
    PyObject *result = NULL;
    for (; held < 4; held++) {
        int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (held == 1 ? 0 : PyBUF_WRITABLE);
        if (PyObject_GetBuffer(objects[held], &views[held], flags) < 0) goto done;
    }
    char kind = float_kind(&views[0]);
    for (int i = 0; i < 4; i++) {
        if (!kind || float_kind(&views[i]) != kind || views[i].len != views[0].len) {
            PyErr_Format(PyExc_TypeError, "adam: expected four contiguous float32 or float64 buffers of one "
                         "dtype and length, received a different %s", names[i]);
            goto done;
        }
    }
    Py_ssize_t n = views[0].len / views[0].itemsize;
    Py_BEGIN_ALLOW_THREADS
    if (kind == 'f')
        adam_float(views[0].buf, views[1].buf, views[2].buf, views[3].buf, n, (float)beta_1, (float)beta_2,
                   (float)epsilon, (float)step);
    else
        adam_double(views[0].buf, views[1].buf, views[2].buf, views[3].buf, n, beta_1, beta_2, epsilon, step);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    while (held > 0) PyBuffer_Release(&views[--held]);
    return result;
}

static PyMethodDef methods[] = {
    {"adam", adam, METH_VARARGS,
     "adam(params, grads, m_sum, v_sum, beta_1, beta_2, epsilon, step): one Adam update in place."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "nnctl.core._loops", NULL, -1, methods};

PyMODINIT_FUNC PyInit__loops(void) { return PyModule_Create(&module); }
