// Command berth-agent is the guest side of Berth: PID 1 of the guest's
// initramfs, and the agent service that runs containers for the host.
//
// One static binary plays three roles, chosen by how it is started:
//
//	PID 1            reaping orphans, in C before the Go runtime (package pid1)
//	PID 1's fork     early mounts, module loading and the ttrpc agent
//	                 service (agent.RunService, agent.Serve)
//	berth-agent init    runc's container init (libcontainer.Init), which
//	                 libcontainer starts by re-executing /proc/self/exe
//	berth-pod-holder a CRI pod sandbox's process, in C before the Go
//	                 runtime (package podholder)
package main

import (
	"fmt"
	"os"

	"github.com/opencontainers/runc/libcontainer"
	// nsenter's C constructor joins namespaces before the Go runtime starts
	// when this binary runs as runc's init.
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
	// Device cgroup rules need the devices controller implementation.
	_ "github.com/opencontainers/cgroups/devices"

	"github.com/berth-runtime/berth/internal/agent"
	"github.com/berth-runtime/berth/internal/agent/pid1"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		libcontainer.Init()
		return
	}
	if pid1.IsService() {
		agent.RunService(agent.Serve) // never returns
	}
	fmt.Fprintln(os.Stderr, "berth-agent runs inside a Berth guest as PID 1; it is not a host command")
	os.Exit(2)
}
