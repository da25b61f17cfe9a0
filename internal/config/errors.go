package config

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalid classifies every configuration error Load and Validate return:
// errors.Is(err, ErrInvalid) holds for a bad file, a bad value or an unknown
// key, so callers (berth check, the shim) can tell "the configuration is
// wrong" from "the host is wrong" without reading messages.
var ErrInvalid = errors.New("invalid configuration")

// KeyError is one problem with one TOML key. Its message is a single,
// self-contained line that names the file, the key, the bad value, what is
// wrong and how to fix it, for example:
//
//	config /etc/berth/config.toml: hypervisor.machine = "pc" is not supported; use "q35" or "microvm"
type KeyError struct {
	// File is where the value came from: the configuration file, a
	// description of an override, or "" for the built-in defaults.
	File string
	// Key is the dotted TOML key, e.g. "hypervisor.machine".
	Key string
	// Value is the offending value as it would be written in TOML
	// ("\"pc\"", "0"); "" when there is no value to show.
	Value string
	// Problem says what is wrong ("is not supported").
	Problem string
	// Fix says what to write instead ("use \"q35\" or \"microvm\"").
	Fix string
}

// Error formats the one-line message.
func (e *KeyError) Error() string {
	var b strings.Builder
	b.WriteString("config")
	if e.File != "" {
		b.WriteString(" ")
		b.WriteString(e.File)
	}
	b.WriteString(": ")
	b.WriteString(e.Key)
	if e.Value != "" {
		b.WriteString(" = ")
		b.WriteString(e.Value)
	}
	if e.Problem != "" {
		b.WriteString(" ")
		b.WriteString(e.Problem)
	}
	if e.Fix != "" {
		b.WriteString("; ")
		b.WriteString(e.Fix)
	}
	return b.String()
}

// Is makes errors.Is(err, ErrInvalid) true for every KeyError.
func (e *KeyError) Is(target error) bool { return target == ErrInvalid }

// keyError builds a KeyError for a value (formatted as TOML) with the file
// left for Load to fill in.
func keyError(key string, value any, problem, fix string) *KeyError {
	return &KeyError{Key: key, Value: tomlValue(value), Problem: problem, Fix: fix}
}

// tomlValue renders v the way it would be written in the file.
func tomlValue(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		return fmt.Sprintf("%q", v)
	case Duration:
		return fmt.Sprintf("%q", v.Duration.String())
	case fmt.Stringer:
		return fmt.Sprintf("%q", v.String())
	default:
		return fmt.Sprint(v)
	}
}

// fileError is an error about the file as a whole (unreadable, not TOML).
type fileError struct {
	file string
	err  error
}

func (e *fileError) Error() string { return fmt.Sprintf("config %s: %v", e.file, e.err) }
func (e *fileError) Unwrap() error { return e.err }
func (e *fileError) Is(target error) bool {
	return target == ErrInvalid
}

// joinErrors joins KeyErrors into one error whose message has one line per
// problem; errors.As finds the first KeyError, and errors.Is(err,
// ErrInvalid) holds.
func joinErrors(errs []*KeyError) error {
	if len(errs) == 0 {
		return nil
	}
	if len(errs) == 1 {
		return errs[0]
	}
	all := make([]error, len(errs))
	for i, e := range errs {
		all[i] = e
	}
	return errors.Join(all...)
}

// KeyErrors returns every KeyError inside err (a single KeyError or several
// joined by Load or Validate), in order.
func KeyErrors(err error) []*KeyError {
	switch e := err.(type) {
	case nil:
		return nil
	case *KeyError:
		return []*KeyError{e}
	case interface{ Unwrap() []error }:
		var out []*KeyError
		for _, inner := range e.Unwrap() {
			out = append(out, KeyErrors(inner)...)
		}
		return out
	case interface{ Unwrap() error }:
		return KeyErrors(e.Unwrap())
	}
	return nil
}
