// Package pid1 splits the guest's first process in two before the Go
// runtime starts (pid1.c): PID 1 stays in C and reaps orphans until the
// agent service exits, then powers the VM off; the service is the forked
// child, and the only process that runs Go. A program that is the guest's
// PID 1 imports this package and calls IsService.
package pid1

// extern int berth_pid1_service;
import "C"

// IsService reports whether this process is the agent service that PID 1
// forked at start.
func IsService() bool { return C.berth_pid1_service != 0 }
