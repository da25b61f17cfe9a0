package agent

import (
	"os"
	"path/filepath"
	"testing"
)

// The agent lowers the reporting order the balloon driver set, leaves a
// lower one (an operator's) alone, and does nothing on a kernel without
// free page reporting.
func TestReportSmallerFreeBlocks(t *testing.T) {
	for _, tc := range []struct{ name, before, want string }{
		{"driver's pageblock order", "10\n", "5"},
		{"already lower", "3\n", "3\n"},
		{"no free page reporting", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sys := t.TempDir()
			p := filepath.Join(sys, "module/page_reporting/parameters/page_reporting_order")
			if tc.before != "" {
				os.MkdirAll(filepath.Dir(p), 0o755)
				os.WriteFile(p, []byte(tc.before), 0o644)
			}
			if err := reportSmallerFreeBlocks(sys); err != nil {
				t.Fatal(err)
			}
			got, _ := os.ReadFile(p)
			if string(got) != tc.want {
				t.Errorf("order %q, want %q", got, tc.want)
			}
		})
	}
}
