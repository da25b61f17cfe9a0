// Command berth is Berth's command-line tool: run a container in a VM, check
// the host, print the effective configuration and build the guest image.
//
// Each subcommand lives in its own file (as runsc/cmd does). main loads the
// configuration once, through config.Load, and hands the validated value to
// the subcommand; subcommands hold no business logic of their own.
package main

import (
	"errors"
	"fmt"
	"os"
	"regexp"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/sandbox"
)

// globalFlags are the flags every subcommand accepts.
type globalFlags struct {
	configPath string
	stateDir   string
	logLevel   string
}

var global globalFlags

// exitError carries a specific exit code out of a subcommand (berth run
// exits with the container's status) without printing anything more.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// loadConfig reads the configuration named by --config (or BERTH_CONFIG, or
// the default path) and applies --state-dir / BERTH_STATE_DIR on top before
// validation, so the override is validated like the file.
func loadConfig() (*config.Config, error) {
	path := global.configPath
	if path == "" {
		path = os.Getenv("BERTH_CONFIG")
	}
	stateDir := global.stateDir
	if stateDir == "" {
		stateDir = os.Getenv("BERTH_STATE_DIR")
	}
	// Host facts let Load reject cgroup settings this host cannot honour.
	return config.Load(path, config.Overrides{StateDir: stateDir, Host: sandbox.HostFacts()})
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "berth",
		Short:         "Berth runs containers inside lightweight virtual machines",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			lvl, err := logrus.ParseLevel(global.logLevel)
			if err != nil {
				return fmt.Errorf("--log-level %q: %w (use debug, info, warn or error)", global.logLevel, err)
			}
			logrus.SetLevel(lvl)
			logrus.SetOutput(os.Stderr)
			return nil
		},
	}
	root.SetFlagErrorFunc(flagError)
	root.PersistentFlags().StringVar(&global.configPath, "config", "", "configuration file (default $BERTH_CONFIG or "+config.DefaultPath+")")
	root.PersistentFlags().StringVar(&global.stateDir, "state-dir", "", "state directory for guest artefacts (default $BERTH_STATE_DIR or state_dir from the config)")
	root.PersistentFlags().StringVar(&global.logLevel, "log-level", "warn", "log level: debug, info, warn, error")
	root.AddCommand(newRunCmd(), newCheckCmd(), newEnvCmd(), newGuestCmd(), newImageCmd(), newStatusCmd(), newResizeCmd(), newMonitorCmd(), newDebugCmd())
	return root
}

func main() {
	err := newRootCmd().Execute()
	var ee exitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		os.Exit(ee.code)
	default:
		fmt.Fprintln(os.Stderr, "berth:", err)
		os.Exit(1)
	}
}

// flagNumberRE matches pflag's error for a malformed number, which ends
// in strconv's words ("strconv.ParseInt: parsing \"x\": invalid syntax").
var flagNumberRE = regexp.MustCompile(`^invalid argument "(.*)" for "(.*)" flag: strconv\.`)

// flagError rewords flag errors that would show strconv's internals.
func flagError(cmd *cobra.Command, err error) error {
	if m := flagNumberRE.FindStringSubmatch(err.Error()); m != nil {
		return fmt.Errorf("%s %q: not a whole number; write digits only, such as %s 2", m[2], m[1], m[2])
	}
	return err
}
