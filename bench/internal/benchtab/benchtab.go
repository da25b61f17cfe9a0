// Package benchtab is the small shared part of Berth's benchmark commands:
// order statistics over durations and the markdown table they all print,
// so docs/benchmarks.md can quote any of them as is.
package benchtab

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// Series is one measured quantity.
type Series struct {
	Name string
	Runs []time.Duration
}

// Sorted returns a sorted copy.
func Sorted(ds []time.Duration) []time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s
}

// Median of ds (the mean of the middle two for an even count).
func Median(ds []time.Duration) time.Duration {
	s := Sorted(ds)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Percentile returns the p-th percentile (nearest rank), p in (0, 100].
func Percentile(ds []time.Duration, p float64) time.Duration {
	s := Sorted(ds)
	if len(s) == 0 {
		return 0
	}
	i := int(float64(len(s))*p/100+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// MS formats a duration in whole milliseconds.
func MS(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }

// Print writes a markdown table of median, min and max per series.
func Print(w io.Writer, rows []Series) {
	width := len("measurement")
	for _, r := range rows {
		width = max(width, len(r.Name))
	}
	fmt.Fprintf(w, "| %-*s | %9s | %9s | %9s |\n", width, "measurement", "median", "min", "max")
	fmt.Fprintf(w, "|%s|%s:|%s:|%s:|\n", strings.Repeat("-", width+2), strings.Repeat("-", 10), strings.Repeat("-", 10), strings.Repeat("-", 10))
	for _, r := range rows {
		if len(r.Runs) == 0 {
			continue
		}
		s := Sorted(r.Runs)
		fmt.Fprintf(w, "| %-*s | %9s | %9s | %9s |\n", width, r.Name, MS(Median(s)), MS(s[0]), MS(s[len(s)-1]))
	}
}
