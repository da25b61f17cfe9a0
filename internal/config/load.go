package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
)

// Overrides are settings from the command line or the environment. Load
// applies them after reading the file and before validating, so an
// override is validated exactly like a value from the file.
type Overrides struct {
	// StateDir replaces state_dir (berth --state-dir, BERTH_STATE_DIR).
	// Guest paths that the file leaves to their default move with it.
	StateDir string
	// Host, when set, enables the checks that depend on the host (the
	// cgroup driver against the cgroup layout and init system). The CLI
	// and the shim always set it; tests pass canned hosts.
	Host *Host
}

// overrideSource names where an overridden value came from in errors.
const overrideSource = "state_dir override (--state-dir or BERTH_STATE_DIR)"

// defaultPath is DefaultPath; a variable so tests need not touch /etc.
var defaultPath = DefaultPath

// Load reads the configuration and validates it once.
//
// path "" means DefaultPath, and a missing file there means "use the
// defaults": a host with no /etc/berth works out of the box. A path that
// was given explicitly must exist. Keys the schema does not know are
// errors (naming the key and the closest known one), as are values of the
// wrong type. ov is applied after the file; then guest.kernel and
// guest.initrd, when the file leaves them empty, are filled in under
// state_dir; then Validate runs.
//
// Every error satisfies errors.Is(err, ErrInvalid); problems with single
// keys are *KeyError (see KeyErrors).
func Load(path string, ov Overrides) (*Config, error) {
	explicit := path != ""
	if !explicit {
		path = defaultPath
	}
	cfg := Default()
	// Unknown keys do not stop validation of the known ones: the user gets
	// every problem in one run.
	var errs []*KeyError
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		unknown, err := decode(cfg, data, path)
		if err != nil {
			return nil, err
		}
		errs = unknown
		cfg.source = path
	case !explicit && errors.Is(err, fs.ErrNotExist):
		// Built-in defaults; cfg.source stays "".
	default:
		return nil, &fileError{file: path, err: err}
	}

	if ov.StateDir != "" {
		cfg.StateDir = ov.StateDir
	}
	// Resolve the guest paths only under a usable state_dir; a relative
	// one is reported once, as state_dir, rather than three times.
	if filepath.IsAbs(cfg.StateDir) {
		cfg.Guest.Kernel = cfg.ResolvedKernel()
		cfg.Guest.Initrd = cfg.ResolvedInitrd()
		cfg.Guest.RootImage = cfg.ResolvedRootImage()
	}

	for _, e := range cfg.problems() {
		e.File = cfg.source
		if e.Key == "state_dir" && ov.StateDir != "" {
			e.File = overrideSource
		}
		errs = append(errs, e)
	}
	if ov.Host != nil {
		h := *ov.Host
		cfg.host = &h
		for _, e := range cfg.hostProblems(h) {
			e.File = cfg.source
			errs = append(errs, e)
		}
	}
	if err := joinErrors(errs); err != nil {
		return nil, err
	}
	return cfg, nil
}

// decode parses data over cfg (which holds the defaults, so keys absent
// from the file keep them). A syntax error or a value of the wrong type is
// returned as err (decoding stops there); unknown keys are returned as
// KeyErrors, with cfg fully decoded, so the caller can validate the rest.
func decode(cfg *Config, data []byte, file string) (unknown []*KeyError, err error) {
	// Parse loosely first: a syntax error is about the file, not a key,
	// and the loose tree lets errors show values as written.
	var raw map[string]any
	if _, err := toml.Decode(string(data), &raw); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			err = fmt.Errorf("line %d: %s", pe.Position.Line, pe.Message)
		}
		return nil, &fileError{file: file, err: fmt.Errorf("not valid TOML: %w", err)}
	}
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(cfg)
	if err != nil {
		return nil, typeError(err, raw, file)
	}
	var errs []*KeyError
	known := keyTypes()
	reported := map[string]bool{}
	check := func(k toml.Key) {
		name := k.String()
		if _, ok := known[name]; ok || reported[name] {
			return
		}
		// Report [hypervisr] once, not again for each key inside it.
		for i := 1; i < len(k); i++ {
			if reported[k[:i].String()] {
				return
			}
		}
		reported[name] = true
		errs = append(errs, unknownKey(file, name, rawValue(raw, k)))
	}
	for _, k := range md.Undecoded() {
		check(k)
	}
	// The decoder also matches keys case-insensitively; Berth's keys are
	// exactly as documented, so "Machine" is as unknown as "machin".
	for _, k := range md.Keys() {
		check(k)
	}
	return errs, nil
}

// lastKeyRE pulls the key out of BurntSushi/toml's type errors, which are
// plain fmt errors of the form `toml: line 3 (last key "a.b"): ...`.
var lastKeyRE = regexp.MustCompile(`\(last key "([^"]*)"\)`)

// typeError turns an error from decoding well-formed TOML into Config (a
// value of the wrong type, a bad duration) into a KeyError naming the key.
func typeError(err error, raw map[string]any, file string) error {
	key := ""
	var pe toml.ParseError
	if errors.As(err, &pe) {
		key = pe.LastKey
	} else if m := lastKeyRE.FindStringSubmatch(err.Error()); m != nil {
		key = m[1]
	}
	expected, ok := keyTypes()[key]
	if !ok {
		return &fileError{file: file, err: err}
	}
	ke := &KeyError{
		File:    file,
		Key:     key,
		Value:   rawValue(raw, toml.Key(strings.Split(key, "."))),
		Problem: "has the wrong type",
	}
	switch expected {
	case "duration":
		ke.Problem = "is not a duration"
		ke.Fix = `write a quoted duration with a unit, such as "30s" or "2m"`
	case "integer":
		ke.Problem = "is not a whole number"
		ke.Fix = "write a whole number without quotes"
	case "string":
		ke.Problem = "is not a string"
		ke.Fix = "write a quoted string"
	case "table":
		ke.Problem = "is not a table"
		ke.Fix = fmt.Sprintf("write it as a table, [%s], with its keys below", key)
	}
	return ke
}

// rawValue is key's value in the loosely parsed file, written as TOML.
func rawValue(raw map[string]any, key toml.Key) string {
	var cur any = raw
	for _, part := range key {
		m, ok := cur.(map[string]any)
		if !ok {
			return ""
		}
		cur = m[part]
	}
	switch v := cur.(type) {
	case nil, map[string]any:
		return "" // absent, or a table: the key alone says enough
	case string:
		return fmt.Sprintf("%q", v)
	default:
		var b bytes.Buffer
		if err := toml.NewEncoder(&b).Encode(map[string]any{"v": v}); err != nil {
			return fmt.Sprint(v)
		}
		return strings.TrimSpace(strings.TrimPrefix(b.String(), "v = "))
	}
}

// unknownKey reports a key the schema lacks, with the closest known key.
func unknownKey(file, key, value string) *KeyError {
	ke := &KeyError{File: file, Key: key, Value: value, Problem: "is not a known key"}
	if best := closestKey(key); best != "" {
		ke.Fix = fmt.Sprintf("did you mean %s? (see docs/configuration.md)", best)
	} else {
		ke.Fix = "remove it (see docs/configuration.md for the keys Berth knows)"
	}
	return ke
}

// closestKey is the known key most like key: the smallest edit distance,
// counting a known key whose last part contains the unknown one ("vcpus"
// in "default_vcpus") as close; ties go to the longer common subsequence
// ("kernel_pkg" is kernel_package, not kernel). It returns "" when nothing
// is reasonably close.
func closestKey(key string) string {
	names := make([]string, 0, len(keyTypes()))
	for k := range keyTypes() {
		names = append(names, k)
	}
	sort.Strings(names) // deterministic
	lower := strings.ToLower(key)
	last := lower[strings.LastIndex(lower, ".")+1:]
	best, bestDist, bestLCS := "", 1<<30, 0
	for _, k := range names {
		d := levenshtein(lower, k)
		kLast := k[strings.LastIndex(k, ".")+1:]
		// Only within the same table: "hypervisor.memory" is not the
		// [memory] table.
		if len(last) >= 3 && strings.Contains(kLast, last) && k[:len(k)-len(kLast)] == lower[:len(lower)-len(last)] {
			d = min(d, 1+(len(kLast)-len(last))/4)
		}
		l := lcs(lower, k)
		if d < bestDist || (d == bestDist && l > bestLCS) {
			best, bestDist, bestLCS = k, d, l
		}
	}
	if bestDist > max(2, len(key)/3) {
		return ""
	}
	return best
}

// lcs is the length of the longest common subsequence of a and b.
func lcs(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			if a[i-1] == b[j-1] {
				cur[j] = prev[j-1] + 1
			} else {
				cur[j] = max(prev[j], cur[j-1])
			}
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// keyTypes maps every key of the schema (tables included) to the TOML type
// it expects, read from Config's toml tags so it cannot drift.
func keyTypes() map[string]string {
	out := map[string]string{}
	walkKeys(reflect.TypeOf(Config{}), "", out)
	return out
}

var durationType = reflect.TypeOf(Duration{})

func walkKeys(t reflect.Type, prefix string, out map[string]string) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if !f.IsExported() || tag == "" || tag == "-" {
			continue
		}
		key := prefix + tag
		switch {
		case f.Type == durationType:
			out[key] = "duration"
		case f.Type.Kind() == reflect.Struct:
			out[key] = "table"
			walkKeys(f.Type, key+".", out)
		case f.Type.Kind() == reflect.String:
			out[key] = "string"
		case f.Type.Kind() >= reflect.Int && f.Type.Kind() <= reflect.Uint64:
			out[key] = "integer"
		case f.Type.Kind() == reflect.Bool:
			out[key] = "boolean"
		case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.String:
			out[key] = "array of strings"
		default:
			out[key] = f.Type.Kind().String()
		}
	}
}

// Marshal writes the configuration as TOML; reading the output with Load
// gives the same Config. berth env prints it.
func (c *Config) Marshal(w io.Writer) error {
	enc := toml.NewEncoder(w)
	enc.Indent = ""
	return enc.Encode(c)
}
