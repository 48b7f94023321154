/* The oneDNN C API functions dsv3 uses, resolved from the dlopen'ed library (internal).
 * Types and constants come from the onednn-devel-cpu-gomp headers (build time only). */
#ifndef DSV3_ONEDNN_API_H
#define DSV3_ONEDNN_API_H

#include <oneapi/dnnl/dnnl.h>

typedef struct {
    const dnnl_version_t *(*version)(void);
    dnnl_status_t (*engine_create)(dnnl_engine_t *, dnnl_engine_kind_t, size_t);
    dnnl_status_t (*stream_create)(dnnl_stream_t *, dnnl_engine_t, unsigned);
    dnnl_status_t (*stream_wait)(dnnl_stream_t);
    dnnl_status_t (*stream_destroy)(dnnl_stream_t);
    dnnl_status_t (*memory_desc_create_with_tag)(dnnl_memory_desc_t *, int, const dnnl_dims_t, dnnl_data_type_t,
                                                 dnnl_format_tag_t);
    dnnl_status_t (*memory_desc_destroy)(dnnl_memory_desc_t);
    dnnl_status_t (*memory_create)(dnnl_memory_t *, const_dnnl_memory_desc_t, dnnl_engine_t, void *);
    dnnl_status_t (*memory_destroy)(dnnl_memory_t);
    dnnl_status_t (*matmul_primitive_desc_create)(dnnl_primitive_desc_t *, dnnl_engine_t, const_dnnl_memory_desc_t,
                                                  const_dnnl_memory_desc_t, const_dnnl_memory_desc_t,
                                                  const_dnnl_memory_desc_t, const_dnnl_primitive_attr_t);
    dnnl_status_t (*primitive_desc_destroy)(dnnl_primitive_desc_t);
    dnnl_status_t (*primitive_create)(dnnl_primitive_t *, const_dnnl_primitive_desc_t);
    dnnl_status_t (*primitive_destroy)(dnnl_primitive_t);
    dnnl_status_t (*primitive_execute)(const_dnnl_primitive_t, dnnl_stream_t, int, const dnnl_exec_arg_t *);
    dnnl_status_t (*set_max_cpu_isa)(dnnl_cpu_isa_t);
    dnnl_cpu_isa_t (*get_effective_cpu_isa)(void);
} dsv3_dnnl_api;

/* The loaded API and the CPU engine, or NULL when oneDNN is not loaded. */
const dsv3_dnnl_api *dsv3_dnnl(dnnl_engine_t *engine);

#endif
