package hostcheck

import (
	"reflect"
	"strings"
	"testing"
)

// Canned mount tables, trimmed from real hosts.
const (
	mountinfoV2 = `22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
25 22 0:23 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
30 26 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
31 26 0:27 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:5 - pstore pstore rw
`
	// Debian 10 style: systemd's hybrid mode.
	mountinfoHybrid = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`
	// systemd legacy mode / non-systemd v1 host; one combined hierarchy.
	mountinfoV1 = `24 19 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
25 24 0:23 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,name=systemd
28 24 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
29 24 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
30 24 0:28 / /sys/fs/cgroup/blkio rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,blkio
`
	procMountsV2 = `/dev/vda1 / ext4 rw,relatime 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0
`
	procMountsHybrid = `tmpfs /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,mode=755 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,nosuid,nodev,noexec,relatime,xattr,name=systemd 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
`
	procMountsV1 = `cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
`
	// Optional fields (shared:, master:) vary in number; "-" ends them.
	mountinfoManyOptional = `30 26 0:26 / /sys/fs/cgroup rw,relatime shared:4 master:1 propagate_from:2 - cgroup2 cgroup2 rw
`
	mountinfoNone = `22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
`
	// Space in a mount point is escaped as \040.
	mountinfoEscaped = `30 26 0:26 / /mnt/my\040cgroup rw,relatime - cgroup2 none rw
`
)

func TestParseCgroupMounts(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     CgroupInfo
		str      string
	}{
		{"mountinfo v2", mountinfoV2, CgroupInfo{Layout: CgroupV2, V2Mount: "/sys/fs/cgroup"}, "v2 (unified, /sys/fs/cgroup)"},
		{"mountinfo hybrid", mountinfoHybrid, CgroupInfo{Layout: CgroupHybrid, V2Mount: "/sys/fs/cgroup/unified",
			V1Controllers: []string{"cpu", "cpuacct", "memory", "name=systemd", "pids"}}, "hybrid (v1 cpu,cpuacct,memory,name=systemd,pids; v2 at /sys/fs/cgroup/unified)"},
		{"mountinfo v1", mountinfoV1, CgroupInfo{Layout: CgroupV1,
			V1Controllers: []string{"blkio", "cpu", "cpuacct", "memory", "name=systemd"}}, "v1 (blkio,cpu,cpuacct,memory,name=systemd)"},
		{"proc mounts v2", procMountsV2, CgroupInfo{Layout: CgroupV2, V2Mount: "/sys/fs/cgroup"}, ""},
		{"proc mounts hybrid", procMountsHybrid, CgroupInfo{Layout: CgroupHybrid, V2Mount: "/sys/fs/cgroup/unified",
			V1Controllers: []string{"memory", "name=systemd"}}, ""},
		{"proc mounts v1", procMountsV1, CgroupInfo{Layout: CgroupV1, V1Controllers: []string{"cpu", "cpuacct", "memory"}}, ""},
		{"optional fields", mountinfoManyOptional, CgroupInfo{Layout: CgroupV2, V2Mount: "/sys/fs/cgroup"}, ""},
		{"none", mountinfoNone, CgroupInfo{Layout: CgroupNone}, "no cgroup file system mounted"},
		{"empty", "", CgroupInfo{Layout: CgroupNone}, ""},
		{"escaped", mountinfoEscaped, CgroupInfo{Layout: CgroupV2, V2Mount: "/mnt/my cgroup"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseCgroupMounts(strings.NewReader(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
			if tc.str != "" && got.String() != tc.str {
				t.Errorf("String() = %q, want %q", got.String(), tc.str)
			}
		})
	}
}

func TestParseCgroupMountsMalformed(t *testing.T) {
	for _, in := range []string{"garbage\n", "1 2 3 4 5 6 - cgroup2\n"} {
		if _, err := ParseCgroupMounts(strings.NewReader(in)); err == nil {
			t.Errorf("ParseCgroupMounts(%q) succeeded", in)
		}
	}
}

func TestIsSystemd(t *testing.T) {
	for in, want := range map[string]bool{"systemd\n": true, "systemd": true, "init\n": false, "tini": false, "": false} {
		if got := IsSystemd(in); got != want {
			t.Errorf("IsSystemd(%q) = %v", in, got)
		}
	}
}
