package benchtab

import (
	"strings"
	"testing"
	"time"
)

func TestStats(t *testing.T) {
	ds := []time.Duration{5, 1, 3, 2, 4}
	if Median(ds) != 3 || Median([]time.Duration{4, 1, 3, 2}) != 2 {
		t.Errorf("median")
	}
	if Percentile(ds, 100) != 5 || Percentile(ds, 50) != 3 || Percentile(ds, 1) != 1 {
		t.Errorf("percentile: %v %v %v", Percentile(ds, 100), Percentile(ds, 50), Percentile(ds, 1))
	}
	var b strings.Builder
	Print(&b, []Series{{Name: "x", Runs: []time.Duration{time.Second, 2 * time.Second, 3 * time.Second}}})
	if !strings.Contains(b.String(), "| x           |   2000 ms |   1000 ms |   3000 ms |") {
		t.Errorf("table:\n%s", b.String())
	}
}
