package sandbox

import "fmt"

// A guest kernel sizes its system-wide tables at boot from the memory it
// boots with, and never again: a 256 MiB VM allows 1875 threads in all
// (kernel.threads-max) and 23933 open files (fs.file-max), however much
// memory is hot-plugged later, and a kernel built with small base tables
// allows 4096 pids. A JVM of 2000 threads, or a database with its files
// open, then fails in a pod whose memory limit is gigabytes, where runc's
// container sees the host's tables. So the guest's tables are sized, on
// its command line (sysctl.*, Linux 5.8+), by the kernel's own formulas
// for the most memory the VM can have, and pid_max is the 64-bit maximum
// that systemd sets on hosts. Kernel memory spent on threads and files
// is charged to the containers' memory cgroups, so a larger table grants
// no memory the containers do not have.

// guestThreadSize is x86_64's and arm64's kernel stack (THREAD_SIZE).
const guestThreadSize = 16 << 10

// guestPidMax is PID_MAX_LIMIT on 64-bit kernels (a kernel built with
// small base tables refuses it and keeps its own; the guest boots anyway).
const guestPidMax = 4 << 20

// kernelTableParams returns the guest command line's table sizes for a VM
// that can grow to maxMiB: threads-max as fork_init computes it (an eighth
// of memory in kernel stacks) and file-max as files_maxfiles_init does
// (one file per 10 KiB).
func kernelTableParams(maxMiB int) string {
	bytes := uint64(maxMiB) << 20
	threads := max(bytes/(8*guestThreadSize), 20)
	files := max(bytes>>10/10, 8192)
	return fmt.Sprintf("sysctl.kernel.threads-max=%d sysctl.fs.file-max=%d sysctl.kernel.pid_max=%d", threads, files, guestPidMax)
}
