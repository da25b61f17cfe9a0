// Command containerd-shim-berth-v2 is Berth's containerd shim: runtime type
// io.containerd.berth.v2. containerd runs it once per pod; all logic lives
// in internal/shim.
package main

import (
	"context"

	"github.com/containerd/containerd/runtime/v2/shim"

	berthshim "github.com/berth-runtime/berth/internal/shim"
)

func main() {
	berthshim.Register()
	shim.RunManager(context.Background(), berthshim.NewManager(), berthshim.Options)
}
