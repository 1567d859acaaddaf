/*
 * svmval-sva: a PCIe test device that uses PASID, ATS and PRI
 *
 * The register map and behaviour are the contract in svmval's
 * docs/TESTDEV.md.  Operations walk their buffers page by page in a bottom
 * half.  With PV=1 each page is looked up in the device's ATC (per PASID,
 * per 4 KiB page), filled from ATS translation requests; a denied access
 * sends a page request and waits for the page group response without
 * blocking QEMU.  With PV=0 the device makes plain untranslated DMA through
 * its IOMMU address space.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bitops.h"
#include "qemu/main-loop.h"
#include "qemu/module.h"
#include "qemu/range.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "hw/pci/msi.h"
#include "hw/pci/pci_device.h"
#include "hw/pci/pcie.h"
#include "hw/qdev-properties.h"
#include "migration/vmstate.h"
#include "system/dma.h"
#include "qom/object.h"
#include <zlib.h> /* crc32 */

#define TYPE_SVMVAL_SVA "svmval-sva"
OBJECT_DECLARE_SIMPLE_TYPE(SvmvalSvaState, SVMVAL_SVA)

#define SVA_DEVICE_ID           0x5356
#define SVA_ID_VALUE            (0x53564d56ULL | (1ULL << 32)) /* "SVMV" v1 */

/* BAR0 registers; s->regs[] holds them at offset / 8 */
#define SVA_REG_ID              0x00
#define SVA_REG_PASID           0x08
#define SVA_REG_OP              0x10
#define SVA_REG_SRC             0x18
#define SVA_REG_DST             0x20
#define SVA_REG_LEN             0x28
#define SVA_REG_PATTERN         0x30
#define SVA_REG_DOORBELL        0x38
#define SVA_REG_STATUS          0x40
#define SVA_REG_ERROR           0x48
#define SVA_REG_ERROR_ADDR      0x50
#define SVA_REG_RESULT          0x58
#define SVA_REG_DEVICE_NS       0x60
#define SVA_REG_OP_PAGE_REQS    0x68
#define SVA_REG_INTR            0x70
#define SVA_REG_ATC_FLUSH       0x78
#define SVA_REG_SEED            0x80
#define SVA_CNT_ATS_REQUESTS    0x100
#define SVA_CNT_ATC_HITS        0x108
#define SVA_CNT_ATC_MISSES      0x110
#define SVA_CNT_PAGE_REQUESTS   0x118
#define SVA_CNT_PRG_SUCCESS     0x120
#define SVA_CNT_PRG_INVALID     0x128
#define SVA_CNT_PRG_FAILURE     0x130
#define SVA_CNT_INVALIDATIONS   0x138
#define SVA_CNT_OPS             0x140
#define SVA_CNT_BYTES           0x148
#define SVA_CNT_ATC_ENTRIES     0x150
#define SVA_REG_CNT_RESET       0x1f8
#define R(off)                  ((off) / 8)

#define SVA_PASID_MASK          0xfffffULL
#define SVA_PASID_EXEC          (1ULL << 29)
#define SVA_PASID_PRIV          (1ULL << 30)
#define SVA_PASID_PV            (1ULL << 31)

enum {
    SVA_OP_READ_CRC = 1, SVA_OP_COMPARE, SVA_OP_WRITE_PATTERN, SVA_OP_COPY,
    SVA_OP_FILL,
};

#define SVA_STATUS_BUSY         1
#define SVA_STATUS_DONE         2
#define SVA_STATUS_ERROR        4

enum {
    SVA_ERR_NONE, SVA_ERR_RESPONSE_FAILURE, SVA_ERR_RESPONSE_INVALID,
    SVA_ERR_ATS_NO_ACCESS, SVA_ERR_PRI_TIMEOUT, SVA_ERR_COMPARE_MISMATCH,
    SVA_ERR_BAD_OP, SVA_ERR_DMA,
};

#define SVA_PAGE_SIZE           4096
#define SVA_PAGE_MASK           (~(uint64_t)(SVA_PAGE_SIZE - 1))
#define SVA_MAX_LEN             (64 * MiB)
#define SVA_CHUNKS_PER_BH       16      /* pages per bottom half run */
#define SVA_PRI_TIMEOUT_NS      (2 * NANOSECONDS_PER_SECOND)
#define SVA_ATC_MAX             4096    /* entries per PASID */
#define SVA_NR_PASIDS           8       /* PASIDs with an ATC at once */
#define SVA_PRI_OUTSTANDING     32

#define SVA_ATS_OFFSET          0x100
#define SVA_PASID_OFFSET        0x108
#define SVA_PRI_OFFSET          0x110

typedef struct SvmvalSvaAtcEntry {
    uint64_t page;              /* key */
    AddressSpace *as;           /* where the translated address lives */
    hwaddr xlat;
    IOMMUAccessFlags perm;
} SvmvalSvaAtcEntry;

/*
 * A PASID the device works for: its ATC and the notifiers the IOMMU keeps
 * per PASID (invalidations, page group responses).
 */
typedef struct SvmvalSvaPasid {
    SvmvalSvaState *s;
    uint32_t pasid;
    bool bound;
    GHashTable *atc;
    IOMMUNotifier iotlb_n;
    IOMMUPRINotifier pri_n;
} SvmvalSvaPasid;

/* A translated operand of the current chunk, kept across a page request */
typedef struct SvmvalSvaXlat {
    bool valid;
    AddressSpace *as;
    hwaddr addr;
} SvmvalSvaXlat;

/* The running operation: its registers are latched at DOORBELL */
typedef struct SvmvalSvaOp {
    uint32_t op;
    uint32_t pasid;
    bool pv, priv, exec;
    uint64_t src, dst, len, pattern;
    SvmvalSvaPasid *ctx;        /* PV=1: the bound PASID, NULL if none */
    uint64_t pos;               /* bytes done */
    uint64_t result;
    int64_t start_ns;
    uint64_t page_requests;
    SvmvalSvaXlat xl[2];        /* src, dst */
    bool waiting;               /* page request outstanding */
    uint16_t wait_prgi;
    uint64_t wait_addr;
    bool responded;             /* response arrived, the BH acts on it */
    IOMMUPRIResponseCode response;
    bool retry;                 /* retry_page's translation follows Success */
    uint64_t retry_page;
} SvmvalSvaOp;

struct SvmvalSvaState {
    PCIDevice parent_obj;

    MemoryRegion mmio;
    QEMUBH *bh;
    QEMUTimer *pri_timer;
    SvmvalSvaPasid pasids[SVA_NR_PASIDS];
    unsigned next_victim;
    uint16_t next_prgi;
    uint64_t regs[R(0x200)];
    SvmvalSvaOp op;
    uint8_t buf[2][SVA_PAGE_SIZE];

    bool seed_ignore_invalidation;
    bool seed_no_last_page;
};

/* ATC and notifiers */

static void svmval_sva_drop_held(SvmvalSvaState *s)
{
    /* translations a chunk holds across a page request go with the ATC's */
    s->op.xl[0].valid = false;
    s->op.xl[1].valid = false;
}

static gboolean svmval_sva_atc_in_range(gpointer key, gpointer value,
                                        gpointer opaque)
{
    uint64_t page = *(uint64_t *)key;
    uint64_t *range = opaque;

    return page >= range[0] && page <= range[1];
}

static void svmval_sva_iotlb_notify(IOMMUNotifier *n, IOMMUTLBEntry *iotlb)
{
    SvmvalSvaPasid *p = container_of(n, SvmvalSvaPasid, iotlb_n);
    uint64_t range[2] = { iotlb->iova, iotlb->iova + iotlb->addr_mask };

    p->s->regs[R(SVA_CNT_INVALIDATIONS)]++;
    if (p->s->seed_ignore_invalidation) {
        return; /* test-only: keep stale translations */
    }
    g_hash_table_foreach_remove(p->atc, svmval_sva_atc_in_range, range);
    svmval_sva_drop_held(p->s);
}

static void svmval_sva_pri_notify(IOMMUPRINotifier *n,
                                  IOMMUPRIResponse *resp)
{
    SvmvalSvaPasid *p = container_of(n, SvmvalSvaPasid, pri_n);
    SvmvalSvaState *s = p->s;
    SvmvalSvaOp *o = &s->op;

    switch (resp->response_code) {
    case IOMMU_PRI_RESP_SUCCESS:
        s->regs[R(SVA_CNT_PRG_SUCCESS)]++;
        break;
    case IOMMU_PRI_RESP_INVALID_REQUEST:
        s->regs[R(SVA_CNT_PRG_INVALID)]++;
        break;
    default:
        s->regs[R(SVA_CNT_PRG_FAILURE)]++;
        break;
    }
    if (!o->waiting || o->ctx != p || resp->prgi != o->wait_prgi) {
        return; /* late (timed out) or not ours */
    }
    /*
     * We are inside the IOMMU's invalidation queue processing: leave the
     * retry and the completion interrupt to the bottom half.
     */
    o->waiting = false;
    o->responded = true;
    o->response = resp->response_code;
    timer_del(s->pri_timer);
    qemu_bh_schedule(s->bh);
}

static void svmval_sva_unbind(SvmvalSvaState *s, SvmvalSvaPasid *p)
{
    PCIDevice *pdev = PCI_DEVICE(s);

    g_hash_table_remove_all(p->atc);
    svmval_sva_drop_held(s);
    if (s->op.ctx == p) {
        s->op.ctx = NULL; /* the op's next translation fails */
    }
    pci_pri_unregister_notifier(pdev, p->pasid);
    pci_iommu_unregister_iotlb_notifier(pdev, p->pasid, &p->iotlb_n);
    p->bound = false;
}

static void svmval_sva_unbind_all(SvmvalSvaState *s)
{
    for (int i = 0; i < SVA_NR_PASIDS; i++) {
        if (s->pasids[i].bound) {
            svmval_sva_unbind(s, &s->pasids[i]);
        }
    }
}

/*
 * The context of @pasid, registering its notifiers on first use; NULL when
 * there is no IOMMU to register with.  Called with PASID and ATS enabled:
 * intel-iommu must then have device-iotlb=on, or registering is fatal.
 */
static SvmvalSvaPasid *svmval_sva_bind(SvmvalSvaState *s, uint32_t pasid)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    SvmvalSvaPasid *p = NULL;

    for (int i = 0; i < SVA_NR_PASIDS; i++) {
        if (s->pasids[i].bound && s->pasids[i].pasid == pasid) {
            return &s->pasids[i];
        }
        if (!p && !s->pasids[i].bound) {
            p = &s->pasids[i];
        }
    }
    if (!p) {
        /* out of contexts: the victim's translations cannot stay */
        p = &s->pasids[s->next_victim++ % SVA_NR_PASIDS];
        svmval_sva_unbind(s, p);
    }
    p->pasid = pasid;
    if (pci_iommu_init_iotlb_notifier(pdev, &p->iotlb_n,
                                      svmval_sva_iotlb_notify, p) ||
        pci_iommu_register_iotlb_notifier(pdev, pasid, &p->iotlb_n)) {
        return NULL;
    }
    p->pri_n.notify = svmval_sva_pri_notify;
    pci_pri_register_notifier(pdev, pasid, &p->pri_n);
    p->bound = true;
    return p;
}

/* Operations */

static void svmval_sva_finish(SvmvalSvaState *s, uint64_t error,
                              uint64_t addr)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    SvmvalSvaOp *o = &s->op;

    o->waiting = false;
    timer_del(s->pri_timer);
    s->regs[R(SVA_REG_STATUS)] = error ? SVA_STATUS_ERROR : SVA_STATUS_DONE;
    s->regs[R(SVA_REG_ERROR)] = error;
    s->regs[R(SVA_REG_ERROR_ADDR)] = error ? addr : 0;
    s->regs[R(SVA_REG_RESULT)] = o->result;
    s->regs[R(SVA_REG_DEVICE_NS)] =
        qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL) - o->start_ns;
    s->regs[R(SVA_REG_OP_PAGE_REQS)] = o->page_requests;
    s->regs[R(SVA_CNT_OPS)]++;
    s->regs[R(SVA_REG_INTR)] |= 1;
    if (msi_enabled(pdev)) {
        msi_notify(pdev, 0);
    }
}

/* Send a page request for the page of @addr and wait for its response */
static void svmval_sva_page_request(SvmvalSvaState *s, uint64_t addr,
                                    bool is_write)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    SvmvalSvaOp *o = &s->op;
    uint16_t prgi = s->next_prgi;
    int ret;

    s->next_prgi = (prgi + 1) & PCI_PRI_PRGI_MASK;
    /* one page per group: LPIG set unless the test-only seed drops it */
    ret = pci_pri_request_page(pdev, o->pasid, o->priv, o->exec,
                               addr & SVA_PAGE_MASK, !s->seed_no_last_page,
                               prgi, !is_write || o->exec, is_write);
    if (ret) {
        svmval_sva_finish(s, ret == -EPERM ? SVA_ERR_ATS_NO_ACCESS :
                          SVA_ERR_DMA, addr);
        return;
    }
    s->regs[R(SVA_CNT_PAGE_REQUESTS)]++;
    o->page_requests++;
    o->waiting = true;
    o->wait_prgi = prgi;
    o->wait_addr = addr;
    timer_mod(s->pri_timer,
              qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL) + SVA_PRI_TIMEOUT_NS);
}

/*
 * Translate operand @i at @addr through the ATC (PV=1).  False when the
 * op now waits for a page group response or has ended.
 */
static bool svmval_sva_translate(SvmvalSvaState *s, int i, uint64_t addr,
                                 bool is_write)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    SvmvalSvaOp *o = &s->op;
    SvmvalSvaPasid *p = o->ctx;
    uint64_t page = addr & SVA_PAGE_MASK;
    IOMMUAccessFlags need = is_write ? IOMMU_WO : IOMMU_RO;
    SvmvalSvaAtcEntry *e;
    IOMMUTLBEntry t;
    uint32_t err_count;
    bool retry;
    ssize_t n;

    if (!p) {
        /* no context: PASID or ATS disabled (or no IOMMU) */
        svmval_sva_finish(s, SVA_ERR_ATS_NO_ACCESS, addr);
        return false;
    }
    e = g_hash_table_lookup(p->atc, &page);
    if (e && (e->perm & need) == need) {
        s->regs[R(SVA_CNT_ATC_HITS)]++;
    } else {
        retry = o->retry && o->retry_page == page;
        if (retry) {
            o->retry = false;
        } else {
            s->regs[R(SVA_CNT_ATC_MISSES)]++;
        }
        s->regs[R(SVA_CNT_ATS_REQUESTS)]++;
        /* a read-only translation unless we write */
        n = pci_ats_request_translation(pdev, o->pasid, o->priv, o->exec,
                                        page, SVA_PAGE_SIZE, !is_write,
                                        &t, 1, &err_count);
        if (n != 1 || (t.perm & need) != need) {
            /* denied: ask the OS, once; denied after its Success: fail */
            if (n >= 0 && !retry && pcie_pri_get_req_alloc(pdev)) {
                svmval_sva_page_request(s, addr, is_write);
            } else {
                svmval_sva_finish(s, SVA_ERR_ATS_NO_ACCESS, addr);
            }
            return false;
        }
        if (g_hash_table_size(p->atc) >= SVA_ATC_MAX) {
            g_hash_table_remove_all(p->atc); /* full: start over */
        }
        e = g_new(SvmvalSvaAtcEntry, 1);
        e->page = page;
        e->as = t.target_as;
        /* the answer may be a large page: keep the 4 KiB we asked for */
        e->xlat = (t.translated_addr & ~t.addr_mask) | (page & t.addr_mask);
        e->perm = t.perm;
        g_hash_table_replace(p->atc, &e->page, e);
    }
    o->xl[i].valid = true;
    o->xl[i].as = e->as;
    o->xl[i].addr = e->xlat | (addr & ~SVA_PAGE_MASK);
    return true;
}

/* Move @len bytes of operand @i (at untranslated @addr); false: op ended */
static bool svmval_sva_dma(SvmvalSvaState *s, int i, uint64_t addr,
                           uint64_t len, DMADirection dir)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    SvmvalSvaOp *o = &s->op;
    MemTxResult r;

    if (!o->pv) {
        /* untranslated: the vIOMMU translates in the device's AS */
        r = pci_dma_rw(pdev, addr, s->buf[i], len, dir,
                       MEMTXATTRS_UNSPECIFIED);
    } else if (!pdev->is_master) {
        r = MEMTX_ERROR;
    } else {
        /*
         * QEMU 10.2's IOMMUs do not look at MemTxAttrs.address_type: a
         * translated request is an access to the translation's target
         * address space, not one through the device's IOMMU region.
         */
        r = dma_memory_rw(o->xl[i].as, o->xl[i].addr, s->buf[i], len, dir,
                          MEMTXATTRS_UNSPECIFIED);
    }
    if (r != MEMTX_OK) {
        svmval_sva_finish(s, SVA_ERR_DMA, addr);
        return false;
    }
    s->regs[R(SVA_CNT_BYTES)] += len;
    return true;
}

/* Process the chunk at o->pos: at most one page of each operand */
static bool svmval_sva_chunk(SvmvalSvaState *s)
{
    SvmvalSvaOp *o = &s->op;
    int nops = (o->op == SVA_OP_COPY || o->op == SVA_OP_COMPARE) ? 2 : 1;
    bool wr[2] = {
        o->op == SVA_OP_WRITE_PATTERN || o->op == SVA_OP_FILL,
        o->op == SVA_OP_COPY,
    };
    uint64_t addr[2] = { o->src + o->pos, o->dst + o->pos };
    uint64_t len = o->len - o->pos;
    int i;

    for (i = 0; i < nops; i++) {
        len = MIN(len, SVA_PAGE_SIZE - (addr[i] & ~SVA_PAGE_MASK));
    }
    for (i = 0; i < nops; i++) {
        if (o->pv && !o->xl[i].valid &&
            !svmval_sva_translate(s, i, addr[i], wr[i])) {
            return false;
        }
    }
    for (i = 0; i < nops; i++) {
        if (!wr[i] &&
            !svmval_sva_dma(s, i, addr[i], len, DMA_DIRECTION_TO_DEVICE)) {
            return false;
        }
    }

    switch (o->op) {
    case SVA_OP_READ_CRC:
        o->result = crc32(o->result, s->buf[0], len);
        break;
    case SVA_OP_COMPARE:
        for (uint64_t k = 0; k < len; k++) {
            if (s->buf[0][k] != s->buf[1][k]) {
                o->result = o->pos + k + 1;
                svmval_sva_finish(s, SVA_ERR_COMPARE_MISMATCH, addr[0] + k);
                return false;
            }
        }
        break;
    case SVA_OP_WRITE_PATTERN:
        for (uint64_t k = 0; k < len; k++) {
            s->buf[0][k] = o->pattern + (o->pos + k) * 131;
        }
        break;
    case SVA_OP_COPY:
        memcpy(s->buf[1], s->buf[0], len);
        break;
    case SVA_OP_FILL:
        for (uint64_t k = 0; k < len; k++) {
            s->buf[0][k] = o->pattern >> (((o->pos + k) & 7) * 8);
        }
        break;
    }

    for (i = 0; i < nops; i++) {
        if (wr[i] &&
            !svmval_sva_dma(s, i, addr[i], len, DMA_DIRECTION_FROM_DEVICE)) {
            return false;
        }
    }
    svmval_sva_drop_held(s);
    o->pos += len;
    return true;
}

/* Bottom half: run a few chunks, then yield to the main loop */
static void svmval_sva_run(void *opaque)
{
    SvmvalSvaState *s = opaque;
    SvmvalSvaOp *o = &s->op;

    if (!(s->regs[R(SVA_REG_STATUS)] & SVA_STATUS_BUSY) || o->waiting) {
        return;
    }
    if (o->responded) {
        o->responded = false;
        if (o->response == IOMMU_PRI_RESP_INVALID_REQUEST) {
            svmval_sva_finish(s, SVA_ERR_RESPONSE_INVALID, o->wait_addr);
            return;
        } else if (o->response != IOMMU_PRI_RESP_SUCCESS) {
            svmval_sva_finish(s, SVA_ERR_RESPONSE_FAILURE, o->wait_addr);
            return;
        }
        o->retry = true;
        o->retry_page = o->wait_addr & SVA_PAGE_MASK;
    }
    for (int n = 0; n < SVA_CHUNKS_PER_BH; n++) {
        if (o->pos == o->len) {
            svmval_sva_finish(s, SVA_ERR_NONE, 0);
            return;
        }
        if (!svmval_sva_chunk(s)) {
            return; /* waiting for a page group response, or ended */
        }
    }
    qemu_bh_schedule(s->bh);
}

static void svmval_sva_pri_timeout(void *opaque)
{
    SvmvalSvaState *s = opaque;

    if (s->op.waiting) {
        svmval_sva_finish(s, SVA_ERR_PRI_TIMEOUT, s->op.wait_addr);
    }
}

static void svmval_sva_start(SvmvalSvaState *s)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    SvmvalSvaOp *o = &s->op;
    uint64_t pasid = s->regs[R(SVA_REG_PASID)];

    memset(o, 0, sizeof(*o));
    o->op = s->regs[R(SVA_REG_OP)];
    o->pasid = pasid & SVA_PASID_MASK;
    o->pv = pasid & SVA_PASID_PV;
    o->priv = pasid & SVA_PASID_PRIV;
    o->exec = pasid & SVA_PASID_EXEC;
    o->src = s->regs[R(SVA_REG_SRC)];
    o->dst = s->regs[R(SVA_REG_DST)];
    o->len = s->regs[R(SVA_REG_LEN)];
    o->pattern = s->regs[R(SVA_REG_PATTERN)];
    o->start_ns = qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL);
    s->regs[R(SVA_REG_STATUS)] = SVA_STATUS_BUSY;
    s->regs[R(SVA_REG_ERROR)] = 0;
    s->regs[R(SVA_REG_ERROR_ADDR)] = 0;
    s->regs[R(SVA_REG_RESULT)] = 0;

    if (o->op < SVA_OP_READ_CRC || o->op > SVA_OP_FILL ||
        o->len == 0 || o->len > SVA_MAX_LEN) {
        svmval_sva_finish(s, SVA_ERR_BAD_OP, 0);
        return;
    }
    if (o->pv && pcie_pasid_enabled(pdev) && pcie_ats_enabled(pdev)) {
        o->ctx = svmval_sva_bind(s, o->pasid);
    }
    qemu_bh_schedule(s->bh);
}

/* MMIO: 64-bit registers, 32-bit accesses reach either half */

static uint64_t svmval_sva_mmio_read(void *opaque, hwaddr addr, unsigned size)
{
    SvmvalSvaState *s = opaque;
    hwaddr reg = addr & ~7ULL;
    uint64_t val = 0;

    switch (reg) {
    case SVA_REG_ID:
        val = SVA_ID_VALUE;
        break;
    case SVA_REG_SEED:
        val = s->seed_ignore_invalidation | (s->seed_no_last_page << 1);
        break;
    case SVA_CNT_ATC_ENTRIES:
        for (int i = 0; i < SVA_NR_PASIDS; i++) {
            val += g_hash_table_size(s->pasids[i].atc);
        }
        break;
    case SVA_REG_DOORBELL:
    case SVA_REG_ATC_FLUSH:
    case SVA_REG_CNT_RESET:
        break; /* write-only */
    default:
        val = s->regs[R(reg)];
        break;
    }
    return extract64(val, (addr & 7) * 8, size * 8);
}

static void svmval_sva_mmio_write(void *opaque, hwaddr addr, uint64_t val,
                                  unsigned size)
{
    SvmvalSvaState *s = opaque;
    hwaddr reg = addr & ~7ULL;
    unsigned shift = (addr & 7) * 8;

    switch (reg) {
    case SVA_REG_PASID:
        val = deposit64(s->regs[R(reg)], shift, size * 8, val);
        s->regs[R(reg)] = val & (SVA_PASID_MASK | SVA_PASID_EXEC |
                                 SVA_PASID_PRIV | SVA_PASID_PV);
        break;
    case SVA_REG_OP:
    case SVA_REG_SRC:
    case SVA_REG_DST:
    case SVA_REG_LEN:
    case SVA_REG_PATTERN:
        s->regs[R(reg)] = deposit64(s->regs[R(reg)], shift, size * 8, val);
        break;
    case SVA_REG_DOORBELL:
        if (!shift && (val & 1) &&
            !(s->regs[R(SVA_REG_STATUS)] & SVA_STATUS_BUSY)) {
            svmval_sva_start(s);
        }
        break;
    case SVA_REG_INTR:
        s->regs[R(reg)] &= ~(val << shift);
        break;
    case SVA_REG_ATC_FLUSH:
        if (!shift && (val & 1)) {
            for (int i = 0; i < SVA_NR_PASIDS; i++) {
                g_hash_table_remove_all(s->pasids[i].atc);
            }
            svmval_sva_drop_held(s);
        }
        break;
    case SVA_REG_CNT_RESET:
        memset(&s->regs[R(SVA_CNT_ATS_REQUESTS)], 0,
               SVA_CNT_ATC_ENTRIES - SVA_CNT_ATS_REQUESTS);
        break;
    }
    /* everything else is read-only */
}

static const MemoryRegionOps svmval_sva_mmio_ops = {
    .read = svmval_sva_mmio_read,
    .write = svmval_sva_mmio_write,
    .endianness = DEVICE_LITTLE_ENDIAN,
    .valid = { .min_access_size = 4, .max_access_size = 8 },
    .impl = { .min_access_size = 4, .max_access_size = 8 },
};

/* PCI */

static void svmval_sva_write_config(PCIDevice *pdev, uint32_t addr,
                                    uint32_t val, int len)
{
    uint8_t *pri_status = pdev->config + SVA_PRI_OFFSET + PCI_PRI_STATUS;

    /*
     * The ATC and notifiers follow the ATS, PASID and PRI enables: drop
     * them before the write, while unregistering still sees PASID enabled.
     */
    if (ranges_overlap(addr, len, SVA_ATS_OFFSET + PCI_ATS_CTRL, 2) ||
        ranges_overlap(addr, len, SVA_PASID_OFFSET + PCI_PASID_CTRL, 2) ||
        ranges_overlap(addr, len, SVA_PRI_OFFSET + PCI_PRI_CTRL, 2)) {
        svmval_sva_unbind_all(SVMVAL_SVA(pdev));
    }
    pci_default_write_config(pdev, addr, val, len);
    /* PRI Stopped reads 1 while PRI is disabled (Linux checks it) */
    if (pcie_pri_enabled(pdev)) {
        pci_word_test_and_clear_mask(pri_status, PCI_PRI_STATUS_STOPPED);
    } else {
        pci_word_test_and_set_mask(pri_status, PCI_PRI_STATUS_STOPPED);
    }
}

static void svmval_sva_realize(PCIDevice *pdev, Error **errp)
{
    SvmvalSvaState *s = SVMVAL_SVA(pdev);

    if (pcie_endpoint_cap_init(pdev, 0x40) < 0) {
        error_setg(errp, "svmval-sva: cannot add the PCIe capability");
        return;
    }
    if (msi_init(pdev, 0x80, 1, true, false, errp)) {
        return;
    }
    pcie_ats_init(pdev, SVA_ATS_OFFSET, true);
    pcie_pasid_init(pdev, SVA_PASID_OFFSET, PCI_EXT_CAP_PASID_MAX_WIDTH,
                    true, true);
    pcie_pri_init(pdev, SVA_PRI_OFFSET, SVA_PRI_OUTSTANDING, true);

    memory_region_init_io(&s->mmio, OBJECT(s), &svmval_sva_mmio_ops, s,
                          "svmval-sva-mmio", 4 * KiB);
    pci_register_bar(pdev, 0, PCI_BASE_ADDRESS_SPACE_MEMORY, &s->mmio);

    for (int i = 0; i < SVA_NR_PASIDS; i++) {
        s->pasids[i].s = s;
        s->pasids[i].atc = g_hash_table_new_full(g_int64_hash, g_int64_equal,
                                                 NULL, g_free);
    }
    s->bh = qemu_bh_new_guarded(svmval_sva_run, s,
                                &DEVICE(s)->mem_reentrancy_guard);
    s->pri_timer = timer_new_ns(QEMU_CLOCK_VIRTUAL, svmval_sva_pri_timeout, s);
}

static void svmval_sva_exit(PCIDevice *pdev)
{
    SvmvalSvaState *s = SVMVAL_SVA(pdev);

    svmval_sva_unbind_all(s);
    for (int i = 0; i < SVA_NR_PASIDS; i++) {
        g_hash_table_destroy(s->pasids[i].atc);
    }
    timer_free(s->pri_timer);
    qemu_bh_delete(s->bh);
    msi_uninit(pdev);
}

static void svmval_sva_reset_hold(Object *obj, ResetType type)
{
    SvmvalSvaState *s = SVMVAL_SVA(obj);
    uint8_t *config = PCI_DEVICE(obj)->config;

    qemu_bh_cancel(s->bh);
    timer_del(s->pri_timer);
    svmval_sva_unbind_all(s); /* before the enables below are cleared */
    memset(s->regs, 0, sizeof(s->regs));
    memset(&s->op, 0, sizeof(s->op));
    s->next_prgi = 0;
    /* QEMU's PCI reset leaves the extended capabilities to the device */
    pci_set_word(config + SVA_ATS_OFFSET + PCI_ATS_CTRL, 0);
    pci_set_word(config + SVA_PASID_OFFSET + PCI_PASID_CTRL, 0);
    pci_set_word(config + SVA_PRI_OFFSET + PCI_PRI_CTRL, 0);
    pci_set_word(config + SVA_PRI_OFFSET + PCI_PRI_STATUS,
                 PCI_PRI_STATUS_STOPPED | PCI_PRI_STATUS_PASID);
    pci_set_long(config + SVA_PRI_OFFSET + PCI_PRI_ALLOC_REQ, 0);
}

static const Property svmval_sva_properties[] = {
    DEFINE_PROP_BOOL("x-seed-ignore-invalidation", SvmvalSvaState,
                     seed_ignore_invalidation, false),
    DEFINE_PROP_BOOL("x-seed-no-last-page", SvmvalSvaState,
                     seed_no_last_page, false),
};

static const VMStateDescription vmstate_svmval_sva = {
    .name = TYPE_SVMVAL_SVA,
    .unmigratable = 1,
};

static void svmval_sva_class_init(ObjectClass *klass, const void *data)
{
    DeviceClass *dc = DEVICE_CLASS(klass);
    PCIDeviceClass *k = PCI_DEVICE_CLASS(klass);
    ResettableClass *rc = RESETTABLE_CLASS(klass);

    k->realize = svmval_sva_realize;
    k->exit = svmval_sva_exit;
    k->config_write = svmval_sva_write_config;
    k->vendor_id = PCI_VENDOR_ID_QEMU;
    k->device_id = SVA_DEVICE_ID;
    k->class_id = PCI_CLASS_OTHERS;
    rc->phases.hold = svmval_sva_reset_hold;
    dc->desc = "svmval PASID/ATS/PRI test device";
    dc->vmsd = &vmstate_svmval_sva;
    device_class_set_props(dc, svmval_sva_properties);
    set_bit(DEVICE_CATEGORY_MISC, dc->categories);
}

static const TypeInfo svmval_sva_types[] = {
    {
        .name          = TYPE_SVMVAL_SVA,
        .parent        = TYPE_PCI_DEVICE,
        .instance_size = sizeof(SvmvalSvaState),
        .class_init    = svmval_sva_class_init,
        .interfaces    = (const InterfaceInfo[]) {
            { INTERFACE_PCIE_DEVICE },
            { },
        },
    },
};

DEFINE_TYPES(svmval_sva_types)
