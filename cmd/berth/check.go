package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"

	"github.com/spf13/cobra"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/hostcheck"
)

// newCheckCmd is `berth check`: can this host run Berth, and if not, why
// not. It prints one line per finding and a verdict, and exits 0 exactly
// when nothing failed, so scripts and provisioning can gate on it. A
// configuration error is reported as a failed finding of its own (the host
// is not probed with a configuration Berth would refuse).
func newCheckCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check whether this host can run Berth, and say why not",
		Long: `Check loads the configuration and probes the host read-only: the QEMU
binary, the accelerator (KVM or TCG), the host-guest channel (vsock or
virtio-serial), virtiofsd, the guest kernel and initramfs, the cgroup layout
and run_dir. Each problem comes with its fix. The exit status is 0 when
Berth can run, 1 when it cannot.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var report hostcheck.Report
			cfg, err := loadConfig()
			if err != nil {
				report.Findings = configFindings(err)
			} else {
				report = hostcheck.Run(cmd.Context(), cfg)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(report); err != nil {
					return err
				}
			} else {
				printReport(out, report)
			}
			if !report.OK() {
				return exitError{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

// configFindings turns a configuration error into failed findings, one per
// bad key, each with the key error's fix.
func configFindings(err error) []hostcheck.Finding {
	var fs []hostcheck.Finding
	for _, ke := range config.KeyErrors(err) {
		noFix := *ke
		noFix.Fix = ""
		fs = append(fs, hostcheck.Finding{
			Check:  hostcheck.CheckConfig,
			Status: hostcheck.Fail,
			Detail: noFix.Error(),
			Fix:    ke.Fix,
		})
	}
	if len(fs) == 0 {
		fix := "correct the file (see docs/configuration.md)"
		if errors.Is(err, iofs.ErrNotExist) {
			fix = "create it, or name another with --config or BERTH_CONFIG (with neither, a missing " +
				config.DefaultPath + " means the built-in defaults)"
		}
		fs = append(fs, hostcheck.Finding{
			Check:  hostcheck.CheckConfig,
			Status: hostcheck.Fail,
			Detail: err.Error(),
			Fix:    fix,
		})
	}
	return fs
}

// printReport writes one line per finding, then the verdict:
//
//	ok    accelerator   TCG (software emulation): KVM failed: ...
//	FAIL  guest image   /var/lib/berth/guest/vmlinuz missing — fix: run `berth guest build`
//	Berth cannot run on this host: 1 problem(s)
func printReport(w io.Writer, r hostcheck.Report) {
	for _, f := range r.Findings {
		line := fmt.Sprintf("%-5s %-13s %s", f.Status, f.Check, f.Detail)
		if f.Fix != "" && f.Status != hostcheck.OK {
			line += " — fix: " + f.Fix
		}
		fmt.Fprintln(w, line)
	}
	if r.OK() {
		accel := r.Accel
		if accel == "" {
			accel = "unknown"
		}
		fmt.Fprintf(w, "Berth can run on this host (accelerator: %s)\n", accel)
		return
	}
	fmt.Fprintf(w, "Berth cannot run on this host: %d problem(s)\n", r.Problems())
}
