// Command containerd-shim-berth-v2 is Berth's containerd shim: runtime type
// io.containerd.berth.v2. containerd runs it once per pod; all logic lives
// in internal/shim.
package main

import (
	"context"
	"os"

	"github.com/containerd/containerd/runtime/v2/shim"

	berthshim "github.com/berth-runtime/berth/internal/shim"
)

func main() {
	if berthshim.InfoRequested(os.Args[1:]) {
		os.Exit(berthshim.RunInfo(os.Stdin, os.Stdout, os.Stderr))
	}
	berthshim.Register()
	shim.RunManager(context.Background(), berthshim.NewManager(), berthshim.Options)
}
