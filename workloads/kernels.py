"""Every OpenCL C kernel of the catalog, in one program (a guest under TCG pays ~10 s per
program build; PoCL caches it across runs).

Kernels that need memory_scope_all_svm_devices sit behind the OpenCL C 3.0 feature macro
__opencl_c_atomic_scope_all_devices: a compiler that does not define it builds the rest
and workloads.svm_atomics decides, from the device's CL_DEVICE_ATOMIC_MEMORY_CAPABILITIES,
whether to skip or to rebuild with the macro defined (a recorded workaround).

SEED_SKIP(i) is empty unless the program is built with SVMVAL_SEED_SKIP (tests only):
then work-item 0 of every kernel does nothing, a wrong result every verifier must catch.
"""

SOURCE = r"""
#ifdef SVMVAL_SEED_SKIP
#define SEED_SKIP(i) if ((i) == 0) return
#else
#define SEED_SKIP(i)
#endif

typedef struct Node { int gid; int pos; __global struct Node *next; } Node;

__kernel void scale(__global int *a, int k) {
    size_t i = get_global_id(0); SEED_SKIP(i);
    a[i] = a[i] * k;
}

__kernel void iota(__global uint *a, uint base) {
    size_t i = get_global_id(0); SEED_SKIP(i);
    a[i] = base + (uint)i;
}

__kernel void touch(__global uint *a, uint stride) {
    size_t i = get_global_id(0); SEED_SKIP(i);
    a[i * stride] = (uint)i + 1u;
}

/* svm_byte_granularity: each device (id) and the host own every num_id-th byte. */
__kernel void write_owned(__global char *a, uint num_id, uint id) {
    size_t i = get_global_id(0); SEED_SKIP(i);
    if (i % num_id == id) a[i] = (char)id;
}

__kernel void sum_neighbours(__global char *a, uint num_id, volatile __global uint *errors) {
    size_t i = get_global_id(0); SEED_SKIP(i);
    uint sum = 0;
    for (uint j = 0; j < num_id; j++) sum += (uint)a[i + j];
    if (sum != num_id * (num_id - 1) / 2) atomic_inc(errors);
}

/* Linked lists: list i starts at pool[i]; further nodes come from pool (odd i) or pool2
   (even i), indexed by one shared allocator. x1/x2 are not read: passing them tells the
   runtime the kernel may reach them (the CTS does the same with its sub-buffers). */
__kernel void create_lists(__global Node *pool, __global Node *pool2, __global Node *x1, __global Node *x2,
                           volatile __global int *alloc, int len) {
    size_t i = get_global_id(0); SEED_SKIP(i);
    __global Node *n = &pool[i];
    n->gid = (int)i; n->pos = 0; n->next = 0;
    for (int j = 1; j < len; j++) {
        int k = atomic_inc(alloc);
        __global Node *m = (i & 1) ? &pool[k] : &pool2[k];
        m->gid = (int)i; m->pos = j; m->next = 0;
        n->next = m;
        n = m;
    }
}

__kernel void verify_lists(__global Node *pool, __global Node *pool2, __global Node *x1, __global Node *x2,
                           volatile __global uint *num_correct, int len) {
    size_t i = get_global_id(0); SEED_SKIP(i);
    __global Node *n = &pool[i];
    for (int j = 0; j < len && n; j++) {
        if (n->gid != (int)i || n->pos != j) break;
        atomic_inc(num_correct);
        n = n->next;
    }
}

/* svm_set_kernel_exec_info_svm_ptrs: three buffers reached only through a struct. */
typedef struct { __global int *a; __global int *b; __global int *c; } BufPtrs;
__kernel void bump_through(__global BufPtrs *p) {
    size_t i = get_global_id(0); SEED_SKIP(i);
    p->a[i]++; p->b[i]++; p->c[i]++;
}

/* svm_pointer_passing: a pointer into the middle of an SVM allocation. */
__kernel void check_byte(__global uchar *p, __global int *out, uchar expected, int slot) {
    size_t i = get_global_id(0); SEED_SKIP(i);
    out[slot] = (*p == expected) ? 1 : 0;
}

/* svm_migrate */
__kernel void add3(__global uint *a, __global uint *b, __global uint *c, uint k) {
    size_t i = get_global_id(0); SEED_SKIP(i);
    a[i] += k; b[i] += 2u * k; c[i] += 3u * k;
}

/* svm_buffer_address_equivalence: the address the device sees for a buffer argument. */
__kernel void store_ptr(__global const int *p, __global ulong *out) {
    size_t i = get_global_id(0); SEED_SKIP(i);
    out[i] = (ulong)p;
}

#if defined(__opencl_c_atomic_scope_device) || (__OPENCL_C_VERSION__ == 200)
__kernel void count_device(volatile __global atomic_int *c, int buckets) {
    size_t i = get_global_id(0); SEED_SKIP(i);
    atomic_fetch_add_explicit(&c[i % buckets], 1, memory_order_relaxed, memory_scope_device);
}
#endif

#if defined(__opencl_c_atomic_scope_all_devices)
/* svm_fine_grain_memory_consistency: host and devices hammer the same counters ... */
__kernel void count_all(volatile __global atomic_int *c, int buckets) {
    size_t i = get_global_id(0); SEED_SKIP(i);
    atomic_fetch_add_explicit(&c[i % buckets], 1, memory_order_relaxed, memory_scope_all_svm_devices);
}

/* ... and insert into one hash table at once (lists of BinNode pushed at the bin's head). */
#if defined(cl_khr_int64_base_atomics) && defined(cl_khr_int64_extended_atomics)
#pragma OPENCL EXTENSION cl_khr_int64_base_atomics : enable
#pragma OPENCL EXTENSION cl_khr_int64_extended_atomics : enable
typedef struct BinNode { uint value; uint pad; atomic_ulong next; } BinNode;
__kernel void build_hash_table(__global uint *input, __global BinNode *nodes,
                               volatile __global atomic_uint *num_nodes, uint bins) {
    size_t i = get_global_id(0); SEED_SKIP(i);
    uint k = atomic_fetch_add_explicit(num_nodes, 1u, memory_order_relaxed, memory_scope_all_svm_devices);
    __global BinNode *fresh = &nodes[k];
    uint b = input[i] % bins;
    fresh->value = input[i];
    ulong head = atomic_load_explicit(&nodes[b].next, memory_order_seq_cst, memory_scope_all_svm_devices);
    do {
        atomic_store_explicit(&fresh->next, head, memory_order_seq_cst, memory_scope_all_svm_devices);
    } while (!atomic_compare_exchange_strong_explicit(&nodes[b].next, &head, (ulong)fresh,
             memory_order_seq_cst, memory_order_relaxed, memory_scope_all_svm_devices));
}
#endif

/* svm_fine_grain_sync_buffers: the host polls target locations while the kernel runs. */
__kernel void find_targets(__global uint *image, uint target, volatile __global atomic_uint *found,
                           volatile __global atomic_int *locations) {
    size_t i = get_global_id(0); SEED_SKIP(i);
    if (image[i] == target) {
        uint slot = atomic_fetch_add_explicit(found, 1u, memory_order_relaxed, memory_scope_device);
        atomic_exchange_explicit(&locations[slot], (int)i, memory_order_relaxed, memory_scope_all_svm_devices);
    }
}

/* Message passing: data, then a release store of a flag the host acquires. */
__kernel void publish(__global int *data, volatile __global atomic_int *flag, int n) {
    size_t i = get_global_id(0); SEED_SKIP(i);
    for (int j = 0; j < n; j++) data[j] = j * 7;
    atomic_store_explicit(flag, 1, memory_order_release, memory_scope_all_svm_devices);
}
#endif
"""

ALL_DEVICES_KERNELS = ("count_all", "find_targets", "publish")
SCOPE_WORKAROUND = "-D__opencl_c_atomic_scope_all_devices=1"
