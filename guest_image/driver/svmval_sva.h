/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * svmval_sva: user-space ABI of /dev/svmval-sva0 (docs/TESTDEV.md is the
 * contract; change it there first). workloads/svadev.py mirrors these
 * structures with ctypes, and tests/workloads/test_sva.py parses this file to
 * hold the two equal.
 */
#ifndef _UAPI_SVMVAL_SVA_H
#define _UAPI_SVMVAL_SVA_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define SVMVAL_SVA_ABI_VERSION 1

/* svmval_sva_info.flags */
#define SVMVAL_SVA_INFO_BOUND		(1U << 0)	/* this file holds an SVA bind */
#define SVMVAL_SVA_INFO_ATS		(1U << 1)
#define SVMVAL_SVA_INFO_PRI		(1U << 2)
#define SVMVAL_SVA_INFO_PASID		(1U << 3)	/* PASID enabled in the device */

/* svmval_sva_op.op: the OP register */
#define SVMVAL_SVA_OP_READ_CRC		1
#define SVMVAL_SVA_OP_COMPARE		2
#define SVMVAL_SVA_OP_WRITE_PATTERN	3
#define SVMVAL_SVA_OP_COPY		4
#define SVMVAL_SVA_OP_FILL		5

/* svmval_sva_op.flags */
#define SVMVAL_SVA_OP_PRIV		(1U << 0)	/* privileged-mode request */
#define SVMVAL_SVA_OP_EXEC		(1U << 1)	/* execute request */
#define SVMVAL_SVA_OP_NO_PASID		(1U << 2)	/* plain DMA API, no PASID */
#define SVMVAL_SVA_OP_UNBOUND_PASID	(1U << 3)	/* tag with SVMVAL_SVA_UNBOUND_PASID */
#define SVMVAL_SVA_OP_FLAGS		(SVMVAL_SVA_OP_PRIV | SVMVAL_SVA_OP_EXEC | SVMVAL_SVA_OP_NO_PASID | \
					 SVMVAL_SVA_OP_UNBOUND_PASID)
/*
 * The PASID an UNBOUND_PASID op is tagged with: the last of the first 64, whose
 * PASID directory entry Linux has made for the small PASIDs it hands out, but
 * whose PASID table entry no bind of this device holds (the op is refused with
 * EBUSY if one does). The IOMMU must fault it: PASID entry not present.
 */
#define SVMVAL_SVA_UNBOUND_PASID	63

/* svmval_sva_op.status: the STATUS register after the operation */
#define SVMVAL_SVA_STATUS_BUSY		(1U << 0)
#define SVMVAL_SVA_STATUS_DONE		(1U << 1)
#define SVMVAL_SVA_STATUS_ERROR		(1U << 2)

/* svmval_sva_op.error: the ERROR register */
#define SVMVAL_SVA_ERR_NONE		0
#define SVMVAL_SVA_ERR_RESPONSE_FAILURE	1
#define SVMVAL_SVA_ERR_RESPONSE_INVALID	2
#define SVMVAL_SVA_ERR_ATS_NO_ACCESS	3
#define SVMVAL_SVA_ERR_PRI_TIMEOUT	4
#define SVMVAL_SVA_ERR_COMPARE_MISMATCH	5
#define SVMVAL_SVA_ERR_BAD_OP		6
#define SVMVAL_SVA_ERR_DMA_ERROR	7

#define SVMVAL_SVA_MAX_LEN		(64ULL << 20)

struct svmval_sva_info {
	__u32 abi_version;	/* SVMVAL_SVA_ABI_VERSION */
	__u32 pasid;		/* this file's PASID (0 if not bound) */
	__u32 flags;		/* SVMVAL_SVA_INFO_* */
	__u32 source_id;	/* PCI requester id */
	__u64 seed;		/* the device's SEED register */
};

struct svmval_sva_op {
	__u32 op;		/* SVMVAL_SVA_OP_* (OP register) */
	__u32 flags;		/* SVMVAL_SVA_OP_PRIV | _EXEC | _NO_PASID */
	__u64 src;
	__u64 dst;
	__u64 len;		/* 1 .. SVMVAL_SVA_MAX_LEN */
	__u64 pattern;
	/* out */
	__u64 result;		/* RESULT register */
	__u32 status;		/* STATUS register */
	__u32 error;		/* ERROR register */
	__u64 error_addr;	/* ERROR_ADDR register */
	__u64 device_ns;	/* DEVICE_NS register (QEMU virtual time) */
	__u64 page_requests;	/* OP_PAGE_REQUESTS register */
	__u64 wall_ns;		/* guest ktime from doorbell to interrupt */
};

struct svmval_sva_counters {
	__u64 ats_requests;
	__u64 atc_hits;
	__u64 atc_misses;
	__u64 page_requests;
	__u64 prg_success;
	__u64 prg_invalid;
	__u64 prg_failure;
	__u64 invalidations;
	__u64 ops;
	__u64 bytes;
	__u64 atc_entries;
};

#define SVMVAL_IOC_MAGIC	'S'
#define SVMVAL_IOC_INFO		_IOR(SVMVAL_IOC_MAGIC, 0, struct svmval_sva_info)
#define SVMVAL_IOC_OP		_IOWR(SVMVAL_IOC_MAGIC, 1, struct svmval_sva_op)
#define SVMVAL_IOC_COUNTERS	_IOR(SVMVAL_IOC_MAGIC, 2, struct svmval_sva_counters)

#endif /* _UAPI_SVMVAL_SVA_H */
