package guest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// debPackage is one concrete version of a Debian package, as apt-cache
// describes it.
type debPackage struct {
	Name    string
	Version string
	Arch    string
	SHA256  string
}

// fileName is the name `apt-get download` gives the .deb: apt escapes the
// epoch's colon as %3a.
func (p debPackage) fileName() string {
	return fmt.Sprintf("%s_%s_%s.deb", p.Name, strings.ReplaceAll(p.Version, ":", "%3a"), p.Arch)
}

// packageSource finds, downloads and unpacks kernel packages. Build uses
// apt; tests use a fake that makes a kernel tree in a temporary directory.
type packageSource interface {
	// resolve turns a package name (a meta package such as
	// linux-image-cloud-amd64, or a concrete linux-image-<kver>) into the
	// concrete package holding the kernel.
	resolve(ctx context.Context, name string, progress func(string, ...any)) (debPackage, error)
	// lookup returns the candidate version of a package by its exact name
	// (the kernel source, build tools), running apt-get update once if apt
	// does not know it.
	lookup(ctx context.Context, name string) (debPackage, error)
	// fetch returns the path of the package's .deb in cacheDir, downloading
	// it unless a copy with the right hash is already there.
	fetch(ctx context.Context, p debPackage, cacheDir string) (path string, cached bool, err error)
	// extract unpacks the .deb into dir.
	extract(ctx context.Context, deb, dir string) error
}

// aptSource is the packageSource of a Debian host: apt-cache, apt-get
// download and dpkg-deb -x. It never installs anything on the host.
type aptSource struct{}

// concreteImage matches the name of a package that holds a kernel image
// (linux-image-6.1.0-56-cloud-amd64), as opposed to a meta package
// (linux-image-cloud-amd64) that depends on one.
var concreteImage = regexp.MustCompile(`^linux-image-[0-9]`)

func (aptSource) resolve(ctx context.Context, name string, progress func(string, ...any)) (debPackage, error) {
	fields, err := aptShow(ctx, name)
	if errors.Is(err, errUnknownPackage) {
		// A fresh host (or a container image) often has empty apt lists.
		progress("package %s unknown to apt: running apt-get update", name)
		if out, uerr := exec.CommandContext(ctx, "apt-get", "update").CombinedOutput(); uerr != nil {
			return debPackage{}, fmt.Errorf("apt-get update (to find %s): %w\n%s", name, uerr, tail(out))
		}
		fields, err = aptShow(ctx, name)
	}
	if err != nil {
		return debPackage{}, err
	}
	// Follow meta packages down to the one that holds the kernel; Debian's
	// meta packages pin the exact version ("(= 6.1.192-2)").
	for depth := 0; depth < 3; depth++ {
		dep, ver := kernelDependency(fields["Depends"])
		if dep == "" || dep == fields["Package"] {
			break
		}
		query := dep
		if ver != "" {
			query = dep + "=" + ver
		}
		if fields, err = aptShow(ctx, query); err != nil {
			return debPackage{}, fmt.Errorf("resolve %s (a dependency of %s): %w", query, name, err)
		}
	}
	p := debPackage{Name: fields["Package"], Version: fields["Version"], Arch: fields["Architecture"], SHA256: fields["SHA256"]}
	if !concreteImage.MatchString(p.Name) || p.Version == "" || p.Arch == "" {
		return debPackage{}, fmt.Errorf("package %s does not resolve to a linux-image-<version> package (got %q): set guest.kernel_package to a Debian kernel image package such as linux-image-cloud-amd64", name, p.Name)
	}
	return p, nil
}

func (aptSource) lookup(ctx context.Context, name string) (debPackage, error) {
	fields, err := aptShow(ctx, name)
	if errors.Is(err, errUnknownPackage) {
		if out, uerr := exec.CommandContext(ctx, "apt-get", "update").CombinedOutput(); uerr != nil {
			return debPackage{}, fmt.Errorf("apt-get update (to find %s): %w\n%s", name, uerr, tail(out))
		}
		fields, err = aptShow(ctx, name)
	}
	if err != nil {
		return debPackage{}, err
	}
	return debPackage{Name: fields["Package"], Version: fields["Version"], Arch: fields["Architecture"], SHA256: fields["SHA256"]}, nil
}

// kernelDependency returns the first linux-image-<version> package named in
// a Depends field, and the version it is pinned to with "=", if any.
func kernelDependency(depends string) (name, version string) {
	for _, clause := range strings.Split(depends, ",") {
		for _, alt := range strings.Split(clause, "|") {
			alt = strings.TrimSpace(alt)
			n, rest, _ := strings.Cut(alt, " ")
			n, _, _ = strings.Cut(n, ":") // drop an ":any" arch qualifier
			if !concreteImage.MatchString(n) {
				continue
			}
			rest = strings.TrimSpace(rest)
			if v, ok := strings.CutPrefix(rest, "(="); ok {
				version = strings.TrimSpace(strings.TrimSuffix(v, ")"))
			}
			return n, version
		}
	}
	return "", ""
}

var errUnknownPackage = errors.New("unknown package")

// aptShow runs apt-cache show for the candidate version of query (or the
// exact version in "name=version") and returns the first record's fields.
func aptShow(ctx context.Context, query string) (map[string]string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "apt-cache", "show", "--no-all-versions", query)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if errors.Is(err, exec.ErrNotFound) {
		return nil, fmt.Errorf("apt-cache not found: berth guest build needs a Debian-based host (or build the guest image elsewhere and set guest.kernel and guest.initrd): %w", err)
	}
	fields := parseControl(&stdout)
	if err != nil || fields["Package"] == "" {
		msg := strings.TrimSpace(stderr.String())
		if strings.Contains(msg, "No packages found") || strings.Contains(msg, "Unable to locate") || fields["Package"] == "" {
			return nil, fmt.Errorf("apt-cache show %s: %w (%s)", query, errUnknownPackage, msg)
		}
		return nil, fmt.Errorf("apt-cache show %s: %w: %s", query, err, msg)
	}
	return fields, nil
}

// parseControl reads the first stanza of Debian control-file text (as
// printed by apt-cache show). Continuation lines are dropped; none of the
// fields used here have them.
func parseControl(r io.Reader) map[string]string {
	fields := map[string]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			if len(fields) > 0 {
				break
			}
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	return fields
}

func (aptSource) fetch(ctx context.Context, p debPackage, cacheDir string) (string, bool, error) {
	deb := filepath.Join(cacheDir, p.fileName())
	if err := verifySHA256(deb, p.SHA256); err == nil {
		return deb, true, nil
	}
	os.Remove(deb) // a partial or stale copy from an interrupted run
	// apt-get download writes into the working directory. Running as root,
	// apt prints a warning that it could not drop privileges to _apt for a
	// directory _apt cannot write; that is harmless.
	cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", p.Name+"="+p.Version)
	cmd.Dir = cacheDir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", false, fmt.Errorf("apt-get download %s=%s: %w\n%s", p.Name, p.Version, err, tail(out))
	}
	if err := verifySHA256(deb, p.SHA256); err != nil {
		os.Remove(deb)
		return "", false, fmt.Errorf("downloaded %s: %w", p.fileName(), err)
	}
	return deb, false, nil
}

func (aptSource) extract(ctx context.Context, deb, dir string) error {
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, dir).CombinedOutput(); err != nil {
		return fmt.Errorf("dpkg-deb -x %s: %w\n%s", deb, err, tail(out))
	}
	return nil
}

// verifySHA256 checks a file against the hash apt publishes for it. An
// empty want (a package source that does not publish one) accepts any file
// that exists.
func verifySHA256(file, want string) error {
	got, err := fileSHA256(file)
	if err != nil {
		return err
	}
	if want != "" && !strings.EqualFold(got, want) {
		return fmt.Errorf("sha256 %s, want %s", got, want)
	}
	return nil
}

func fileSHA256(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// tail keeps the end of a command's output for an error message.
func tail(out []byte) string {
	const max = 2000
	s := strings.TrimSpace(string(out))
	if len(s) > max {
		s = "..." + s[len(s)-max:]
	}
	return s
}
