package main

import (
	"fmt"

	"github.com/docker/go-units"
	"github.com/spf13/cobra"

	"github.com/berth-runtime/berth/internal/sandbox"
)

func newResizeCmd() *cobra.Command {
	var size string
	cmd := &cobra.Command{
		Use:   "resize SANDBOX --memory SIZE",
		Short: "Grow or shrink a running sandbox's memory (hot-plug)",
		Long: `Resize a sandbox's VM memory to SIZE (e.g. 1G, 768M). The request is checked
first (within the sandbox's maximum, aligned to the hot-plug block, enough free
host memory for a grow); a refused request changes nothing. It returns once
the guest can use the memory, or says how far a shrink got.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := units.RAMInBytes(size)
			if err != nil || b <= 0 || b%(1<<20) != 0 {
				return fmt.Errorf("--memory %q: give a size in whole MiB such as 1G or 768M", size)
			}
			cfg, err := loadConfig()
			if err != nil {
				return err
			}
			c, err := sandbox.Connect(cfg.RunDir, args[0])
			if err != nil {
				return err
			}
			m, err := c.ResizeMemory(cmd.Context(), int(b>>20))
			if err != nil {
				return err
			}
			fmt.Printf("sandbox %s: %d MiB (guest MemTotal %d MiB)\n", args[0], m.GuestCurrentMiB, m.GuestMemTotalMiB)
			return nil
		},
	}
	cmd.Flags().StringVar(&size, "memory", "", "new memory size, e.g. 1G (required)")
	cmd.MarkFlagRequired("memory")
	return cmd
}
