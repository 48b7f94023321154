/* _dsv3 bindings: dtype conversion (convert) and zero-copy DLPack import (from_dlpack). */
#include "bind.h"

#include <string.h>

#include "dlpack_min.h"
#include "dsv3_dtypes.h"

/* numpy-side dtype (registered descriptors) <-> core dtype */
static const struct {
    dsv3_dt py;
    dsv3_dtype core;
} CONVERTIBLE[] = {
    {DSV3_DT_F32, DSV3_DTYPE_F32},       {DSV3_DT_BF16, DSV3_DTYPE_BF16},
    {DSV3_DT_F8E4M3, DSV3_DTYPE_E4M3},   {DSV3_DT_F8E5M2, DSV3_DTYPE_E5M2},
    {DSV3_DT_F8E8M0, DSV3_DTYPE_UE8M0},  {DSV3_DT_F4E2M1, DSV3_DTYPE_E2M1},
};
#define N_CONVERTIBLE (sizeof CONVERTIBLE / sizeof CONVERTIBLE[0])

/* convert(array, dst_dtype_name, isa=None) -> new array of the same shape */
static PyObject *convert(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"array", "dtype", "isa", NULL};
    PyObject *obj, *isa_obj = Py_None;
    const char *dst_name;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Os|O", kwlist, &obj, &dst_name, &isa_obj))
        return NULL;
    int isa;
    if (!dsv3_py_isa_arg(isa_obj, &isa))
        return NULL;
    dsv3_error err = {0};
    dsv3_dtype dst_t;
    dsv3_status st = dsv3_dtype_parse(dst_name, &dst_t, &err);
    if (st != DSV3_OK)
        return dsv3_py_raise(st, &err);
    unsigned mask = 0;
    for (size_t i = 0; i < N_CONVERTIBLE; i++)
        mask |= 1u << CONVERTIBLE[i].py;
    dsv3_dt src_dt;
    PyArrayObject *src = dsv3_py_check_array_any(obj, "convert: array", mask, -1, &src_dt);
    if (!src)
        return NULL;
    dsv3_dtype src_t = DSV3_DTYPE_F32;
    dsv3_dt dst_dt = DSV3_DT_F32;
    for (size_t i = 0; i < N_CONVERTIBLE; i++) {
        if (CONVERTIBLE[i].py == src_dt)
            src_t = CONVERTIBLE[i].core;
        if (CONVERTIBLE[i].core == dst_t)
            dst_dt = CONVERTIBLE[i].py;
    }
    if (src_t != DSV3_DTYPE_F32 && dst_t != DSV3_DTYPE_F32 && src_t != dst_t &&
        !(src_t == DSV3_DTYPE_E4M3 && dst_t == DSV3_DTYPE_BF16))
        return PyErr_Format(PyExc_ValueError, "convert: no direct conversion from %s to %s (one side must be float32)",
                            dsv3_dtype_name(src_t), dsv3_dtype_name(dst_t));
    PyArray_Descr *descr = dsv3_py_descr(dst_dt);
    if (!descr)
        return PyErr_Format(PyExc_RuntimeError, "convert: dtype %s is not registered (import dsv3 first)",
                            dsv3_dtype_name(dst_t));
    Py_INCREF(descr); /* stolen below */
    PyArrayObject *out = (PyArrayObject *)PyArray_NewFromDescr(&PyArray_Type, descr, PyArray_NDIM(src),
                                                               PyArray_DIMS(src), NULL, NULL, 0, NULL);
    if (!out)
        return NULL;
    const size_t n = (size_t)PyArray_SIZE(src);
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_convert(dst_t, PyArray_DATA(out), src_t, PyArray_DATA(src), n, isa, &err);
    Py_END_ALLOW_THREADS
    if (st != DSV3_OK) {
        Py_DECREF(out);
        return dsv3_py_raise(st, &err);
    }
    return (PyObject *)out;
}

/* ---- DLPack import ---- */
static const char OWNER_LEGACY[] = "dsv3.dlpack_owner";
static const char OWNER_VERSIONED[] = "dsv3.dlpack_owner_versioned";

/* The numpy array's base object: a capsule whose destructor hands the tensor back to its producer. */
static void owner_destroy(PyObject *cap)
{
    if (PyCapsule_IsValid(cap, OWNER_LEGACY)) {
        dsv3_DLManagedTensor *m = (dsv3_DLManagedTensor *)PyCapsule_GetPointer(cap, OWNER_LEGACY);
        if (m && m->deleter)
            m->deleter(m);
    } else if (PyCapsule_IsValid(cap, OWNER_VERSIONED)) {
        dsv3_DLManagedTensorVersioned *m =
            (dsv3_DLManagedTensorVersioned *)PyCapsule_GetPointer(cap, OWNER_VERSIONED);
        if (m && m->deleter)
            m->deleter(m);
    }
}

static dsv3_dt dl_to_dt(dsv3_DLDataType t)
{
    if (t.lanes != 1)
        return DSV3_DT_COUNT;
    switch (t.code) {
    case DSV3_DL_FLOAT: return t.bits == 32 ? DSV3_DT_F32 : (t.bits == 16 ? DSV3_DT_F16 : DSV3_DT_COUNT);
    case DSV3_DL_BFLOAT: return t.bits == 16 ? DSV3_DT_BF16 : DSV3_DT_COUNT;
    case DSV3_DL_FLOAT8_E4M3FN: return t.bits == 8 ? DSV3_DT_F8E4M3 : DSV3_DT_COUNT;
    case DSV3_DL_FLOAT8_E5M2: return t.bits == 8 ? DSV3_DT_F8E5M2 : DSV3_DT_COUNT;
    case DSV3_DL_FLOAT8_E8M0FNU: return t.bits == 8 ? DSV3_DT_F8E8M0 : DSV3_DT_COUNT;
    case DSV3_DL_UINT: return t.bits == 8 ? DSV3_DT_U8 : DSV3_DT_COUNT;
    case DSV3_DL_INT:
        return t.bits == 8 ? DSV3_DT_I8 : t.bits == 32 ? DSV3_DT_I32 : t.bits == 64 ? DSV3_DT_I64 : DSV3_DT_COUNT;
    default: return DSV3_DT_COUNT;
    }
}

/* Checks the tensor; on success fills *dt and dims. Returns 0 with a Python exception otherwise. */
static int dl_check(const dsv3_DLTensor *t, dsv3_dt *dt, npy_intp *dims)
{
    if (t->device.device_type != DSV3_DL_CPU) {
        PyErr_Format(PyExc_ValueError, "from_dlpack: only CPU tensors are supported (device type %d); "
                     "move it to the CPU first (e.g. tensor.cpu())", (int)t->device.device_type);
        return 0;
    }
    *dt = dl_to_dt(t->dtype);
    if (*dt == DSV3_DT_COUNT || !dsv3_py_descr(*dt)) {
        PyErr_Format(PyExc_TypeError, "from_dlpack: unsupported DLPack dtype (code %d, bits %d, lanes %d); "
                     "supported: float32, float16, bfloat16, float8_e4m3fn, float8_e5m2, float8_e8m0fnu, "
                     "uint8, int8, int32, int64", (int)t->dtype.code, (int)t->dtype.bits, (int)t->dtype.lanes);
        return 0;
    }
    if (t->ndim < 0 || t->ndim > NPY_MAXDIMS) {
        PyErr_Format(PyExc_ValueError, "from_dlpack: unsupported number of dimensions %d", (int)t->ndim);
        return 0;
    }
    int64_t expect = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] < 0) {
            PyErr_SetString(PyExc_ValueError, "from_dlpack: negative dimension");
            return 0;
        }
        if (t->strides && t->shape[i] > 1 && t->strides[i] != expect) {
            PyErr_SetString(PyExc_ValueError, "from_dlpack: tensor is not C-contiguous "
                            "(use tensor.contiguous() first)");
            return 0;
        }
        dims[i] = (npy_intp)t->shape[i];
        expect *= t->shape[i] ? t->shape[i] : 1;
    }
    return 1;
}

static PyObject *from_dlpack(PyObject *self, PyObject *obj)
{
    (void)self;
    PyObject *cap = PyObject_CallMethod(obj, "__dlpack__", NULL);
    if (!cap) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "from_dlpack: %s has no __dlpack__ method", Py_TYPE(obj)->tp_name);
        }
        return NULL;
    }
    const int versioned = PyCapsule_IsValid(cap, "dltensor_versioned");
    if (!versioned && !PyCapsule_IsValid(cap, "dltensor")) {
        Py_DECREF(cap);
        return PyErr_Format(PyExc_TypeError, "from_dlpack: %s.__dlpack__() did not return a DLPack capsule "
                            "(or it was already consumed)", Py_TYPE(obj)->tp_name);
    }
    void *managed = PyCapsule_GetPointer(cap, versioned ? "dltensor_versioned" : "dltensor");
    if (!managed) {
        Py_DECREF(cap);
        return NULL;
    }
    const dsv3_DLTensor *t = versioned ? &((dsv3_DLManagedTensorVersioned *)managed)->dl_tensor
                                       : &((dsv3_DLManagedTensor *)managed)->dl_tensor;
    const int writeable = !(versioned && (((dsv3_DLManagedTensorVersioned *)managed)->flags & DSV3_DLPACK_FLAG_READ_ONLY));
    dsv3_dt dt;
    npy_intp dims[NPY_MAXDIMS];
    if (!dl_check(t, &dt, dims)) {
        Py_DECREF(cap); /* not renamed: the producer's capsule destructor frees the tensor */
        return NULL;
    }
    /* From here the owner capsule is responsible for calling the deleter exactly once. */
    PyObject *owner = PyCapsule_New(managed, versioned ? OWNER_VERSIONED : OWNER_LEGACY, owner_destroy);
    if (!owner) {
        Py_DECREF(cap);
        return NULL;
    }
    if (PyCapsule_SetName(cap, versioned ? "used_dltensor_versioned" : "used_dltensor") < 0) {
        PyCapsule_SetDestructor(owner, NULL); /* the producer's capsule still owns it */
        Py_DECREF(owner);
        Py_DECREF(cap);
        return NULL;
    }
    Py_DECREF(cap);
    PyArray_Descr *descr = dsv3_py_descr(dt);
    Py_INCREF(descr);
    char *data = (char *)t->data + t->byte_offset;
    PyObject *arr = PyArray_NewFromDescr(&PyArray_Type, descr, t->ndim, dims, NULL, data,
                                         NPY_ARRAY_C_CONTIGUOUS | (writeable ? NPY_ARRAY_WRITEABLE : 0), NULL);
    if (!arr) {
        Py_DECREF(owner);
        return NULL;
    }
    if (PyArray_SetBaseObject((PyArrayObject *)arr, owner) < 0) { /* steals owner */
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

PyMethodDef dsv3_dtype_methods[] = {
    {"convert", (PyCFunction)(void (*)(void))convert, METH_VARARGS | METH_KEYWORDS,
     "convert(array, dtype, isa=None) -> new array: float32 <-> bfloat16/float8_e4m3fn/float8_e5m2/"
     "float8_e8m0fnu/float4_e2m1fn (and float8_e4m3fn -> bfloat16), bit-exact with ml_dtypes."},
    {"from_dlpack", from_dlpack, METH_O,
     "from_dlpack(obj) -> zero-copy numpy array of a CPU, C-contiguous DLPack tensor (obj.__dlpack__())."},
    {NULL, NULL, 0, NULL},
};
