/* Fused CPU loops for the TIES merge: the extension module adaptermerge.methods._native_ext,
   built at install time when a C compiler is there (setup.py; see _native.py for how it is used).

   Both kernels compute exactly what the reference functions of methods/math.py compute, in the
   same float order:
   - kth_largest: `magnitude_cut`, the k-th largest |value| of each row, by a radix select on the
     float bits (with the sign bit cleared, float32 bit patterns sort as |x| does);
   - ties_combine: `ties` (trim, elect sign, disjoint weighted mean) and `kept_counts` on
     weighted deltas, in one pass.
   Plain C99, no fast-math, no FMA contraction (setup.py passes -ffp-contract=off): results must
   be bit-identical to the reference.

   Portable builds: no -march=native. On x86-64 with GCC or Clang each kernel is compiled three
   times from one inline body, for the baseline ISA, AVX2 and AVX-512 (target attributes), and
   the best one the CPU supports is picked at run time; `isas()` lists them, and callers may ask
   for a lower one (tests check each against the reference; benchmarks emulate older CPUs). */

#define PY_SSIZE_T_CLEAN
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030A0000 /* one abi3 binary for CPython 3.10 and later */
#endif
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define AM_INLINE static inline __attribute__((always_inline))
#define AM_RESTRICT __restrict__
#elif defined(_MSC_VER)
#define AM_INLINE static __forceinline
#define AM_RESTRICT __restrict
#else
#define AM_INLINE static inline
#define AM_RESTRICT
#endif

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define AM_X86_VARIANTS 1
#else
#define AM_X86_VARIANTS 0
#endif

#define TOP_BINS 32768 /* 15 bits: exponent and the top 7 mantissa bits of |x| */
#define LOW_BINS 65536 /* the 16 low mantissa bits */
#define CHUNK 1024     /* entries per block of the combine: its rows stay in L1 */
#define LANES 4        /* interleaved top-bit histograms: consecutive increments of one bin do not wait on each other */
#define SKIP 16        /* the low-bit pass tests this many entries at once for the chosen bin */

AM_INLINE uint32_t magnitude_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u & 0x7fffffffu;
}

/* The k-th largest of the n magnitudes |x[j]|: a histogram of the top 16 bits finds the bin holding
   it, a histogram of the low 16 bits of that bin's entries finds it within the bin. The first pass
   counts into LANES interleaved histograms (a quarter faster than one here); the second tests SKIP
   entries at a time, a vectorized compare, and counts only where the bin occurs (under 1 % of
   entries at a usual density: 0.1 ms for 884K entries where a plain loop took 0.5 ms).
   hist: LANES * TOP_BINS counters of scratch (>= LOW_BINS). */
AM_INLINE float kth_magnitude(const float *AM_RESTRICT x, int64_t n, int64_t k, uint32_t *AM_RESTRICT hist) {
    memset(hist, 0, sizeof(uint32_t) * LANES * TOP_BINS);
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int lane = 0; lane < LANES; lane++) hist[lane * TOP_BINS + (magnitude_bits(x[j + lane]) >> 16)]++;
    for (; j < n; j++) hist[magnitude_bits(x[j]) >> 16]++;
    for (int lane = 1; lane < LANES; lane++)
        for (int64_t b = 0; b < TOP_BINS; b++) hist[b] += hist[lane * TOP_BINS + b];
    int64_t above = 0;
    uint32_t top = TOP_BINS - 1;
    while (above + hist[top] < k) above += hist[top--]; /* the bin holding the k-th from the top */
    memset(hist, 0, sizeof(uint32_t) * LOW_BINS);
    for (j = 0; j < n; j += SKIP) {
        int64_t end = j + SKIP < n ? j + SKIP : n;
        int found = 0;
        for (int64_t t = j; t < end; t++) found |= (magnitude_bits(x[t]) >> 16) == top;
        if (!found) continue;
        for (int64_t t = j; t < end; t++) {
            uint32_t u = magnitude_bits(x[t]);
            if ((u >> 16) == top) hist[u & 0xffffu]++;
        }
    }
    uint32_t bits = LOW_BINS - 1;
    while (above + hist[bits] < k) above += hist[bits--];
    bits |= top << 16;
    float result;
    memcpy(&result, &bits, sizeof bits);
    return result;
}

/* a [m, n] finite floats; result [m]; hist as above. */
AM_INLINE void kth_largest_body(const float *a, int64_t m, int64_t n, int64_t k, float *result, uint32_t *hist) {
    for (int64_t i = 0; i < m; i++) result[i] = kth_magnitude(a + i * n, n, k, hist);
}

/* x where |x| >= cut, else +0: `trim` ((x >= c) | (-x >= c) is |x| >= c for finite x). */
AM_INLINE float trimmed(float x, float cut) {
    return fabsf(x) >= cut ? x : 0.0f;
}

/* v [k, n] weighted deltas (w_i * d_i); cut [k]: keep entries with |v| >= cut (trim); w [k]: |w_i|.
   out [n]: sign election and disjoint weighted mean; kept [k]: entries kept per adapter.
   Each inner loop is one plain statement sequence over restrict-qualified blocks, so that it
   vectorizes without AVX-512's masked stores: written with the selects inside the sums, GCC
   left the second loop scalar for AVX2 and SSE2 (11 ms against 1.4 ms with AVX-512 for
   1536 x 576 x 3). */
AM_INLINE void ties_combine_body(const float *v, int64_t k, int64_t n, const float *cut, const float *w, float *out, int64_t *kept) {
    float total[CHUNK], sign[CHUNK], num[CHUNK], den[CHUNK];
    for (int64_t i = 0; i < k; i++) kept[i] = 0;
    for (int64_t start = 0; start < n; start += CHUNK) {
        int64_t len = n - start < CHUNK ? n - start : CHUNK;
        for (int64_t i = 0; i < k; i++) {
            const float *AM_RESTRICT row = v + i * n + start;
            float *AM_RESTRICT sum = total;
            const float c = cut[i];
            int32_t count = 0; /* at most CHUNK: 32-bit lanes, as wide as the floats */
            if (i == 0) {
                for (int64_t j = 0; j < len; j++) {
                    float t = trimmed(row[j], c);
                    sum[j] = t;
                    count += t != 0.0f;
                }
            } else {
                for (int64_t j = 0; j < len; j++) {
                    float t = trimmed(row[j], c);
                    sum[j] += t;
                    count += t != 0.0f;
                }
            }
            kept[i] += count;
        }
        for (int64_t j = 0; j < len; j++) {
            sign[j] = (float)((total[j] > 0.0f) - (total[j] < 0.0f));
            num[j] = 0.0f;
            den[j] = 0.0f;
        }
        for (int64_t i = 0; i < k; i++) {
            const float *AM_RESTRICT row = v + i * n + start;
            const float *AM_RESTRICT s = sign;
            float *AM_RESTRICT nu = num, *AM_RESTRICT de = den;
            const float c = cut[i], wi = w[i];
            for (int64_t j = 0; j < len; j++) {
                float a = trimmed(row[j], c) * s[j]; /* |t| where adapter i agrees, else <= 0 */
                float agreeing = a > 0.0f ? a : 0.0f;
                float weight = a > 0.0f ? wi : 0.0f;
                nu[j] += agreeing;
                de[j] += weight;
            }
        }
        for (int64_t j = 0; j < len; j++) {
            float d = den[j] > 1e-30f ? den[j] : 1e-30f;
            out[start + j] = num[j] * sign[j] / d;
        }
    }
}

/* One function per ISA from each body; the compiler vectorizes each for its target. */
typedef void (*kth_fn)(const float *, int64_t, int64_t, int64_t, float *, uint32_t *);
typedef void (*combine_fn)(const float *, int64_t, int64_t, const float *, const float *, float *, int64_t *);

#define VARIANT(SUFFIX, ATTR)                                                                                    \
    ATTR static void kth_largest_##SUFFIX(const float *a, int64_t m, int64_t n, int64_t k, float *r, uint32_t *h) { \
        kth_largest_body(a, m, n, k, r, h);                                                                      \
    }                                                                                                            \
    ATTR static void ties_combine_##SUFFIX(const float *v, int64_t k, int64_t n, const float *c, const float *w,   \
                                           float *o, int64_t *kept) {                                            \
        ties_combine_body(v, k, n, c, w, o, kept);                                                               \
    }

VARIANT(baseline, )
#if AM_X86_VARIANTS
VARIANT(avx2, __attribute__((target("avx2"))))
VARIANT(avx512, __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))))
#endif

typedef struct {
    const char *name;
    kth_fn kth;
    combine_fn combine;
} isa_t;

/* Lowest first; `usable_isas` counts how many of them this CPU runs. */
static const isa_t ISAS[] = {
    {"baseline", kth_largest_baseline, ties_combine_baseline},
#if AM_X86_VARIANTS
    {"avx2", kth_largest_avx2, ties_combine_avx2},
    {"avx512", kth_largest_avx512, ties_combine_avx512},
#endif
};

static int usable_isas(void) {
#if AM_X86_VARIANTS
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2")) return 1;
    if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
          __builtin_cpu_supports("avx512dq")))
        return 2;
    return 3;
#else
    return 1;
#endif
}

static int n_usable;

static const isa_t *isa_at(int index) {
    if (index < 0 || index >= n_usable) {
        PyErr_Format(PyExc_ValueError, "ISA index %d: this CPU runs 0..%d", index, n_usable - 1);
        return NULL;
    }
    return &ISAS[index];
}

/* Pointers come in as integers (tensor.data_ptr()); the Python side checks dtype, layout, device
   and sizes. The GIL is released while a kernel runs, so merge workers run them side by side. */

static PyObject *py_kth_largest(PyObject *self, PyObject *args) {
    unsigned long long a, result;
    long long m, n, k;
    int index;
    (void)self;
    if (!PyArg_ParseTuple(args, "KLLLKi", &a, &m, &n, &k, &result, &index)) return NULL;
    const isa_t *isa = isa_at(index);
    if (!isa) return NULL;
    if (m < 0 || k < 1 || k > n) return PyErr_Format(PyExc_ValueError, "k must be in [1, %lld], got %lld", n, k);
    uint32_t *hist = malloc(sizeof(uint32_t) * LANES * TOP_BINS);
    if (!hist) return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    isa->kth((const float *)(uintptr_t)a, m, n, k, (float *)(uintptr_t)result, hist);
    Py_END_ALLOW_THREADS
    free(hist);
    Py_RETURN_NONE;
}

static PyObject *py_ties_combine(PyObject *self, PyObject *args) {
    unsigned long long v, cut, out, kept;
    long long k, n;
    const char *w;
    Py_ssize_t w_size;
    int index;
    (void)self;
    if (!PyArg_ParseTuple(args, "KLLKy#KKi", &v, &k, &n, &cut, &w, &w_size, &out, &kept, &index)) return NULL;
    const isa_t *isa = isa_at(index);
    if (!isa) return NULL;
    if (k < 1 || n < 0 || w_size != (Py_ssize_t)(k * sizeof(float)))
        return PyErr_Format(PyExc_ValueError, "ties_combine: %lld rows need %lld bytes of float32 weights", k, k * (long long)sizeof(float));
    Py_BEGIN_ALLOW_THREADS
    isa->combine((const float *)(uintptr_t)v, k, n, (const float *)(uintptr_t)cut, (const float *)w, (float *)(uintptr_t)out,
                 (int64_t *)(uintptr_t)kept);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_isas(PyObject *self, PyObject *unused) {
    (void)self, (void)unused;
    PyObject *names = PyTuple_New(n_usable);
    if (!names) return NULL;
    for (int i = 0; i < n_usable; i++) {
        PyObject *name = PyUnicode_FromString(ISAS[i].name);
        if (!name) {
            Py_DECREF(names);
            return NULL;
        }
        PyTuple_SetItem(names, i, name); /* steals the reference */
    }
    return names;
}

static PyMethodDef methods[] = {
    {"kth_largest", py_kth_largest, METH_VARARGS,
     "kth_largest(a, m, n, k, result, isa): the k-th largest |a[i, :]| of float32 a [m, n] into result [m]"},
    {"ties_combine", py_ties_combine, METH_VARARGS,
     "ties_combine(v, k, n, cut, weights, out, kept, isa): TIES of float32 v [k, n] at cut [k] with |weights| "
     "(k packed float32) into out [n], kept counts into int64 kept [k]"},
    {"isas", py_isas, METH_NOARGS, "isas(): the kernel variants this CPU runs, lowest first (the index is the isa argument)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native_ext", "Fused CPU loops of the TIES merge.", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native_ext(void) {
    n_usable = usable_isas();
    return PyModule_Create(&module);
}
