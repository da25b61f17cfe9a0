package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/berth-runtime/berth/internal/config"
)

// newEnvCmd is `berth env`: the configuration Berth will actually use, as
// TOML, after defaults, the file and --state-dir / BERTH_STATE_DIR have been
// applied and the result validated. Its output is itself a valid
// configuration file.
func newEnvCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "env",
		Short: "Print the effective configuration as TOML",
		Long: `Env prints the configuration Berth uses: the built-in defaults, overlaid by
the configuration file (--config, $BERTH_CONFIG or ` + config.DefaultPath + `) and
then by --state-dir / $BERTH_STATE_DIR, with the guest kernel and initramfs
paths resolved. The output can be saved as a configuration file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			src := cfg.Source()
			if src == "" {
				src = "defaults (no " + config.DefaultPath + ")"
			}
			fmt.Fprintf(out, "# Effective Berth configuration from %s\n", src)
			if over := stateDirOverride(); over != "" {
				fmt.Fprintf(out, "# state_dir overridden by %s\n", over)
			}
			return cfg.Marshal(out)
		},
	}
}

// stateDirOverride names where an overriding state directory came from,
// mirroring loadConfig's precedence, or "" if there is none.
func stateDirOverride() string {
	switch {
	case global.stateDir != "":
		return "--state-dir"
	case os.Getenv("BERTH_STATE_DIR") != "":
		return "BERTH_STATE_DIR"
	}
	return ""
}
