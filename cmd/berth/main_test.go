package main

import (
	"strings"
	"testing"
)

// TestNoStrconvInFlagErrors: a malformed number names the flag and what
// is expected, not strconv's internals.
func TestNoStrconvInFlagErrors(t *testing.T) {
	root := newRootCmd()
	root.SetArgs([]string{"run", "--cpus", "two", "--rootfs", "/", "--", "true"})
	root.SetOut(new(strings.Builder))
	root.SetErr(new(strings.Builder))
	err := root.Execute()
	if err == nil || strings.Contains(err.Error(), "strconv") || !strings.Contains(err.Error(), `--cpus "two": not a whole number`) {
		t.Fatalf("--cpus two: %v", err)
	}
}
