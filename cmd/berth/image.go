package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/berth-runtime/berth/internal/ociimage"
)

func newImageCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Build container images locally (no registry needed)"}
	var rootfs, ref, out string
	pack := &cobra.Command{
		Use:   "pack --rootfs DIR --ref NAME --out FILE [-- CMD ARGS...]",
		Short: "Pack a root file system directory into an OCI image archive for `ctr images import`",
		RunE: func(cmd *cobra.Command, args []string) error {
			if st, err := os.Stat(rootfs); err != nil || !st.IsDir() {
				return fmt.Errorf("--rootfs %s: not a directory", rootfs)
			}
			if err := ociimage.PackFile(out, rootfs, ociimage.Options{Ref: ref, Cmd: args}); err != nil {
				return fmt.Errorf("--out %s: %w", out, err)
			}
			return nil
		},
	}
	pack.Flags().StringVar(&rootfs, "rootfs", "", "root file system directory (required)")
	pack.Flags().StringVar(&ref, "ref", "", "image name, e.g. docker.io/library/busybox:berth (required)")
	pack.Flags().StringVar(&out, "out", "", "archive to write (required)")
	for _, f := range []string{"rootfs", "ref", "out"} {
		pack.MarkFlagRequired(f)
	}
	cmd.AddCommand(pack)
	return cmd
}
