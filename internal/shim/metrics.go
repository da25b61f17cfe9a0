package shim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/containerd/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/berth-runtime/berth/internal/sandbox"
	"github.com/berth-runtime/berth/internal/stats"
)

// serveMetrics serves the sandbox's Prometheus metrics over HTTP on a
// unix socket in the sandbox directory (docs/metrics.md) until the VM
// exits. Only root can reach it (the directory is 0700); `berth monitor`
// gathers every sandbox's socket onto one TCP port for Prometheus.
func serveMetrics(ctx context.Context, sb *sandbox.Sandbox) error {
	reg := prometheus.NewRegistry()
	if err := reg.Register(stats.NewCollector(context.WithoutCancel(ctx), sb.ID(), sb)); err != nil {
		return err
	}
	l, err := net.Listen("unix", sb.MetricsSocket())
	if err != nil {
		return fmt.Errorf("metrics socket: %w", err)
	}
	srv := &http.Server{
		Handler:           promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.G(ctx).WithError(err).Warn("metrics server")
		}
	}()
	go func() {
		<-sb.Done()
		srv.Close()
	}()
	return nil
}
