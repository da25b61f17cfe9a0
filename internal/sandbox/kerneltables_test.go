package sandbox

import "testing"

// TestGuestKernelTablesSizedForTheLargestMemory: the kernel's own formulas
// for the VM's largest memory (16 GiB: 131072 threads, as fork_init gives
// a 16 GiB machine), with its floors for a tiny one.
func TestGuestKernelTablesSizedForTheLargestMemory(t *testing.T) {
	for _, c := range []struct {
		maxMiB int
		want   string
	}{
		{16384, "sysctl.kernel.threads-max=131072 sysctl.fs.file-max=1677721 sysctl.kernel.pid_max=4194304"},
		{256, "sysctl.kernel.threads-max=2048 sysctl.fs.file-max=26214 sysctl.kernel.pid_max=4194304"},
		{1, "sysctl.kernel.threads-max=20 sysctl.fs.file-max=8192 sysctl.kernel.pid_max=4194304"},
	} {
		if got := kernelTableParams(c.maxMiB); got != c.want {
			t.Errorf("kernelTableParams(%d) = %q, want %q", c.maxMiB, got, c.want)
		}
	}
}
