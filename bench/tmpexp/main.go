package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/oci"
	"github.com/berth-runtime/berth/internal/qemu"
	"github.com/berth-runtime/berth/internal/sandbox"
)

func main() {
	logrus.SetLevel(logrus.ErrorLevel)
	cfg, err := config.Load("/tmp/bw/q35.toml", config.Overrides{})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	rootfs, _ := filepath.Abs("bin/rootfs-busybox")
	for i := 0; i < 6; i++ {
		t0 := time.Now()
		sb, err := sandbox.Create(ctx, cfg, sandbox.Options{ID: fmt.Sprintf("exp%d", i), Accel: qemu.TCG})
		if err != nil {
			panic(err)
		}
		t1 := time.Now()
		spec := oci.DefaultSpec(rootfs, oci.ProcessOptions{Args: []string{"/bin/true"}})
		p, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{ID: "main", Spec: spec, RootfsDir: rootfs})
		if err != nil {
			panic(err)
		}
		t2 := time.Now()
		p.Start(ctx)
		p.Wait(ctx)
		t3 := time.Now()
		sb.DeleteContainer(ctx, "main")
		sb.Destroy(ctx)
		t4 := time.Now()
		c0 := time.Now()
		out, err := exec.Command(os.Args[1], "--config", "/tmp/bw/q35.toml", "run", "--rootfs", rootfs, "--", "/bin/true").CombinedOutput()
		if err != nil {
			panic(string(out))
		}
		c1 := time.Since(c0)
		fmt.Printf("inproc create %v cont %v start %v teardown %v total %v | cli %v\n",
			t1.Sub(t0).Round(time.Millisecond), t2.Sub(t1).Round(time.Millisecond), t3.Sub(t2).Round(time.Millisecond), t4.Sub(t3).Round(time.Millisecond), t4.Sub(t0).Round(time.Millisecond), c1.Round(time.Millisecond))
	}
}
