package oci

import (
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// A container process's resource limits, where the spec does not set
// them, are what runc's would inherit: runc's process runs with the
// limits containerd and the shim run with (the host's LimitNOFILE of the
// containerd unit, its RLIMIT_NPROC, RLIMIT_MEMLOCK, ...), and so does
// Berth's shim. Left to the guest, a container would inherit the agent's
// instead, the guest kernel's defaults sized for a 256 MiB VM: 937
// processes per user (a JVM's threads count), 1024 open files. So the
// host fills in, for the container's init and every exec, each limit the
// spec leaves out with the shim's own, as runc's processes would have it.

// guestNrOpen is the guest kernel's fs.nr_open (Linux's default, 2^20):
// RLIMIT_NOFILE cannot be set above it, even by root. A host whose own
// nr_open is higher (LimitNOFILE=infinity on such a host gives 2^30) would
// otherwise make every create fail; the guest gets at most this.
const guestNrOpen = 1 << 20

// rlimitNames are the OCI names of the kernel's resource limits: the ones
// a process inherits, and every one a spec may set.
var rlimitNames = []struct {
	name     string
	resource int
}{
	{"RLIMIT_AS", unix.RLIMIT_AS}, {"RLIMIT_CORE", unix.RLIMIT_CORE}, {"RLIMIT_CPU", unix.RLIMIT_CPU},
	{"RLIMIT_DATA", unix.RLIMIT_DATA}, {"RLIMIT_FSIZE", unix.RLIMIT_FSIZE}, {"RLIMIT_LOCKS", unix.RLIMIT_LOCKS},
	{"RLIMIT_MEMLOCK", unix.RLIMIT_MEMLOCK}, {"RLIMIT_MSGQUEUE", unix.RLIMIT_MSGQUEUE}, {"RLIMIT_NICE", unix.RLIMIT_NICE},
	{"RLIMIT_NOFILE", unix.RLIMIT_NOFILE}, {"RLIMIT_NPROC", unix.RLIMIT_NPROC}, {"RLIMIT_RSS", unix.RLIMIT_RSS},
	{"RLIMIT_RTPRIO", unix.RLIMIT_RTPRIO}, {"RLIMIT_RTTIME", unix.RLIMIT_RTTIME}, {"RLIMIT_SIGPENDING", unix.RLIMIT_SIGPENDING},
	{"RLIMIT_STACK", unix.RLIMIT_STACK},
}

// RlimitResource returns the kernel's resource number for an OCI rlimit
// type ("RLIMIT_NOFILE"), false for a name it does not know.
func RlimitResource(name string) (int, bool) {
	for _, r := range rlimitNames {
		if r.name == name {
			return r.resource, true
		}
	}
	return 0, false
}

// OwnRlimits returns this process's resource limits as OCI rlimits, the
// ones a container would inherit from it, RLIMIT_NOFILE capped at what
// the guest kernel allows. (Go raises its own soft RLIMIT_NOFILE to the
// hard limit at start and gives children the original back; runc's
// processes get that original, Berth's the raised one: a containerd
// started with a soft limit below its hard one gives Berth's containers
// the hard one as both.)
func OwnRlimits() []specs.POSIXRlimit {
	var out []specs.POSIXRlimit
	for _, r := range rlimitNames {
		var lim unix.Rlimit
		if unix.Getrlimit(r.resource, &lim) != nil {
			continue
		}
		if r.resource == unix.RLIMIT_NOFILE {
			lim.Cur, lim.Max = min(lim.Cur, guestNrOpen), min(lim.Max, guestNrOpen)
		}
		out = append(out, specs.POSIXRlimit{Type: r.name, Hard: lim.Max, Soft: lim.Cur})
	}
	return out
}

// InheritRlimits returns p's rlimits with each of inherited that p does
// not set added, as the process would inherit them.
func InheritRlimits(set, inherited []specs.POSIXRlimit) []specs.POSIXRlimit {
	out := slices.Clone(set)
	for _, r := range inherited {
		if !slices.ContainsFunc(set, func(s specs.POSIXRlimit) bool { return s.Type == r.Type }) {
			out = append(out, r)
		}
	}
	return out
}
