package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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

// TestCRIMountPropagationBetweenAPodsContainers: mount propagation among
// the containers of a pod works as under runc. A mount a container makes
// in a Bidirectional volume (a FUSE sidecar mounting a bucket for the
// main container, say) reaches the pod's HostToContainer containers and
// not its None ones; a mount the host makes in a HostToContainer volume
// reaches the container. The one difference is the VM's boundary: a mount
// made in the guest stays in the guest (under runc the host sees it).
func TestCRIMountPropagationBetweenAPodsContainers(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	for _, handler := range []string{"runc", criHandler} {
		t.Run(handler, func(t *testing.T) {
			// CRI wants a Bidirectional source on a shared mount, as the
			// kubelet's directory is.
			vol := t.TempDir()
			if err := unix.Mount(vol, vol, "", unix.MS_BIND, ""); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unix.Unmount(vol, unix.MNT_DETACH) })
			if err := unix.Mount("", vol, "", unix.MS_SHARED, ""); err != nil {
				t.Fatal(err)
			}
			config := podConfig(t, "propagation-"+handler, nil)
			config.Linux.SecurityContext.Privileged = true
			pod := c.runPodConfig(t, config, handler)
			defer c.removePod(t, pod.id)
			withVolume := func(p cri.MountPropagation) func(*cri.ContainerConfig) {
				return func(cc *cri.ContainerConfig) {
					cc.Mounts = append(cc.Mounts, &cri.Mount{ContainerPath: "/vol", HostPath: vol, Propagation: p})
					cc.Linux.SecurityContext.Privileged = true
				}
			}
			ids := map[string]string{}
			for name, p := range map[string]cri.MountPropagation{
				"bidirectional":     cri.MountPropagation_PROPAGATION_BIDIRECTIONAL,
				"host-to-container": cri.MountPropagation_PROPAGATION_HOST_TO_CONTAINER,
				"none":              cri.MountPropagation_PROPAGATION_PRIVATE,
			} {
				ids[name], _ = c.createContainerWith(t, pod, name, withVolume(p), "sleep", "100000")
				c.startContainer(t, ids[name])
			}
			seen := func(id, file string) string {
				return c.execOut(t, id, "sh", "-c", "cat "+file+" 2>/dev/null || echo absent")
			}

			c.execOut(t, ids["bidirectional"], "sh", "-c", "mkdir -p /vol/in-pod && mount -t tmpfs pod /vol/in-pod && echo made-in-the-pod > /vol/in-pod/f")
			defer unix.Unmount(filepath.Join(vol, "in-pod"), unix.MNT_DETACH) // runc's propagates to the host
			for name, want := range map[string]string{"bidirectional": "made-in-the-pod", "host-to-container": "made-in-the-pod", "none": "absent"} {
				if got := seen(ids[name], "/vol/in-pod/f"); got != want {
					t.Errorf("the %s container reads %q from the Bidirectional container's mount, want %q", name, got, want)
				}
			}
			hostWants := map[string]string{"runc": "made-in-the-pod", criHandler: "absent"}[handler]
			b, err := os.ReadFile(filepath.Join(vol, "in-pod", "f"))
			if got := strings.TrimSpace(string(b)); (err == nil) != (hostWants != "absent") || (err == nil && got != hostWants) {
				t.Errorf("the host reads %q (%v) from the pod's mount, want %s", got, err, hostWants)
			}

			hostMount := filepath.Join(vol, "from-host")
			os.Mkdir(hostMount, 0o755)
			if err := unix.Mount("host", hostMount, "tmpfs", 0, ""); err != nil {
				t.Fatal(err)
			}
			defer unix.Unmount(hostMount, unix.MNT_DETACH)
			os.WriteFile(filepath.Join(hostMount, "f"), []byte("made-on-the-host"), 0o644)
			eventually(t, 10*time.Second, "the host's mount in the HostToContainer container", func() error {
				if got := seen(ids["host-to-container"], "/vol/from-host/f"); got != "made-on-the-host" {
					return fmt.Errorf("it reads %q", got)
				}
				return nil
			})
		})
	}
}
