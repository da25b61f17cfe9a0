package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-runtime/berth/internal/monitor"
	"github.com/berth-runtime/berth/internal/sandbox"
)

func newMonitorCmd() *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:   "monitor",
		Short: "Serve every sandbox's Prometheus metrics on one TCP address or unix socket",
		Long: `monitor serves /metrics on --listen for Prometheus: on each scrape it reads
the metrics socket of every sandbox under run_dir (each shim serves its own)
and merges them; every series carries sandbox_id. See docs/metrics.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			l, err := monitorListener(listen)
			if err != nil {
				return err
			}
			defer l.Close()
			mux := http.NewServeMux()
			mux.Handle("/metrics", monitor.Handler(cfg.RunDir, sandbox.MetricsSocketName))
			srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
			go func() {
				<-ctx.Done()
				sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				srv.Shutdown(sctx)
			}()
			fmt.Fprintf(cmd.ErrOrStderr(), "berth monitor: serving /metrics on %s %s for sandboxes in %s\n", l.Addr().Network(), l.Addr(), cfg.RunDir)
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:8090", "address to serve /metrics on: HOST:PORT, or unix:PATH for a socket only root can reach (mode 0600)")
	return cmd
}

// monitorListener listens on HOST:PORT, or on a unix socket for
// "unix:PATH": any local user can reach a TCP port, while the socket
// (created 0600, replacing a stale socket but nothing else) only root can.
func monitorListener(listen string) (net.Listener, error) {
	path, ok := strings.CutPrefix(listen, "unix:")
	if !ok {
		l, err := net.Listen("tcp", listen)
		if err != nil {
			return nil, fmt.Errorf("--listen %s: %w", listen, err)
		}
		return l, nil
	}
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("--listen %s: the socket path must be absolute", listen)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("--listen %s: %s exists and is not a socket", listen, path)
		}
		os.Remove(path)
	}
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("--listen %s: %w", listen, err)
	}
	return l, nil
}
