package hostcheck

import (
	"strings"
	"testing"

	"github.com/berth-runtime/berth/internal/config"
)

func TestCheckConfinement(t *testing.T) {
	h := goodHost()
	cfg := loadedDefaults(t)
	cfg.Agent.Transport = config.TransportVirtioSerial
	f := checkConfinement(h.env(), cfg)
	if f.Status != OK || !strings.Contains(f.Detail, "-sandbox on,obsolete=deny") || !strings.Contains(f.Detail, "uid of its own") {
		t.Errorf("default confinement: %v %s", f.Status, f.Detail)
	}

	cfg.Agent.Transport = config.TransportAuto // goodHost has vhost-vsock
	if f := checkConfinement(h.env(), cfg); f.Status != OK || !strings.Contains(f.Detail, "as root (the vsock transport") {
		t.Errorf("vsock: %v %s", f.Status, f.Detail)
	}

	cfg.Agent.Transport = config.TransportVirtioSerial
	cfg.Hypervisor.RunAsRoot = true
	if f := checkConfinement(h.env(), cfg); f.Status != Warn || !strings.Contains(f.Detail, "hypervisor.run_as_root = true") {
		t.Errorf("run_as_root: %v %s", f.Status, f.Detail)
	}

	cfg.Hypervisor.RunAsRoot = false
	cfg.RunDir = "/srv/private/berth"
	h.files["/srv/private"] = fakeFile{dir: true, perm: 0o700}
	if f := checkConfinement(h.env(), cfg); f.Status != Fail || !strings.Contains(f.Detail, "/srv/private (mode 0700)") || !strings.Contains(f.Fix, "chmod o+x /srv/private") {
		t.Errorf("private run_dir parent: %v %s — %s", f.Status, f.Detail, f.Fix)
	}
}
