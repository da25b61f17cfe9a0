// Package hostcheck answers "can this host run Berth, and if not, why not"
// with findings as data. berth check prints them; other code may use single
// facts (the cgroup layout, whether vsock exists).
//
// Probes only look: they read files under /proc and /dev, stat binaries and
// run `qemu-system-x86_64 -version`. None creates, loads or changes
// anything on the host, with one exception: the accelerator probe boots a
// throw-away QEMU (always killed) and, when run_dir already exists, goes
// through qemu.CachedAccel, which shares its verdict with the shim in
// run_dir/accel.json. When run_dir does not exist the probe is not cached,
// because writing the cache would create run_dir.
//
// Each probe is a small function over an env (the host seen through a few
// function values), so tests run every probe against a fake host; the text
// parsers read from io.Reader and are tested on canned text.
package hostcheck

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/berth-runtime/berth/internal/config"
)

// Status grades a finding.
type Status int

const (
	// OK means the check passed; Detail says what was found.
	OK Status = iota
	// Warn means Berth can run, but something is degraded or unusual.
	Warn
	// Fail means Berth cannot run on this host until Fix is applied.
	Fail
)

// String is the label berth check prints: "ok", "warn" or "FAIL".
func (s Status) String() string {
	switch s {
	case OK:
		return "ok"
	case Warn:
		return "warn"
	case Fail:
		return "FAIL"
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// MarshalText encodes the status as "ok", "warn" or "fail" (for --json).
func (s Status) MarshalText() ([]byte, error) {
	switch s {
	case OK, Warn, Fail:
		return []byte(strings.ToLower(s.String())), nil
	}
	return nil, fmt.Errorf("hostcheck: invalid status %d", int(s))
}

// UnmarshalText is the inverse of MarshalText.
func (s *Status) UnmarshalText(b []byte) error {
	switch string(b) {
	case "ok":
		*s = OK
	case "warn":
		*s = Warn
	case "fail":
		*s = Fail
	default:
		return fmt.Errorf("hostcheck: unknown status %q", b)
	}
	return nil
}

// Finding is the outcome of one check.
type Finding struct {
	// Check names what was looked at ("qemu", "accelerator", ...).
	Check string `json:"check"`
	// Status grades it.
	Status Status `json:"status"`
	// Detail says what was found, in plain words.
	Detail string `json:"detail"`
	// Fix says what to do; set for Warn and Fail.
	Fix string `json:"fix,omitempty"`
}

// Check names, in the order Run reports them.
const (
	CheckQEMU       = "qemu"
	CheckAccel      = "accelerator"
	CheckChannel    = "channel"
	CheckVirtiofsd  = "virtiofsd"
	CheckGuestImage = "guest image"
	CheckKernel     = "guest kernel"
	CheckCgroups    = "cgroups"
	CheckRunDir     = "run_dir"
	CheckConfig     = "config" // for callers that report a config error as a finding
)

// Report is the outcome of Run.
type Report struct {
	Findings []Finding `json:"findings"`
	// Accel is the accelerator sandboxes will use ("kvm" or "tcg"), or ""
	// when it could not be determined.
	Accel string `json:"accel,omitempty"`
}

// OK reports whether no finding failed.
func (r Report) OK() bool { return r.Problems() == 0 }

// Problems counts the failed findings.
func (r Report) Problems() int {
	n := 0
	for _, f := range r.Findings {
		if f.Status == Fail {
			n++
		}
	}
	return n
}

// MarshalJSON adds "ok" so that scripts need not count failures.
func (r Report) MarshalJSON() ([]byte, error) {
	type plain Report
	return json.Marshal(struct {
		OK bool `json:"ok"`
		plain
	}{r.OK(), plain(r)})
}

// Run runs every check against the host, for a validated configuration.
func Run(ctx context.Context, cfg *config.Config) Report {
	return run(ctx, cfg, hostEnv())
}

func run(ctx context.Context, cfg *config.Config, e env) Report {
	var r Report
	q := checkQEMU(ctx, e, cfg.Hypervisor.Path)
	a, accel := checkAccel(ctx, e, cfg, q.Status != Fail)
	r.Accel = accel
	r.Findings = append(r.Findings, q, a,
		checkChannel(e, cfg.Agent.Transport),
		checkVirtiofsd(e, cfg.Hypervisor.VirtiofsdPath),
		checkGuestFile(e, "kernel", "guest.kernel", cfg.ResolvedKernel()),
		checkGuestRoot(e, cfg),
		checkCgroups(e, cfg.Cgroup),
		checkRunDir(e, cfg.RunDir),
		checkNetwork(e, cfg),
		checkConfinement(e, cfg),
		checkFirmware(e, cfg),
	)
	if k, err := e.guestKernel(cfg); err == nil {
		r.Findings = append(r.Findings, checkGuestKernel(cfg, k), checkMemoryHotplug(cfg.ResolvedMemoryHotplug(), k), checkDevices(e, cfg, &k))
	} else {
		r.Findings = append(r.Findings, Finding{Check: CheckMemoryHotplug, Status: Warn,
			Detail: "guest kernel requirements not checked: " + err.Error(), Fix: "run `berth guest build`"},
			checkDevices(e, cfg, nil))
	}
	return r
}
