// SPDX-License-Identifier: GPL-2.0
/*
 * svmval_sva: guest driver of svmval's PASID/ATS/PRI test device (QEMU
 * "svmval-sva", PCI 1234:5356). docs/TESTDEV.md is the contract: the device's
 * registers and the ioctl ABI of /dev/svmval-sva0 (svmval_sva.h).
 *
 * Opening the char device binds the caller's mm to the device with
 * iommu_sva_bind_device() (one PASID per process); an operation programs the
 * registers under a mutex, rings the doorbell and sleeps until the completion
 * MSI. With SVMVAL_SVA_OP_NO_PASID the operation instead runs on a coherent
 * DMA buffer (the plain DMA API through the IOMMU's default domain).
 *
 * The IOMMU side does the rest: the IOMMU driver enables PASID, ATS and PRI
 * in the device at probe (when the vIOMMU offers them); page requests are
 * answered by the IOMMU core's iopf handler (handle_mm_fault on the bound mm).
 */

#include <linux/completion.h>
#include <linux/dma-mapping.h>
#include <linux/idr.h>
#include <linux/interrupt.h>
#include <linux/iommu.h>
#include <linux/kprobes.h>
#include <linux/kref.h>
#include <linux/ktime.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/pci-ats.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#include "svmval_sva.h"

#define DRV_NAME "svmval_sva"

/* BAR0 registers (docs/TESTDEV.md) */
#define REG_ID			0x00
#define REG_PASID		0x08
#define REG_OP			0x10
#define REG_SRC			0x18
#define REG_DST			0x20
#define REG_LEN			0x28
#define REG_PATTERN		0x30
#define REG_DOORBELL		0x38
#define REG_STATUS		0x40
#define REG_ERROR		0x48
#define REG_ERROR_ADDR		0x50
#define REG_RESULT		0x58
#define REG_DEVICE_NS		0x60
#define REG_OP_PAGE_REQUESTS	0x68
#define REG_INTR		0x70
#define REG_SEED		0x80
#define REG_COUNTERS		0x100	/* 11 counters, 8 bytes apart */

#define ID_MAGIC		0x53564d56ULL	/* "SVMV" */
#define ID_VERSION		1
#define PASID_PV		BIT(31)
#define PASID_PRIV		BIT(30)
#define PASID_EXEC		BIT(29)
#define PASID_MASK		GENMASK(19, 0)
#define INTR_DONE		BIT(0)

static unsigned int op_timeout_ms = 120000;
module_param(op_timeout_ms, uint, 0644);
MODULE_PARM_DESC(op_timeout_ms, "how long an operation may take before the ioctl gives up (ms)");

static DEFINE_IDA(svmval_ida);

struct svmval_sva {
	struct kref ref;		/* probe's, plus one per open file */
	struct pci_dev *pdev;
	void __iomem *regs;
	struct miscdevice misc;
	char name[24];
	int id, irq;
	struct mutex lock;		/* one operation at a time; guards files, gone */
	struct completion done;		/* completed by the MSI */
	u64 irq_ns;			/* ktime of the last completion interrupt */
	struct list_head files;		/* open files, unbound at remove */
	bool gone;			/* removed: every call fails with -ENODEV */
	bool iopf_on, sva_on;		/* IOMMU device features enabled at probe */
	int sva_err;			/* errno open() returns when SVA is unusable */
	char sva_why[160];
};

struct svmval_file {
	struct svmval_sva *sva;
	struct list_head node;
	struct iommu_sva *handle;
	struct mm_struct *mm;		/* the bound mm (pinned by the bind) */
	u32 pasid;
};

static void svmval_free(struct kref *ref)
{
	kfree(container_of(ref, struct svmval_sva, ref));
}

static irqreturn_t svmval_irq(int irq, void *data)
{
	struct svmval_sva *sva = data;

	if (!(readq(sva->regs + REG_INTR) & INTR_DONE))
		return IRQ_NONE;
	sva->irq_ns = ktime_get_ns();
	writeq(INTR_DONE, sva->regs + REG_INTR);
	complete(&sva->done);
	return IRQ_HANDLED;
}

static int svmval_open(struct inode *inode, struct file *file)
{
	struct svmval_sva *sva = container_of(file->private_data, struct svmval_sva, misc);
	struct device *dev = &sva->pdev->dev;
	struct svmval_file *f;
	int ret;

	if (sva->sva_err) {
		dev_err(dev, "open refused (%d): %s\n", sva->sva_err, sva->sva_why);
		return sva->sva_err;
	}
	f = kzalloc(sizeof(*f), GFP_KERNEL);
	if (!f)
		return -ENOMEM;
	mutex_lock(&sva->lock);
	if (sva->gone) {
		ret = -ENODEV;
		goto err;
	}
	f->handle = iommu_sva_bind_device(dev, current->mm);
	if (IS_ERR(f->handle)) {
		ret = PTR_ERR(f->handle);
		/*
		 * -EOPNOTSUPP from a kernel whose IOMMU did enable SVA: the x86
		 * stable stopgap for CVE-2025-71089 ("iommu: disable SVA when
		 * CONFIG_X86 is set", e.g. Debian's 6.12.117) refuses every bind.
		 */
		dev_err(dev, "iommu_sva_bind_device for pid %d failed: %d%s\n", current->pid, ret,
			ret == -EOPNOTSUPP ? " (this kernel refuses SVA binds: x86 stable kernels with the "
			"CVE-2025-71089 stopgap do)" :
			ret == -ENODEV ? " (IOMMU not SVM-capable: intel-iommu also wants ECAP.SMPWC)" : "");
		goto err;
	}
	f->pasid = iommu_sva_get_pasid(f->handle);
	f->mm = current->mm;
	f->sva = sva;
	kref_get(&sva->ref);
	list_add(&f->node, &sva->files);
	mutex_unlock(&sva->lock);
	file->private_data = f;
	dev_dbg(dev, "pid %d bound, PASID %u\n", current->pid, f->pasid);
	return 0;
err:
	mutex_unlock(&sva->lock);
	kfree(f);
	return ret;
}

/* Unbinding runs at close and so at process exit (the last fput). */
static int svmval_release(struct inode *inode, struct file *file)
{
	struct svmval_file *f = file->private_data;
	struct svmval_sva *sva = f->sva;

	mutex_lock(&sva->lock);
	if (f->handle)
		iommu_sva_unbind_device(f->handle);
	if (!sva->gone)
		list_del(&f->node);
	mutex_unlock(&sva->lock);
	kfree(f);
	kref_put(&sva->ref, svmval_free);
	return 0;
}

static bool op_reads_dst(u32 op)
{
	return op == SVMVAL_SVA_OP_COMPARE;
}

static bool op_writes(u32 op)
{
	return op == SVMVAL_SVA_OP_WRITE_PATTERN || op == SVMVAL_SVA_OP_COPY ||
	       op == SVMVAL_SVA_OP_FILL;
}

/*
 * Program the registers, ring the doorbell and wait for the completion MSI.
 * Called with sva->lock held. Returns 0 when the device finished the
 * operation (DONE or ERROR: the out fields say which).
 */
static int svmval_run(struct svmval_sva *sva, struct svmval_sva_op *op, u64 pasid_reg,
		      u64 src, u64 dst)
{
	void __iomem *r = sva->regs;
	u64 t0, status;
	long left;

	if (readq(r + REG_STATUS) & SVMVAL_SVA_STATUS_BUSY)
		return -EBUSY;	/* an earlier operation timed out and still runs */
	writeq(pasid_reg, r + REG_PASID);
	writeq(op->op, r + REG_OP);
	writeq(src, r + REG_SRC);
	writeq(dst, r + REG_DST);
	writeq(op->len, r + REG_LEN);
	writeq(op->pattern, r + REG_PATTERN);
	reinit_completion(&sva->done);
	t0 = ktime_get_ns();
	writeq(1, r + REG_DOORBELL);
	left = wait_for_completion_killable_timeout(&sva->done, msecs_to_jiffies(op_timeout_ms));
	status = readq(r + REG_STATUS);
	if (left <= 0 && (status & SVMVAL_SVA_STATUS_BUSY)) {
		dev_err(&sva->pdev->dev, "op %u (len %llu) %s after %u ms, device still busy\n",
			op->op, op->len, left ? "interrupted" : "timed out", op_timeout_ms);
		return left ? -EINTR : -ETIMEDOUT;
	}
	op->wall_ns = (left > 0 ? sva->irq_ns : ktime_get_ns()) - t0;
	op->status = status;
	op->error = readq(r + REG_ERROR);
	op->error_addr = readq(r + REG_ERROR_ADDR);
	op->result = readq(r + REG_RESULT);
	op->device_ns = readq(r + REG_DEVICE_NS);
	op->page_requests = readq(r + REG_OP_PAGE_REQUESTS);
	return 0;
}

/*
 * NO_PASID: the user's buffers are bounced through coherent DMA buffers and
 * the device is given their IOVAs, untagged. FILL and WRITE_PATTERN write at
 * the SRC register's address; the driver sets DST to the same IOVA so the op
 * works whichever one the device reads, and copies the result back to the
 * user's dst (or src when dst is 0).
 */
static int svmval_run_dma(struct svmval_sva *sva, struct svmval_sva_op *op)
{
	struct device *dev = &sva->pdev->dev;
	bool two = op->op == SVMVAL_SVA_OP_COPY || op_reads_dst(op->op);
	void __user *usrc = u64_to_user_ptr(op->src);
	void __user *udst = u64_to_user_ptr(op->dst);
	dma_addr_t a_iova, b_iova = 0;
	void *a, *b = NULL;
	int ret;

	a = dma_alloc_coherent(dev, op->len, &a_iova, GFP_KERNEL);
	if (!a)
		return -ENOMEM;
	if (two) {
		b = dma_alloc_coherent(dev, op->len, &b_iova, GFP_KERNEL);
		if (!b) {
			ret = -ENOMEM;
			goto out;
		}
	}
	ret = -EFAULT;
	if (op->op != SVMVAL_SVA_OP_FILL && op->op != SVMVAL_SVA_OP_WRITE_PATTERN &&
	    copy_from_user(a, usrc, op->len))
		goto out;
	if (op_reads_dst(op->op) && copy_from_user(b, udst, op->len))
		goto out;
	ret = svmval_run(sva, op, 0, a_iova, two ? b_iova : a_iova);
	if (ret == -EINTR || ret == -ETIMEDOUT || ret == -EBUSY) {
		if (ret != -EBUSY) {
			/* The device may still write them: leak rather than free. */
			dev_err(dev, "leaking the DMA buffers of an unfinished operation\n");
			return ret;
		}
		goto out;
	}
	if (op_writes(op->op) && (op->status & SVMVAL_SVA_STATUS_DONE)) {
		void *res = op->op == SVMVAL_SVA_OP_COPY ? b : a;

		if (copy_to_user(op->dst ? udst : usrc, res, op->len))
			ret = -EFAULT;
	}
out:
	if (b)
		dma_free_coherent(dev, op->len, b, b_iova);
	dma_free_coherent(dev, op->len, a, a_iova);
	return ret;
}

/* Whether a file of @sva is bound with @pasid (called with sva->lock held). */
static bool svmval_pasid_bound(struct svmval_sva *sva, u32 pasid)
{
	struct svmval_file *f;

	list_for_each_entry(f, &sva->files, node)
		if (f->handle && f->pasid == pasid)
			return true;
	return false;
}

static long svmval_ioctl_op(struct svmval_file *f, void __user *arg)
{
	struct svmval_sva *sva = f->sva;
	struct svmval_sva_op op;
	u64 pasid_reg;
	int ret;

	if (copy_from_user(&op, arg, sizeof(op)))
		return -EFAULT;
	if (op.op < SVMVAL_SVA_OP_READ_CRC || op.op > SVMVAL_SVA_OP_FILL)
		return -EINVAL;
	if (op.flags & ~SVMVAL_SVA_OP_FLAGS)
		return -EINVAL;
	if (op.len == 0 || op.len > SVMVAL_SVA_MAX_LEN)
		return -EINVAL;
	if ((op.flags & SVMVAL_SVA_OP_NO_PASID) &&
	    (op.flags & (SVMVAL_SVA_OP_PRIV | SVMVAL_SVA_OP_EXEC | SVMVAL_SVA_OP_UNBOUND_PASID)))
		return -EINVAL;	/* PRIV, EXEC and the PASID qualify PASID-tagged requests only */
	/* A forked child holds its parent's file: it must open its own. */
	if (!(op.flags & SVMVAL_SVA_OP_NO_PASID) && current->mm != f->mm)
		return -EPERM;

	/*
	 * PASID-tagged addresses are not checked here on purpose: a kernel or
	 * read-only address must be refused by the IOMMU (the workloads check
	 * that), not by this driver.
	 */
	pasid_reg = (op.flags & SVMVAL_SVA_OP_UNBOUND_PASID ? SVMVAL_SVA_UNBOUND_PASID : f->pasid & PASID_MASK) |
		    PASID_PV;
	if (op.flags & SVMVAL_SVA_OP_PRIV)
		pasid_reg |= PASID_PRIV;
	if (op.flags & SVMVAL_SVA_OP_EXEC)
		pasid_reg |= PASID_EXEC;

	if (mutex_lock_interruptible(&sva->lock))
		return -EINTR;
	if (sva->gone)
		ret = -ENODEV;
	else if ((op.flags & SVMVAL_SVA_OP_UNBOUND_PASID) && svmval_pasid_bound(sva, SVMVAL_SVA_UNBOUND_PASID))
		ret = -EBUSY;
	else if (op.flags & SVMVAL_SVA_OP_NO_PASID)
		ret = svmval_run_dma(sva, &op);
	else
		ret = svmval_run(sva, &op, pasid_reg, op.src,
				 op.op == SVMVAL_SVA_OP_COPY || op_reads_dst(op.op) ? op.dst : op.src);
	mutex_unlock(&sva->lock);
	if (ret)
		return ret;
	return copy_to_user(arg, &op, sizeof(op)) ? -EFAULT : 0;
}

static long svmval_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct svmval_file *f = file->private_data;
	struct svmval_sva *sva = f->sva;
	struct pci_dev *pdev = sva->pdev;
	void __user *uarg = (void __user *)arg;

	switch (cmd) {
	case SVMVAL_IOC_INFO: {
		struct svmval_sva_info info = {
			.abi_version = SVMVAL_SVA_ABI_VERSION,
			.pasid = f->handle ? f->pasid : 0,
			.source_id = pci_dev_id(pdev),
		};

		mutex_lock(&sva->lock);
		if (sva->gone) {
			mutex_unlock(&sva->lock);
			return -ENODEV;
		}
		info.seed = readq(sva->regs + REG_SEED);
		mutex_unlock(&sva->lock);
		info.flags = (f->handle ? SVMVAL_SVA_INFO_BOUND : 0) |
			     (pdev->ats_enabled ? SVMVAL_SVA_INFO_ATS : 0) |
			     (pdev->pri_enabled ? SVMVAL_SVA_INFO_PRI : 0) |
			     (pdev->pasid_enabled ? SVMVAL_SVA_INFO_PASID : 0);
		return copy_to_user(uarg, &info, sizeof(info)) ? -EFAULT : 0;
	}
	case SVMVAL_IOC_OP:
		return svmval_ioctl_op(f, uarg);
	case SVMVAL_IOC_COUNTERS: {
		u64 c[sizeof(struct svmval_sva_counters) / sizeof(u64)];
		int i;

		mutex_lock(&sva->lock);	/* also: no counter read mid-operation */
		if (sva->gone) {
			mutex_unlock(&sva->lock);
			return -ENODEV;
		}
		for (i = 0; i < ARRAY_SIZE(c); i++)
			c[i] = readq(sva->regs + REG_COUNTERS + 8 * i);
		mutex_unlock(&sva->lock);
		return copy_to_user(uarg, c, sizeof(c)) ? -EFAULT : 0;
	}
	default:
		return -ENOTTY;
	}
}

static const struct file_operations svmval_fops = {
	.owner = THIS_MODULE,
	.open = svmval_open,
	.release = svmval_release,
	.unlocked_ioctl = svmval_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

/* Undo svmval_enable_sva(): SVA first, then IOPF. */
static void svmval_disable_sva(struct svmval_sva *sva)
{
#ifdef SVMVAL_HAVE_DEV_FEAT
	if (sva->sva_on)
		iommu_dev_disable_feature(&sva->pdev->dev, IOMMU_DEV_FEAT_SVA);
	if (sva->iopf_on)
		iommu_dev_disable_feature(&sva->pdev->dev, IOMMU_DEV_FEAT_IOPF);
#endif
	sva->sva_on = sva->iopf_on = false;
}

/*
 * Enable SVA the way Linux 6.12 wants it: IOPF first (intel-iommu checks
 * that ATS is on, adds the device to the IOMMU's fault queue and enables PRI,
 * refusing a device whose PRI capability lacks "PRG Response PASID Required"),
 * then SVA (it checks the IOMMU is SVM-capable and PASID + ATS (+ PRI) are
 * enabled). A refusal leaves the device usable for nothing but this message:
 * open() returns the errno and logs why. Linux >= 6.16 has no such features
 * (Kbuild leaves SVMVAL_HAVE_DEV_FEAT undefined): the IOMMU driver enables
 * IOPF itself when the SVA domain attaches, and refusals surface at bind.
 */
static void svmval_enable_sva(struct svmval_sva *sva)
{
	struct pci_dev *pdev = sva->pdev;
	struct device *dev = &pdev->dev;
	int ret = 0, iopf_ret = 0;

	if (!device_iommu_mapped(dev)) {
		sva->sva_err = -ENODEV;
		snprintf(sva->sva_why, sizeof(sva->sva_why),
			 "no IOMMU translates this device (intel_iommu=on, a vIOMMU?)");
		goto out;
	}
#ifdef SVMVAL_HAVE_DEV_FEAT
	iopf_ret = iommu_dev_enable_feature(dev, IOMMU_DEV_FEAT_IOPF);
	sva->iopf_on = !iopf_ret;
	ret = iommu_dev_enable_feature(dev, IOMMU_DEV_FEAT_SVA);
	sva->sva_on = !ret;
#endif
	if (!ret) {
		if (iopf_ret)
			dev_warn(dev, "SVA without IOPF (%d): first touches will fail\n", iopf_ret);
		goto out;
	}
	sva->sva_err = ret == -ENODEV ? -EOPNOTSUPP : ret;
	snprintf(sva->sva_why, sizeof(sva->sva_why),
		 "IOMMU refused SVA (%d; IOPF %d): %s; device ats=%d pasid=%d pri=%d",
		 ret, iopf_ret,
		 ret == -ENODEV ? "the IOMMU is not SVM-capable (intel-iommu also wants ECAP.SMPWC)" :
		 !pdev->pasid_enabled ? "PASID not enabled (vIOMMU without PASID support?)" :
		 !pdev->ats_enabled ? "ATS not enabled (vIOMMU without device-iotlb?)" :
		 "PRI not enabled (vIOMMU without page requests?)",
		 pdev->ats_enabled, pdev->pasid_enabled, pdev->pri_enabled);
	svmval_disable_sva(sva);
out:
	if (sva->sva_err)
		dev_err(dev, "SVA unavailable: %s\n", sva->sva_why);
	else
		dev_info(dev, "SVA %s: ats=%d pasid=%d pri=%d (IOPF %s)\n",
			 IS_ENABLED(SVMVAL_HAVE_DEV_FEAT) ? "enabled" : "left to bind",
			 pdev->ats_enabled, pdev->pasid_enabled, pdev->pri_enabled,
			 sva->iopf_on ? "on" : IS_ENABLED(SVMVAL_HAVE_DEV_FEAT) ? "off" : "at bind");
}

static int svmval_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct device *dev = &pdev->dev;
	struct svmval_sva *sva;
	u64 ident;
	int ret;

	ret = pcim_enable_device(pdev);
	if (ret)
		return ret;
	ret = pcim_iomap_regions(pdev, BIT(0), DRV_NAME);
	if (ret)
		return ret;
	ret = dma_set_mask_and_coherent(dev, DMA_BIT_MASK(64));
	if (ret)
		return dev_err_probe(dev, ret, "no 64-bit DMA\n");
	sva = kzalloc(sizeof(*sva), GFP_KERNEL);
	if (!sva)
		return -ENOMEM;
	kref_init(&sva->ref);
	sva->pdev = pdev;
	sva->regs = pcim_iomap_table(pdev)[0];
	mutex_init(&sva->lock);
	init_completion(&sva->done);
	INIT_LIST_HEAD(&sva->files);

	ident = readq(sva->regs + REG_ID);
	if ((ident & 0xffffffff) != ID_MAGIC || ((ident >> 32) & 0xffff) != ID_VERSION) {
		ret = dev_err_probe(dev, -ENODEV, "ID register %#llx: not register map %u\n",
				    ident, ID_VERSION);
		goto err_free;
	}
	pci_set_master(pdev);
	ret = pci_alloc_irq_vectors(pdev, 1, 1, PCI_IRQ_MSI);
	if (ret < 0) {
		dev_err_probe(dev, ret, "no MSI vector\n");
		goto err_free;
	}
	sva->irq = pci_irq_vector(pdev, 0);
	writeq(INTR_DONE, sva->regs + REG_INTR);	/* drop a stale completion */
	ret = request_irq(sva->irq, svmval_irq, 0, DRV_NAME, sva);
	if (ret)
		goto err_vectors;

	svmval_enable_sva(sva);

	sva->id = ida_alloc(&svmval_ida, GFP_KERNEL);
	if (sva->id < 0) {
		ret = sva->id;
		goto err_features;
	}
	snprintf(sva->name, sizeof(sva->name), "svmval-sva%d", sva->id);
	sva->misc.minor = MISC_DYNAMIC_MINOR;
	sva->misc.name = sva->name;
	sva->misc.fops = &svmval_fops;
	sva->misc.parent = dev;
	ret = misc_register(&sva->misc);
	if (ret)
		goto err_ida;
	pci_set_drvdata(pdev, sva);
	dev_info(dev, "/dev/%s, source-id %#06x\n", sva->name, pci_dev_id(pdev));
	return 0;

err_ida:
	ida_free(&svmval_ida, sva->id);
err_features:
	svmval_disable_sva(sva);
	free_irq(sva->irq, sva);
err_vectors:
	pci_free_irq_vectors(pdev);
err_free:
	kfree(sva);
	return ret;
}

/* Open files outlive the device: their binds end here, their calls fail with -ENODEV. */
static void svmval_remove(struct pci_dev *pdev)
{
	struct svmval_sva *sva = pci_get_drvdata(pdev);
	struct svmval_file *f, *tmp;

	misc_deregister(&sva->misc);
	mutex_lock(&sva->lock);
	sva->gone = true;
	list_for_each_entry_safe(f, tmp, &sva->files, node) {
		iommu_sva_unbind_device(f->handle);
		f->handle = NULL;
		list_del(&f->node);
	}
	mutex_unlock(&sva->lock);
	svmval_disable_sva(sva);
	free_irq(sva->irq, sva);
	pci_free_irq_vectors(pdev);
	ida_free(&svmval_ida, sva->id);
	kref_put(&sva->ref, svmval_free);
}

static const struct pci_device_id svmval_ids[] = {
	{ PCI_DEVICE(0x1234, 0x5356) },
	{ }
};
MODULE_DEVICE_TABLE(pci, svmval_ids);

static struct pci_driver svmval_driver = {
	.name = DRV_NAME,
	.id_table = svmval_ids,
	.probe = svmval_probe,
	.remove = svmval_remove,
};

/*
 * Test-only seeded bug (svmval run --seed-bug wrong-prgi-response or
 * wrong-pasid-response): writing "prgi" or "pasid" to
 * /sys/module/svmval_sva/parameters/seed_response makes the next page group
 * response the guest's IOMMU driver sends name another PRGI or PASID than the
 * page request it answers, as a buggy driver would. intel_iommu_page_response()
 * (drivers/iommu/intel/prq.c) builds the descriptor from the fault it is
 * handed, so a kprobe on it changes that fault once. Nothing is probed until
 * the parameter is written; "off" disarms it.
 */
enum { SEED_OFF, SEED_PRGI, SEED_PASID };
static const char * const seed_names[] = { "off", "prgi", "pasid" };
static int seed_mode;
static atomic_t seed_left = ATOMIC_INIT(0);
static bool seed_probed;
static DEFINE_MUTEX(seed_lock);

static int seed_pre(struct kprobe *kp, struct pt_regs *regs)
{
	struct iopf_fault *evt = (void *)regs_get_kernel_argument(regs, 1);
	struct iommu_fault_page_request *prm = &evt->fault.prm;

	if (atomic_dec_if_positive(&seed_left) < 0)
		return 0;
	if (seed_mode == SEED_PRGI) {
		/* PRGI is 9 bits; its top bit names a group no request is in */
		pr_warn(DRV_NAME ": seeded bug: page group response PRGI %u sent as %u (PASID %u)\n",
			prm->grpid, prm->grpid ^ 0x100, prm->pasid);
		prm->grpid ^= 0x100;
	} else {
		/* bit 7 of an SVA PASID (the IOMMU core hands out small ones) */
		pr_warn(DRV_NAME ": seeded bug: page group response PASID %u sent as %u (PRGI %u)\n",
			prm->pasid, prm->pasid ^ 0x80, prm->grpid);
		prm->pasid ^= 0x80;
	}
	return 0;
}

static struct kprobe seed_kp = {
	.symbol_name = "intel_iommu_page_response",
	.pre_handler = seed_pre,
};

static int seed_set(const char *val, const struct kernel_param *kp)
{
	int mode = sysfs_match_string(seed_names, val);
	int ret = 0;

	if (mode < 0)
		return -EINVAL;
	mutex_lock(&seed_lock);
	if (mode != SEED_OFF && !seed_probed) {
		ret = register_kprobe(&seed_kp);
		if (ret)
			pr_err(DRV_NAME ": seed_response: cannot probe %s: %d\n",
			       seed_kp.symbol_name, ret);
		seed_probed = !ret;
	}
	if (!ret) {
		seed_mode = mode;
		atomic_set(&seed_left, mode != SEED_OFF);
	}
	mutex_unlock(&seed_lock);
	return ret;
}

static int seed_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%s\n", seed_names[seed_mode]);
}

static const struct kernel_param_ops seed_ops = { .set = seed_set, .get = seed_get };
module_param_cb(seed_response, &seed_ops, NULL, 0644);
MODULE_PARM_DESC(seed_response, "test-only: off, prgi or pasid (the next page group response names a wrong one)");

static int __init svmval_init(void)
{
	return pci_register_driver(&svmval_driver);
}
module_init(svmval_init);

static void __exit svmval_exit(void)
{
	pci_unregister_driver(&svmval_driver);
	if (seed_probed)
		unregister_kprobe(&seed_kp);
}
module_exit(svmval_exit);

MODULE_DESCRIPTION("svmval-sva PASID/ATS/PRI test device: SVA ops from user space");
MODULE_LICENSE("GPL");
