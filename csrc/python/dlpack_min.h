/* The few DLPack structures dsv3 reads, written from the public DLPack specification (v1.0,
 * dlpack.h). Only what importing a CPU tensor needs; binary layout must match the spec. */
#ifndef DSV3_DLPACK_MIN_H
#define DSV3_DLPACK_MIN_H

#include <stdint.h>

enum { DSV3_DL_CPU = 1 }; /* DLDeviceType kDLCPU */

enum { /* DLDataTypeCode values dsv3 accepts */
    DSV3_DL_INT = 0,
    DSV3_DL_UINT = 1,
    DSV3_DL_FLOAT = 2,
    DSV3_DL_BFLOAT = 4,
    DSV3_DL_FLOAT8_E4M3FN = 10, /* what torch exports for torch.float8_e4m3fn */
    DSV3_DL_FLOAT8_E5M2 = 12,
    DSV3_DL_FLOAT8_E8M0FNU = 14,
};

typedef struct {
    int32_t device_type;
    int32_t device_id;
} dsv3_DLDevice;

typedef struct {
    uint8_t code;
    uint8_t bits;
    uint16_t lanes;
} dsv3_DLDataType;

typedef struct {
    void *data;
    dsv3_DLDevice device;
    int32_t ndim;
    dsv3_DLDataType dtype;
    int64_t *shape;
    int64_t *strides; /* in elements; NULL means C-contiguous */
    uint64_t byte_offset;
} dsv3_DLTensor;

/* capsule "dltensor" (legacy, what __dlpack__() returns without max_version) */
typedef struct dsv3_DLManagedTensor {
    dsv3_DLTensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct dsv3_DLManagedTensor *self);
} dsv3_DLManagedTensor;

/* capsule "dltensor_versioned" (DLPack >= 1.0) */
typedef struct {
    uint32_t major, minor;
} dsv3_DLPackVersion;

#define DSV3_DLPACK_FLAG_READ_ONLY (1ull << 0)

typedef struct dsv3_DLManagedTensorVersioned {
    dsv3_DLPackVersion version;
    void *manager_ctx;
    void (*deleter)(struct dsv3_DLManagedTensorVersioned *self);
    uint64_t flags;
    dsv3_DLTensor dl_tensor;
} dsv3_DLManagedTensorVersioned;

#endif
