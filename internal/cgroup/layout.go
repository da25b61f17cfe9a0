package cgroup

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Layout is how the host mounts cgroups.
type Layout string

// Layouts. The strings are what the configuration's host facts and
// berth check print.
const (
	LayoutNone   Layout = "none"
	LayoutV1     Layout = "v1"
	LayoutV2     Layout = "v2"
	LayoutHybrid Layout = "hybrid"
)

// Host is what Detect learns about the host's cgroups.
type Host struct {
	Layout Layout
	// V2Mount is where cgroup2 is mounted, "" if it is not.
	V2Mount string
	// V1Mounts maps each v1 controller to its hierarchy's mount point
	// ("memory" -> "/sys/fs/cgroup/memory").
	V1Mounts map[string]string
	// Systemd is true when PID 1 is systemd.
	Systemd bool
}

// v1Controllers are the controllers a sandbox cgroup uses on v1. memory
// is required; the others are used when mounted.
var v1Controllers = []string{"memory", "cpu", "cpuacct", "pids"}

// Detect reads the host's mount table and PID 1's name.
func Detect() (Host, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return Host{}, fmt.Errorf("detect cgroup layout: %w", err)
	}
	defer f.Close()
	h, err := ParseMountinfo(f)
	if err != nil {
		return Host{}, fmt.Errorf("detect cgroup layout: %w", err)
	}
	comm, _ := os.ReadFile("/proc/1/comm")
	h.Systemd = strings.TrimSpace(string(comm)) == "systemd"
	return h, nil
}

// ParseMountinfo classifies the cgroup layout of a /proc/self/mountinfo
// table. Systemd is left false: the mount table does not say.
func ParseMountinfo(r io.Reader) (Host, error) {
	h := Host{V1Mounts: map[string]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		// "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS"
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || len(f) < sep+4 {
			return Host{}, fmt.Errorf("malformed mountinfo line %q", sc.Text())
		}
		mnt, fsType, super := unescape(f[4]), f[sep+1], f[sep+3]
		switch fsType {
		case "cgroup2":
			if h.V2Mount == "" || mnt == "/sys/fs/cgroup" {
				h.V2Mount = mnt
			}
		case "cgroup":
			for _, o := range strings.Split(super, ",") {
				for _, c := range v1Controllers {
					if o == c {
						if _, dup := h.V1Mounts[c]; !dup {
							h.V1Mounts[c] = mnt
						}
					}
				}
				if strings.HasPrefix(o, "name=") {
					h.V1Mounts[o] = mnt
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return Host{}, err
	}
	switch {
	case h.V2Mount != "" && len(h.V1Mounts) > 0:
		h.Layout = LayoutHybrid
	case h.V2Mount != "":
		h.Layout = LayoutV2
	case len(h.V1Mounts) > 0:
		h.Layout = LayoutV1
	default:
		h.Layout = LayoutNone
	}
	return h, nil
}

// V1Root is the directory holding the v1 hierarchies (the parent of the
// memory controller's mount), "" when memory has no v1 hierarchy.
func (h Host) V1Root() string {
	if m, ok := h.V1Mounts["memory"]; ok {
		return filepath.Dir(m)
	}
	return ""
}

// String is the one-line summary berth check and logs print.
func (h Host) String() string {
	var v1 []string
	for c := range h.V1Mounts {
		v1 = append(v1, c)
	}
	sort.Strings(v1)
	s := string(h.Layout)
	if len(v1) > 0 {
		s += " v1:" + strings.Join(v1, ",")
	}
	if h.V2Mount != "" {
		s += " v2:" + h.V2Mount
	}
	if h.Systemd {
		s += " systemd"
	}
	return s
}

func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			o := s[i+1 : i+4]
			if o[0] >= '0' && o[0] <= '3' && o[1] >= '0' && o[1] <= '7' && o[2] >= '0' && o[2] <= '7' {
				b.WriteByte((o[0]-'0')<<6 | (o[1]-'0')<<3 | (o[2] - '0'))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
