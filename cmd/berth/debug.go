package main

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/berth-runtime/berth/internal/sandbox"
)

func newDebugCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "debug",
		Short: "Debugging aids (off unless the configuration enables them)",
	}
	cmd.AddCommand(newDebugExecCmd())
	return cmd
}

func newDebugExecCmd() *cobra.Command {
	var timeout uint32
	var stdin bool
	cmd := &cobra.Command{
		Use:   "exec SANDBOX -- CMD [ARGS...]",
		Short: "Run CMD as root in a sandbox's VM, outside any container",
		Long: `Run CMD as root in the sandbox's guest itself, outside every container, and
print its output; berth exits with CMD's exit code. This is the harness of the
hostile-guest tests and a debugging aid: it is refused unless the sandbox was
started with [debug] guest_exec = true in its configuration (docs/security.md).`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig()
			if err != nil {
				return err
			}
			c, err := sandbox.Connect(cfg.RunDir, args[0])
			if err != nil {
				return err
			}
			var in []byte
			if stdin {
				if in, err = io.ReadAll(io.LimitReader(os.Stdin, 8<<20)); err != nil {
					return err
				}
			}
			// Flags stop at SANDBOX, so "--" reaches us as an argument.
			argv := args[1:]
			if argv[0] == "--" {
				argv = argv[1:]
			}
			if len(argv) == 0 {
				return fmt.Errorf("give the command to run after %s --", args[0])
			}
			r, err := c.DebugExec(cmd.Context(), argv, in, timeout)
			if err != nil {
				return err
			}
			os.Stdout.Write(r.Stdout)
			os.Stderr.Write(r.Stderr)
			if r.ExitCode != 0 {
				return exitError{code: r.ExitCode}
			}
			return nil
		},
	}
	cmd.Flags().SetInterspersed(false)
	cmd.Flags().Uint32Var(&timeout, "timeout", 0, fmt.Sprintf("seconds before CMD is killed (default 60, at most %d)", 600))
	cmd.Flags().BoolVarP(&stdin, "interactive", "i", false, "pass standard input (up to 8 MiB) to CMD")
	return cmd
}
