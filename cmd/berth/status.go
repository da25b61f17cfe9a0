package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/berth-runtime/berth/internal/sandbox"
)

func newStatusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status SANDBOX",
		Short: "Show a running sandbox: VM, guest kernel and memory (at boot, current, requested)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig()
			if err != nil {
				return err
			}
			c, err := sandbox.Connect(cfg.RunDir, args[0])
			if err != nil {
				return err
			}
			st, err := c.Status(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			printStatus(st)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printStatus(st sandbox.Status) {
	m := st.Memory
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "sandbox\t%s\n", st.ID)
	fmt.Fprintf(w, "vmm pid\t%d\n", st.VMMPid)
	fmt.Fprintf(w, "guest kernel\t%s (agent %s)\n", st.KernelRelease, st.AgentVersion)
	fmt.Fprintf(w, "memory hot-plug\t%s\n", m.Mechanism)
	fmt.Fprintf(w, "guest at boot\t%d MiB\n", m.GuestAtBootMiB)
	fmt.Fprintf(w, "guest current\t%d MiB (guest MemTotal %d MiB, movable %d MiB)\n", m.GuestCurrentMiB, m.GuestMemTotalMiB, m.GuestMovableMiB)
	fmt.Fprintf(w, "guest requested\t%d MiB\n", m.GuestRequestedMiB)
	fmt.Fprintf(w, "max guest\t%d MiB\n", m.MaxGuestMiB)
	fmt.Fprintf(w, "offline blocks\t%d (guest auto_online_blocks=%s; Berth onlines blocks itself)\n", m.BlocksOffline, m.AutoOnlineBlocks)
	if len(m.Errors) > 0 {
		fmt.Fprintf(w, "problems\t%s\n", strings.Join(m.Errors, "; "))
	}
	w.Flush()
}
