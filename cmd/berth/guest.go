package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/guest"
)

// newGuestCmd is `berth guest`: build and inspect the guest kernel and
// initramfs that every sandbox VM boots.
//
// Where the image goes: the kernel and initramfs are written to the paths
// the configuration boots from (guest.kernel and guest.initrd, by default
// StateDir/guest/vmlinuz and StateDir/guest/initramfs.img), so what is built
// is what runs. The manifest (manifest.json) and the kernel's config live in
// the kernel's directory, and `berth guest info` reads them from there.
// Downloaded packages are cached in StateDir/cache.
func newGuestCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "guest",
		Short: "Build and inspect the guest kernel and initramfs",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newGuestBuildCmd(), newGuestInfoCmd())
	return cmd
}

func newGuestBuildCmd() *cobra.Command {
	var force bool
	var agent string
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Download the guest kernel and build the initramfs around berth-agent",
		Long: `Build downloads the Debian kernel package named by guest.kernel_package (a
meta package such as linux-image-cloud-amd64 is resolved to the concrete
linux-image-<version> package), without installing it, and writes:

  guest.kernel   the kernel image      (default <state_dir>/guest/vmlinuz)
  guest.initrd   the initramfs         (default <state_dir>/guest/initramfs.img)
  config, manifest.json                next to the kernel

The initramfs holds berth-agent as /init and the virtio, vsock, virtiofs and
overlay modules with the order to load them in. Nothing is rebuilt when the
kernel package version and the agent are unchanged; --force rebuilds.

With guest.kernel_source = "berth", the kernel is instead compiled from
Debian's linux-source-6.1 package with the configuration in guest/kernel
(everything built in, so the initramfs holds no modules). The first build
takes minutes and shows its progress; the result is cached in
<state_dir>/cache/kernel-<version>-<hash>, so later builds reuse it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig()
			if err != nil {
				return err
			}
			if agent == "" {
				if agent, err = defaultAgentPath(); err != nil {
					return err
				}
			} else if _, err := os.Stat(agent); err != nil {
				return fmt.Errorf("--agent %s: %w", agent, err)
			}
			ctx, stop := signal.NotifyContext(cmdContext(cmd), os.Interrupt, syscall.SIGTERM)
			defer stop()
			_, err = guest.Build(ctx, buildOptions(cfg, agent, force, cmd.OutOrStdout()))
			return err
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "rebuild even if the image is up to date")
	cmd.Flags().StringVar(&agent, "agent", "", "static berth-agent binary to install as /init (default: berth-agent next to the berth executable)")
	return cmd
}

// buildOptions maps the configuration onto guest.BuildOptions.
func buildOptions(cfg *config.Config, agent string, force bool, progress io.Writer) guest.BuildOptions {
	kernel := cfg.ResolvedKernel()
	return guest.BuildOptions{
		OutDir:        filepath.Dir(kernel),
		KernelPath:    kernel,
		InitrdPath:    cfg.ResolvedInitrd(),
		RootImagePath: cfg.ResolvedRootImage(),
		CacheDir:      filepath.Join(cfg.StateDir, "cache"),
		KernelPackage: cfg.Guest.KernelPackage,
		KernelSource:  cfg.Guest.KernelSource,
		AgentBinary:   agent,
		Force:         force,
		Progress:      progress,
	}
}

// defaultAgentPath is berth-agent in the directory of the running berth, as
// `make build` and the release archive lay them out.
func defaultAgentPath() (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find the berth executable (to locate berth-agent next to it): %w; pass --agent", err)
	}
	if resolved, err := filepath.EvalSymlinks(self); err == nil {
		self = resolved
	}
	p := filepath.Join(filepath.Dir(self), "berth-agent")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("berth-agent not found next to %s: build it with `make build` or pass --agent PATH", self)
	}
	return p, nil
}

func newGuestInfoCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "info",
		Short: "Print the manifest of the built guest image",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig()
			if err != nil {
				return err
			}
			a, err := guest.Inspect(filepath.Dir(cfg.ResolvedKernel()))
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(a)
			}
			printArtefacts(out, a)
			if a.Kernel != cfg.ResolvedKernel() || a.Initrd != cfg.ResolvedInitrd() {
				fmt.Fprintf(out, "\nwarning: the configuration boots %s and %s, not the files above: run `berth guest build`\n", cfg.ResolvedKernel(), cfg.ResolvedInitrd())
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the manifest as JSON")
	return cmd
}

func printArtefacts(w io.Writer, a *guest.Artefacts) {
	row := func(k, v string) { fmt.Fprintf(w, "%-15s %s\n", k+":", v) }
	row("kernel", fmt.Sprintf("%s (%s)", a.Kernel, mib(a.KernelSize)))
	row("initrd", fmt.Sprintf("%s (%s)", a.Initrd, mib(a.InitrdSize)))
	if a.RootImage != "" {
		row("root image", fmt.Sprintf("%s (%s, erofs on virtio-pmem: guest.root)", a.RootImage, mib(a.RootImageSize)))
	} else {
		row("root image", "none (the kernel lacks one of "+strings.Join(guest.RootImageOptions, " ")+", or mkfs.erofs was missing): guests boot from the initramfs")
	}
	row("kernel config", a.Config)
	row("kernel version", a.KernelVersion)
	pkg := fmt.Sprintf("%s %s", a.KernelPackage, a.KernelPackageVersion)
	if a.Source() == guest.KernelSourceBerth {
		row("kernel source", fmt.Sprintf("berth: compiled from %s, configuration %s (guest/kernel)", pkg, a.KernelBuildKey))
	} else {
		if a.RequestedPackage != "" && a.RequestedPackage != a.KernelPackage {
			pkg += " (from " + a.RequestedPackage + ")"
		}
		row("kernel source", "debian: package "+pkg)
	}
	row("agent sha256", a.AgentSHA256)
	mods := strings.Join(a.Modules, " ")
	if mods == "" {
		mods = "none (every driver is built in)"
	}
	row("modules", mods)
	row("built", a.BuiltAt.Local().Format("2006-01-02 15:04:05 MST"))
	printKernelFeatures(w, a.Config, a.Modules)
}

// printKernelFeatures lists guest.KernelFeatures as the kernel's config
// and the image's modules have them: built in, module (packed, loaded by
// the agent) or missing.
func printKernelFeatures(w io.Writer, configPath string, modules []string) {
	cfg, err := guest.ReadKernelConfig(configPath)
	if err != nil {
		fmt.Fprintf(w, "kernel features: unknown: %v\n", err)
		return
	}
	fmt.Fprintln(w, "kernel features (from the kernel config):")
	for _, s := range guest.CheckKernelFeatures(cfg, modules) {
		state := "built in"
		switch {
		case !s.OK():
			state = "MISSING " + strings.Join(s.Missing, " ")
			if !s.Required {
				state += " (optional)"
			}
		case len(s.Modular) > 0:
			state = "module"
		}
		fmt.Fprintf(w, "  %-58s %s\n", s.Name, state)
	}
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// cmdContext is the command's context, or Background when the root command
// was run with Execute rather than ExecuteContext.
func cmdContext(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}
