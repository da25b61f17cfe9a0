package hostcheck

import (
	"bufio"
	"fmt"
	"io"
	"sort"
	"strings"
)

// CgroupLayout is how the host mounts cgroups.
type CgroupLayout int

const (
	// CgroupNone: no cgroup file system is mounted.
	CgroupNone CgroupLayout = iota
	// CgroupV1: only v1 hierarchies (one per controller, or name=systemd).
	CgroupV1
	// CgroupV2: the unified hierarchy only, normally at /sys/fs/cgroup.
	CgroupV2
	// CgroupHybrid: v1 controller hierarchies plus a cgroup2 mount with
	// no controllers (systemd's "hybrid" mode, /sys/fs/cgroup/unified).
	CgroupHybrid
)

func (l CgroupLayout) String() string {
	switch l {
	case CgroupNone:
		return "none"
	case CgroupV1:
		return "v1"
	case CgroupV2:
		return "v2"
	case CgroupHybrid:
		return "hybrid"
	}
	return fmt.Sprintf("CgroupLayout(%d)", int(l))
}

// MarshalText encodes the layout as its name.
func (l CgroupLayout) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// CgroupInfo is what the mount table says about cgroups.
type CgroupInfo struct {
	Layout CgroupLayout
	// V2Mount is where cgroup2 is mounted ("" if it is not).
	V2Mount string
	// V1Controllers are the controllers with a v1 hierarchy, sorted
	// ("name=systemd" included).
	V1Controllers []string
}

// String is the detail berth check prints.
func (c CgroupInfo) String() string {
	switch c.Layout {
	case CgroupV2:
		return fmt.Sprintf("v2 (unified, %s)", c.V2Mount)
	case CgroupV1:
		return fmt.Sprintf("v1 (%s)", strings.Join(c.V1Controllers, ","))
	case CgroupHybrid:
		return fmt.Sprintf("hybrid (v1 %s; v2 at %s)", strings.Join(c.V1Controllers, ","), c.V2Mount)
	}
	return "no cgroup file system mounted"
}

// ParseCgroupMounts reads a mount table, either /proc/self/mountinfo or
// /proc/mounts (the format is told line by line), and classifies the
// cgroup layout. A v1 hierarchy counts only if it carries a controller or
// a name= (every v1 mount does; the check guards against odd tables).
func ParseCgroupMounts(r io.Reader) (CgroupInfo, error) {
	var info CgroupInfo
	seen := map[string]bool{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		mountPoint, fsType, opts, ok := splitMountLine(line)
		if !ok {
			return CgroupInfo{}, fmt.Errorf("malformed mount table line %q", line)
		}
		switch fsType {
		case "cgroup2":
			if info.V2Mount == "" || mountPoint == "/sys/fs/cgroup" {
				info.V2Mount = mountPoint
			}
		case "cgroup":
			for _, o := range strings.Split(opts, ",") {
				if isV1Controller(o) && !seen[o] {
					seen[o] = true
					info.V1Controllers = append(info.V1Controllers, o)
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return CgroupInfo{}, err
	}
	sort.Strings(info.V1Controllers)
	switch {
	case info.V2Mount != "" && len(info.V1Controllers) > 0:
		info.Layout = CgroupHybrid
	case info.V2Mount != "":
		info.Layout = CgroupV2
	case len(info.V1Controllers) > 0:
		info.Layout = CgroupV1
	default:
		info.Layout = CgroupNone
	}
	return info, nil
}

// splitMountLine returns the mount point, file system type and the options
// that name v1 controllers, for one line of mountinfo or of /proc/mounts.
//
// mountinfo: "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS"
// (proc(5)); the controllers are in SUPEROPTS.
// /proc/mounts: "SOURCE MOUNTPOINT FSTYPE OPTS DUMP PASS"; controllers in OPTS.
func splitMountLine(line string) (mountPoint, fsType, opts string, ok bool) {
	fields := strings.Fields(line)
	for i, f := range fields {
		if f == "-" && i >= 6 {
			if len(fields) < i+4 {
				return "", "", "", false
			}
			return unescapeMount(fields[4]), fields[i+1], fields[i+3], true
		}
	}
	if len(fields) < 4 {
		return "", "", "", false
	}
	return unescapeMount(fields[1]), fields[2], fields[3], true
}

// isV1Controller tells a controller (or name=) from a generic mount option.
func isV1Controller(opt string) bool {
	if strings.HasPrefix(opt, "name=") {
		return true
	}
	switch opt {
	case "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls",
		"net_prio", "blkio", "perf_event", "hugetlb", "pids", "rdma", "misc":
		return true
	}
	return false
}

// unescapeMount undoes the octal escapes (\040 for space) the kernel uses
// in mount tables.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
