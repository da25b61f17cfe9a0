// Package kmod loads kernel modules in the guest, the part of modprobe the
// agent needs: no modprobe, udev or modules.dep exist in the initramfs.
//
// The host-side builder (internal/guest) resolves dependencies and writes
// /etc/berth/modules.load in load order, so loading is a loop over that file
// with finit_module(2). What modprobe adds on top, and this package copies,
// is passing module parameters from the kernel command line: the kernel
// applies "mod.param=value" only to built-in modules, and a module loaded
// later by finit_module gets only the parameters the caller passes.
package kmod

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ListPath is where the initramfs lists the modules to load. It must match
// guest.ModulesListPath, which writes the file (a test checks it).
const ListPath = "/etc/berth/modules.load"

// ModulesDir returns /lib/modules/<release> for the running kernel.
func ModulesDir() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	return "/lib/modules/" + unix.ByteSliceToString(u.Release[:]), nil
}

// finitModule is unix.FinitModule; tests replace it.
var finitModule = func(fd int, params string, flags int) error {
	return unix.FinitModule(fd, params, flags)
}

// LoadList loads the modules listed in listPath (one path per line,
// relative to modulesDir, dependencies first; blank lines and lines starting
// with '#' are skipped), passing each the parameters cmdline gives it. A
// module that is already loaded counts as loaded. A module named in
// module_blacklist= or modprobe.blacklist= on cmdline is skipped, as
// modprobe skips it. It stops at the first module that fails, since later
// ones may depend on it.
func LoadList(listPath, modulesDir string, cmdline string) error {
	data, err := os.ReadFile(listPath)
	if err != nil {
		return fmt.Errorf("read module list: %w", err)
	}
	blacklist := blacklisted(cmdline)
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		rel := strings.TrimSpace(sc.Text())
		if rel == "" || strings.HasPrefix(rel, "#") {
			continue
		}
		name := moduleName(rel)
		if blacklist[name] {
			continue
		}
		if err := load(filepath.Join(modulesDir, rel), ParamsFromCmdline(cmdline, name)); err != nil {
			return fmt.Errorf("load module %s: %w", name, err)
		}
	}
	return sc.Err()
}

func load(file, params string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	err = finitModule(int(f.Fd()), params, 0)
	switch {
	case err == nil, errors.Is(err, unix.EEXIST):
		return nil
	case errors.Is(err, unix.ENOENT):
		// finit_module reports an unresolved symbol as ENOENT.
		return fmt.Errorf("%s: %w (unknown symbol: a dependency is missing from %s or listed after this module; rebuild the guest image)", file, err, ListPath)
	case errors.Is(err, unix.ENOEXEC):
		return fmt.Errorf("%s: %w (not a module for this kernel: the initramfs and kernel come from different builds; rebuild the guest image)", file, err)
	case errors.Is(err, unix.EKEYREJECTED), errors.Is(err, unix.EPERM):
		return fmt.Errorf("%s: %w (module signature rejected or module loading disabled)", file, err)
	default:
		return fmt.Errorf("%s: %w", file, err)
	}
}

// moduleName is the kernel's name for a module file: base name without
// .ko, with '-' as '_'.
func moduleName(p string) string {
	b := path.Base(p)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return normalize(b)
}

// normalize makes module names comparable: the kernel and modprobe treat
// '-' and '_' in them as the same character.
func normalize(s string) string { return strings.ReplaceAll(s, "-", "_") }

// ParamsFromCmdline returns the parameters cmdline gives module, in the form
// finit_module takes ("p1=v1 p2" with values quoted when they hold spaces),
// as modprobe does with /proc/cmdline: every "module.param[=value]" word
// whose module part names module, comparing '-' and '_' as equal.
// Arguments after a lone "--" belong to init and are ignored, as the kernel
// ignores them.
func ParamsFromCmdline(cmdline, module string) string {
	module = normalize(module)
	var out []string
	for _, a := range splitCmdline(cmdline) {
		mod, param, ok := strings.Cut(a.param, ".")
		if !ok || param == "" || normalize(mod) != module {
			continue
		}
		switch {
		case !a.hasValue:
			out = append(out, param)
		case strings.ContainsAny(a.value, " \t\n"):
			out = append(out, param+`="`+a.value+`"`)
		default:
			out = append(out, param+"="+a.value)
		}
	}
	return strings.Join(out, " ")
}

// blacklisted returns the modules named in module_blacklist= (which the
// kernel enforces by failing finit_module with EPERM) and
// modprobe.blacklist= (which modprobe honours).
func blacklisted(cmdline string) map[string]bool {
	set := map[string]bool{}
	for _, a := range splitCmdline(cmdline) {
		if a.param != "module_blacklist" && a.param != "modprobe.blacklist" {
			continue
		}
		for _, m := range strings.Split(a.value, ",") {
			if m = strings.TrimSpace(m); m != "" {
				set[normalize(m)] = true
			}
		}
	}
	return set
}

type cmdlineArg struct {
	param, value string
	hasValue     bool
}

// splitCmdline splits a kernel command line the way the kernel's
// next_arg() does: words are separated by white space outside double
// quotes; the first '=' splits name from value; quotes around the value
// (or around the whole word) are dropped. It stops at "--".
func splitCmdline(s string) []cmdlineArg {
	var args []cmdlineArg
	isSpace := func(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f' }
	for {
		for len(s) > 0 && isSpace(s[0]) {
			s = s[1:]
		}
		if s == "" {
			return args
		}
		quoted := false
		if s[0] == '"' {
			s = s[1:]
			quoted = true
		}
		inQuote, equals, i := quoted, -1, 0
		for ; i < len(s); i++ {
			if isSpace(s[i]) && !inQuote {
				break
			}
			if equals < 0 && s[i] == '=' {
				equals = i
			}
			if s[i] == '"' {
				inQuote = !inQuote
			}
		}
		word := s[:i]
		s = s[i:]
		var a cmdlineArg
		if equals < 0 {
			a.param = word
			if quoted {
				a.param = strings.TrimSuffix(a.param, `"`)
			}
		} else {
			a.param, a.value, a.hasValue = word[:equals], word[equals+1:], true
			if strings.HasPrefix(a.value, `"`) {
				a.value = strings.TrimSuffix(a.value[1:], `"`)
			} else if quoted {
				a.value = strings.TrimSuffix(a.value, `"`)
			}
		}
		if a.param == "--" && !a.hasValue {
			return args
		}
		args = append(args, a)
	}
}
