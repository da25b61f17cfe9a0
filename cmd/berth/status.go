package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-runtime/berth/internal/sandbox"
)

func newStatusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status SANDBOX",
		Short: "Show a running sandbox: VM, guest kernel, memory (at boot, current, requested, ceiling) and elastic memory's last decisions",
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

func printElastic(w io.Writer, e *sandbox.ElasticStatus) {
	if !e.Enabled {
		fmt.Fprintf(w, "elastic memory\toff (%s)\n", e.Off)
		return
	}
	fmt.Fprintf(w, "elastic memory\ton: floor %d MiB, ceiling %d MiB\n", e.FloorMiB, e.CeilingMiB)
	if !e.SampledAt.IsZero() {
		soft := "none"
		if e.SoftLimitMiB > 0 {
			soft = fmt.Sprintf("%d MiB", e.SoftLimitMiB)
		}
		fmt.Fprintf(w, "guest pressure\tMemAvailable %d MiB, PSI some avg10 %.2f%%, containers' soft limit %s\n", e.GuestAvailableMiB, e.PSISomeAvg10, soft)
	}
	fmt.Fprintf(w, "elastic changes\t%d grows (+%d MiB), %d shrinks (-%d MiB), %d refused\n",
		e.Grows, e.GrownBytes>>20, e.Shrinks, e.ShrunkBytes>>20, e.Refusals)
	for _, ev := range []struct {
		name string
		e    *sandbox.ElasticEvent
	}{{"last grow", e.LastGrow}, {"last shrink", e.LastShrink}, {"last refusal", e.LastRefusal}} {
		if ev.e == nil {
			continue
		}
		line := fmt.Sprintf("%s ago: %d -> %d MiB: %s", time.Since(ev.e.At).Round(time.Second), ev.e.FromMiB, ev.e.ToMiB, ev.e.Reason)
		if ev.e.Error != "" {
			line += " (failed: " + ev.e.Error + ")"
		}
		fmt.Fprintf(w, "%s\t%s\n", ev.name, line)
	}
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
	if e := m.Elastic; e != nil {
		printElastic(w, e)
	}
	if len(m.Errors) > 0 {
		fmt.Fprintf(w, "problems\t%s\n", strings.Join(m.Errors, "; "))
	}
	w.Flush()
}
