package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestCRIPodContainersShareAVolumesSockets: two containers of a
// pod that mount one emptyDir see one file system in it, as under runc: a
// unix socket one container listens on takes the other's messages
// (sidecars talk this way: a mesh's SDS socket, an SQL proxy's, php-fpm's)
// and both see the same inode (so locks exclude too).
//
// Berth used to bind the volume into the share once per container, and
// the guest crossed each container's virtio-fs submount in that
// container's own mount namespace: two superblocks, two inodes per file,
// the socket refused the other container (busybox's logger, which does not
// report it, wrote nothing to syslogd's file).
func TestCRIPodContainersShareAVolumesSockets(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	for _, handler := range []string{"runc", criHandler} {
		t.Run(handler, func(t *testing.T) {
			vol := t.TempDir() // the kubelet's emptyDir on the host
			pod := c.runPodWith(t, "vol-share-"+handler, handler, nil)
			defer c.removePod(t, pod.id)
			withVolume := func(cc *cri.ContainerConfig) {
				cc.Mounts = append(cc.Mounts, &cri.Mount{ContainerPath: "/shared", HostPath: vol})
			}
			// syslogd follows /dev/log's symlink and listens on the socket
			// it points at.
			srv, _ := c.createContainerWith(t, pod, "syslogd", withVolume, "sh", "-c",
				"ln -sf /shared/log /dev/log; exec syslogd -n -O /shared/messages")
			c.startContainer(t, srv)
			cli, _ := c.createContainerWith(t, pod, "client", withVolume, "sleep", "100000")
			c.startContainer(t, cli)
			socket := filepath.Join(vol, "log")
			eventually(t, time.Minute, "syslogd's socket in the volume", func() error {
				_, err := os.Stat(socket)
				return err
			})

			c.execOut(t, cli, "sh", "-c", "ln -sf /shared/log /dev/log; logger -t berth-e2e hello-from-the-other-container")
			eventually(t, 10*time.Second, "the other container's message through syslogd's socket in the shared volume", func() error {
				b, _ := os.ReadFile(filepath.Join(vol, "messages"))
				if !strings.Contains(string(b), "berth-e2e: hello-from-the-other-container") {
					return fmt.Errorf("syslogd wrote %q", b)
				}
				return nil
			})
			same := func(id string) string { return c.execOut(t, id, "stat", "-c", "%d:%i", "/shared/log") }
			if a, b := same(srv), same(cli); a != b {
				t.Errorf("the socket is device:inode %s in one container and %s in the other; want one inode", a, b)
			}
		})
	}
}

// TestCtrDeletedContainersVolumeLeavesNoGuestMount: the guest holds a
// shared volume's submount while a container mounts it and lets go of it
// when the last such container is deleted, so containers restarted
// against a volume (a crash loop: a fresh bind from the host each time)
// do not pile up mounts in the guest.
func TestCtrDeletedContainersVolumeLeavesNoGuestMount(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	cfg := hostileConfig(t)
	vol := t.TempDir()
	const pod = "vol-release"
	mustCtr(t, "run", "-d", "--runtime", berthRuntime, "--runtime-config-path", cfg, busyboxImage, pod, "sleep", "1000")
	defer cleanupTask(t, pod)
	guestVolumeMounts := func() string {
		r := guestRoot(t, cfg, pod, pod, "$B grep -c ' /run/berth/shared/.volumes/' /proc/self/mountinfo")
		return strings.TrimSpace(r.stdout)
	}
	for i, id := range []string{"vol-release-1", "vol-release-2"} {
		mustCtr(t, "run", "-d", "--runtime", berthRuntime, "--runtime-config-path", cfg,
			"--annotation", "io.kubernetes.cri.sandbox-id="+pod, "--annotation", "io.kubernetes.cri.container-type=container",
			"--mount", "type=bind,src="+vol+",dst=/vol,options=rbind:rw", busyboxImage, id, "sh", "-c", fmt.Sprintf("echo %d > /vol/run; sleep 1000", i))
		eventually(t, 30*time.Second, "the container writes to its volume", func() error {
			if b, _ := os.ReadFile(filepath.Join(vol, "run")); strings.TrimSpace(string(b)) != fmt.Sprint(i) {
				return fmt.Errorf("volume holds %q", b)
			}
			return nil
		})
		if n := guestVolumeMounts(); n != "1" {
			t.Errorf("container %d running: %s shared-volume mounts in the agent's namespace, want 1", i, n)
		}
		cleanupTask(t, id)
		if n := guestVolumeMounts(); n != "0" {
			t.Errorf("container %d deleted: %s shared-volume mounts in the agent's namespace, want 0", i, n)
		}
	}
}
