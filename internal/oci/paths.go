package oci

import "path"

// GuestSharedDir is where the guest mounts the sandbox's virtio-fs share.
// The host puts each container's root file system at
// <share>/<container id>/rootfs, so the guest path is fixed by the id.
const GuestSharedDir = "/run/berth/shared"

// SharedFSTag is the virtio-fs tag of the sandbox share.
const SharedFSTag = "berthfs"

// GuestRootfs returns the guest path of a container's root file system.
func GuestRootfs(containerID string) string {
	return path.Join(GuestSharedDir, containerID, "rootfs")
}

// GuestPodShmDir holds one tmpfs per pod in the guest, bound at /dev/shm
// in every container of the pod. The agent mounts it on first use.
const GuestPodShmDir = "/run/berth/shm"

// GuestPodShm returns the guest path of a pod's shared /dev/shm.
func GuestPodShm(sandboxID string) string { return path.Join(GuestPodShmDir, sandboxID) }
