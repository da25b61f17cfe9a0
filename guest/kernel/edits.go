package kernel

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// Edit is one change Berth makes to the kernel source before compiling
// it: Old, which must occur exactly once in File, becomes New. Edits are
// kept to what a boot parameter or the configuration cannot do, each
// small enough to read in review, and they fail the build loudly when a
// new source version moves the text (`berth guest build` names the edit
// and the file).
type Edit struct {
	// Name identifies the edit in errors and in the kernel's manifest.
	Name string
	// File is relative to the top of the source tree.
	File     string
	Old, New string
}

// Edits returns the source edits for a Debian architecture name (amd64).
func Edits(debArch string) []Edit {
	if debArch == "amd64" {
		return editsX86_64
	}
	return nil
}

// Digest hashes a list of edits, for the build cache key: a changed edit
// compiles a new kernel.
func Digest(edits []Edit) string {
	h := sha256.New()
	for _, e := range edits {
		fmt.Fprintf(h, "%q %q %q %q\n", e.Name, e.File, e.Old, e.New)
	}
	return hex.EncodeToString(h.Sum(nil))
}

var editsX86_64 = []Edit{
	{
		// Under TCG, a store into a guest page that holds translated
		// code goes through QEMU's slow path, which invalidates only the
		// translations overlapping the bytes stored, until none is left.
		// The kernel's init code, which the boot has just run, is such a
		// page range (784 KiB): poisoning it (0xcc) when freeing it cost
		// ~0.45 s of every boot with the byte-wise `rep stosb` and still
		// ~0.1 s with 8-byte stores (measured by sampling the vCPU's RIP
		// through QMP), and freed without the poison its pages made the
		// first container's create ~0.2 s slower: the kernel reuses them
		// at once, and every write into them takes the slow path again.
		// So the init code is kept: 784 KiB of the guest's memory, which
		// holds the kernel image on the host either way. mark_rodata_ro,
		// which runs next, makes it non-executable.
		Name: "keep-the-init-code",
		File: "arch/x86/mm/init.c",
		Old: `	free_kernel_image_pages("unused kernel image (initmem)",
				&__init_begin, &__init_end);
}
`,
		New: `	/* Berth: the init code stays reserved (guest/kernel/edits.go). */
	pr_info("Keeping unused kernel image (initmem) memory: %luK\n",
		(unsigned long)(__init_end - __init_begin) >> 10);
}
`,
	},
	{
		// The other memory freed at the end of the boot holds no
		// translated code: the gaps between the kernel's text, rodata
		// and data (3 MiB) and the 10 MiB initramfs image after
		// unpacking. Poisoning it is only a debugging aid (a freed page
		// is never promised to hold anything) and under TCG every one
		// of its stores is emulated, so it goes to the page allocator as
		// it is.
		Name: "no-poison-of-freed-boot-memory",
		File: "mm/page_alloc.c",
		Old: `		if ((unsigned int)poison <= 0xFF)
			memset(direct_map_addr, poison, PAGE_SIZE);
`,
		New: `		/* Berth: freed boot memory is not poisoned (guest/kernel/edits.go). */
		(void)direct_map_addr;
`,
	},
	{
		// tsc_early_khz= gives the TSC's frequency, which Berth passes
		// (internal/qemu), but the kernel still measures the CPU's
		// clock against the PIT (quick_pit_calibrate): reading an
		// emulated PIT until the count is accurate to 500 ppm, 10-15 ms
		// of every boot under TCG by the RIP samples, for a figure it
		// then only shows as "cpu MHz" and replaces by the TSC's when
		// the two differ by more than 10%. With the parameter, the CPU
		// clock is taken to be the TSC's, as it is when the PIT
		// measurement fails.
		Name: "tsc-early-khz-gives-the-cpu-clock",
		File: "arch/x86/kernel/tsc.c",
		Old: `	if (early) {
		cpu_khz = x86_platform.calibrate_cpu();
		if (tsc_early_khz)
			tsc_khz = tsc_early_khz;
		else
			tsc_khz = x86_platform.calibrate_tsc();
`,
		New: `	if (early) {
		/* Berth: tsc_early_khz= gives the CPU's clock too (guest/kernel/edits.go). */
		if (tsc_early_khz) {
			cpu_khz = tsc_khz = tsc_early_khz;
		} else {
			cpu_khz = x86_platform.calibrate_cpu();
			tsc_khz = x86_platform.calibrate_tsc();
		}
`,
	},
	{
		// Without a TSC-deadline timer (TCG's CPU has none) the kernel
		// calibrates the local APIC timer by counting it for HZ/10
		// jiffies: 0.1 s of wall time in every boot. lapic_timer_hz=
		// gives the frequency instead, as a hypervisor's CPUID leaf does
		// for VMware or Hyper-V guests; QEMU's emulated APIC and KVM's
		// both count at 1 GHz (internal/qemu passes it).
		Name: "lapic-timer-hz-parameter",
		File: "arch/x86/kernel/apic/apic.c",
		Old: `early_param("nolapic_timer", parse_nolapic_timer);
`,
		New: `early_param("nolapic_timer", parse_nolapic_timer);

/* Berth: the local APIC timer's input frequency, so that it is not calibrated. */
static int __init parse_lapic_timer_hz(char *arg)
{
	unsigned long hz;

	if (!arg || kstrtoul(arg, 0, &hz) || hz < HZ)
		return -EINVAL;
	lapic_timer_period = hz / HZ;
	return 0;
}
early_param("lapic_timer_hz", parse_lapic_timer_hz);
`,
	},
}
