package hostcheck

import (
	"fmt"
	"strings"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/guest"
)

// checkGuestKernel says which kernel sandboxes boot and whether its
// configuration has every feature Berth needs (guest.KernelFeatures), as
// the configuration kept next to the kernel states it, not assumed from
// its name.
func checkGuestKernel(cfg *config.Config, k GuestKernel) Finding {
	f := Finding{Check: CheckKernel}
	var missing, optional []string
	for _, s := range guest.CheckKernelFeatures(k.Config, k.Modules) {
		if s.OK() {
			continue
		}
		item := fmt.Sprintf("%s (%s)", s.Name, strings.Join(s.Missing, ", "))
		if s.Required {
			missing = append(missing, item)
		} else {
			optional = append(optional, item)
		}
	}
	f.Detail = fmt.Sprintf("%s, %s kernel from %s", k.Release, k.Source, k.Package)
	if want := cfg.Guest.KernelSource; k.Source != "" && k.Source != want {
		f.Status = Warn
		f.Detail += fmt.Sprintf("; guest.kernel_source is %q but the image holds the %s kernel", want, k.Source)
		f.Fix = "run `berth guest build`"
	}
	switch {
	case len(missing) > 0:
		return fail(f, f.Detail+"; lacks "+strings.Join(missing, "; "),
			`rebuild the guest image (berth guest build --force) from a kernel that has them, e.g. guest.kernel_source = "berth"`)
	case len(optional) > 0:
		f.Status = Warn
		f.Detail += "; has every required feature but lacks " + strings.Join(optional, "; ")
		if f.Fix == "" {
			f.Fix = `containers that use these fail in the guest; guest.kernel_source = "berth" has them`
		}
	default:
		f.Detail += fmt.Sprintf("; has all %d features Berth checks for", len(guest.KernelFeatures))
	}
	return f
}
