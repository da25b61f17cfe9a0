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
		// The kernel poisons its freed init code (0xcc) with a byte-wise
		// `rep stosb`: 4096 slow stores a page, ~2.5 ms, and ~0.45 s of
		// every boot for the 780 KiB of init code the boot just ran
		// (measured by sampling the vCPU's RIP through QMP). 8-byte
		// stores of the same pattern are an eighth of the stores.
		Name: "poison-freed-pages-8-bytes-at-a-time",
		File: "mm/page_alloc.c",
		Old: `		if ((unsigned int)poison <= 0xFF)
			memset(direct_map_addr, poison, PAGE_SIZE);
`,
		New: `		if ((unsigned int)poison <= 0xFF)
			memset64(direct_map_addr, 0x0101010101010101ULL * (u8)poison,
				 PAGE_SIZE / 8);
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
