package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/signal"
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
		Short: "Serve every sandbox's Prometheus metrics on one TCP address",
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
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("--listen %s: %w", listen, err)
			}
			mux := http.NewServeMux()
			mux.Handle("/metrics", monitor.Handler(cfg.RunDir, sandbox.MetricsSocketName))
			srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
			go func() {
				<-ctx.Done()
				sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				srv.Shutdown(sctx)
			}()
			fmt.Fprintf(cmd.ErrOrStderr(), "berth monitor: serving http://%s/metrics for sandboxes in %s\n", l.Addr(), cfg.RunDir)
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:8090", "address to serve /metrics on")
	return cmd
}
