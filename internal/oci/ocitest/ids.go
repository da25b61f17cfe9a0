// Package ocitest holds test tables shared by the packages that take ids.
package ocitest

import "strings"

// TraversalIDs are ids that must never reach a host path: every entry
// point that builds a path from an id runs its test over this table and
// must refuse each with errdefs.ErrInvalidArgument, touching nothing.
var TraversalIDs = []string{
	"", ".", "..", "../x", "../../etc", "x/../..", "a/b", "/abs", "x/", "/",
	".hidden", "-dash", "trailing.", "a..b", "a\x00b", "a\nb", "tab\there", "sp ace",
	"ü", "a\\b", strings.Repeat("x", 77),
}
