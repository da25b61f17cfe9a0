package cgroup

import (
	"strings"
	"testing"
)

// Canned mount tables, trimmed from real hosts.
const (
	mountinfoV2 = `22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
30 26 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`
	// systemd's hybrid mode (Debian 10), and this project's test hosts.
	mountinfoHybrid = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`
	// v1 with cpu and cpuacct in one hierarchy.
	mountinfoV1 = `24 19 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
28 24 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
29 24 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
`
	mountinfoNone = `22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
`
)

func TestParseMountinfo(t *testing.T) {
	for _, tc := range []struct {
		name, table string
		layout      Layout
		v2, memory  string
		v1Root      string
	}{
		{"v2", mountinfoV2, LayoutV2, "/sys/fs/cgroup", "", ""},
		{"hybrid", mountinfoHybrid, LayoutHybrid, "/sys/fs/cgroup/unified", "/sys/fs/cgroup/memory", "/sys/fs/cgroup"},
		{"v1", mountinfoV1, LayoutV1, "", "/sys/fs/cgroup/memory", "/sys/fs/cgroup"},
		{"none", mountinfoNone, LayoutNone, "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := ParseMountinfo(strings.NewReader(tc.table))
			if err != nil {
				t.Fatal(err)
			}
			if h.Layout != tc.layout || h.V2Mount != tc.v2 || h.V1Mounts["memory"] != tc.memory || h.V1Root() != tc.v1Root {
				t.Errorf("got %+v (v1 root %q)", h, h.V1Root())
			}
		})
	}
	if h, _ := ParseMountinfo(strings.NewReader(mountinfoV1)); h.V1Mounts["cpu"] != "/sys/fs/cgroup/cpu,cpuacct" || h.V1Mounts["cpuacct"] != "/sys/fs/cgroup/cpu,cpuacct" {
		t.Errorf("combined cpu,cpuacct hierarchy: %v", h.V1Mounts)
	}
	if _, err := ParseMountinfo(strings.NewReader("1 2 3\n")); err == nil {
		t.Error("a malformed line parsed")
	}
}

func TestNewManagerRefusesWhatCannotWork(t *testing.T) {
	hybrid, _ := ParseMountinfo(strings.NewReader(mountinfoHybrid))
	v2, _ := ParseMountinfo(strings.NewReader(mountinfoV2))
	none, _ := ParseMountinfo(strings.NewReader(mountinfoNone))
	for _, tc := range []struct {
		name string
		opts Options
		want string // "" = a Manager
	}{
		{"cgroupfs hybrid", Options{Driver: DriverCgroupfs, Host: hybrid}, ""},
		{"cgroupfs v2", Options{Driver: DriverCgroupfs, Host: v2}, ""},
		{"cgroupfs none", Options{Driver: DriverCgroupfs, Host: none}, "no cgroup file system"},
		{"systemd not running", Options{Driver: DriverSystemd, Host: v2}, "systemd as PID 1"},
		{"systemd hybrid", Options{Driver: DriverSystemd, Host: withSystemd(hybrid)}, "cgroup v2 hosts only"},
		{"systemd v2", Options{Driver: DriverSystemd, Host: withSystemd(v2)}, ""},
		{"none", Options{Driver: DriverNone, Host: none}, ""},
		{"unknown", Options{Driver: "lxcfs", Host: v2}, "lxcfs"},
	} {
		m, err := NewManager(tc.opts)
		switch {
		case tc.want == "" && (err != nil || m == nil):
			t.Errorf("%s: NewManager = %v, %v; want a manager", tc.name, m, err)
		case tc.want != "" && (err == nil || m != nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: NewManager = %v, %v; want an error saying %q", tc.name, m, err, tc.want)
		}
	}
}

func withSystemd(h Host) Host { h.Systemd = true; return h }

func TestParseSystemdPath(t *testing.T) {
	slice, unit, err := ParseSystemdPath("berth.slice:berth:abc")
	if err != nil || slice != "berth.slice" || unit != "berth-abc.scope" {
		t.Errorf("got %q %q %v", slice, unit, err)
	}
	if _, _, err := ParseSystemdPath("/berth/abc"); err == nil {
		t.Error("a cgroupfs path parsed as a systemd one")
	}
	if got := sliceDir("kubepods-besteffort.slice"); got != "kubepods.slice/kubepods-besteffort.slice" {
		t.Errorf("sliceDir = %q", got)
	}
}

func TestSharesToWeight(t *testing.T) {
	for shares, want := range map[uint64]uint64{2: 1, 1024: 39, 262144: 10000} {
		if got := sharesToWeight(shares); got != want {
			t.Errorf("sharesToWeight(%d) = %d, want %d", shares, got, want)
		}
	}
}
