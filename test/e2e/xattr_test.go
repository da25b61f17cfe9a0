package e2e

import (
	"encoding/binary"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestCRIFileCapabilitiesWorkAsUnderRunc: a binary with a file capability
// (security.capability, what `setcap cap_net_raw+ep` writes) gives it to
// the non-root process that runs it, as under runc: an image's non-root
// nginx binding port 80 with cap_net_bind_service, iputils' ping with
// cap_net_raw. Berth's virtio-fs served no extended attributes, so such a
// binary ran with no capability at all.
func TestCRIFileCapabilitiesWorkAsUnderRunc(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	vol := t.TempDir()
	capped := filepath.Join(vol, "busybox")
	if err := copyFileForTest(filepath.Join(env.rootfs, "bin", "busybox"), capped, 0o755); err != nil {
		t.Fatal(err)
	}
	// struct vfs_cap_data, revision 2, effective: permitted CAP_NET_RAW.
	capData := make([]byte, 20)
	binary.LittleEndian.PutUint32(capData[0:], 0x02000000|0x1)
	binary.LittleEndian.PutUint32(capData[4:], 1<<unix.CAP_NET_RAW)
	if err := unix.Setxattr(capped, "security.capability", capData, 0); err != nil {
		t.Fatalf("setcap on the host: %v", err)
	}
	for _, handler := range []string{"runc", criHandler} {
		t.Run(handler, func(t *testing.T) {
			pod := c.runPodWith(t, "filecaps-"+handler, handler, nil)
			defer c.removePod(t, pod.id)
			id, _ := c.createContainerWith(t, pod, "filecaps", func(cc *cri.ContainerConfig) {
				cc.Mounts = append(cc.Mounts, &cri.Mount{ContainerPath: "/vol", HostPath: vol, Readonly: true})
				cc.Linux.SecurityContext.RunAsUser = &cri.Int64Value{Value: 1000}
			}, "sleep", "100000")
			c.startContainer(t, id)
			// busybox runs the applet its name says: grep, with the
			// capability the file gives it.
			got := c.execOut(t, id, "sh", "-c", "ln -s /vol/busybox /tmp/grep && /tmp/grep CapEff /proc/self/status; id -u")
			if want := "CapEff:\t0000000000002000\n1000"; got != want {
				t.Errorf("a uid-1000 process running the cap_net_raw binary: %q, want %q", got, want)
			}
		})
	}
}
