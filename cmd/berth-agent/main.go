// Command berth-agent is the guest side of Berth: PID 1 of the guest's
// initramfs, and the agent service that runs containers for the host.
//
// One static binary plays three roles, chosen by how it is started:
//
//	PID 1            early mounts, module loading, reaping (agent.RunInit)
//	berth-agent serve   the ttrpc agent service (agent.Serve)
//	berth-agent init    runc's container init (libcontainer.Init), which
//	                 libcontainer starts by re-executing /proc/self/exe
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/opencontainers/runc/libcontainer"
	// nsenter's C constructor joins namespaces before the Go runtime starts
	// when this binary runs as runc's init.
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
	// Device cgroup rules need the devices controller implementation.
	_ "github.com/opencontainers/cgroups/devices"

	"github.com/berth-runtime/berth/internal/agent"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		libcontainer.Init()
		return
	}
	if os.Getpid() == 1 {
		agent.RunInit()
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "serve" {
		if err := agent.Serve(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, "berth-agent:", err)
			os.Exit(1)
		}
		return
	}
	fmt.Fprintln(os.Stderr, "berth-agent runs inside a Berth guest as PID 1; it is not a host command")
	os.Exit(2)
}
