package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeAtomically updates a volume as the kubelet's atomic writer does for
// ConfigMap, Secret and projected (service account token) volumes: the
// files are symlinks through "..data" to a timestamped directory, and an
// update writes a new directory, points "..data_tmp" at it, renames that
// over "..data" and removes the old directory.
func writeAtomically(t *testing.T, vol, dir, token string) {
	t.Helper()
	if err := os.Mkdir(filepath.Join(vol, dir), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(vol, dir, "token"), []byte(token), 0o644); err != nil {
		t.Fatal(err)
	}
	old, _ := os.Readlink(filepath.Join(vol, "..data"))
	if err := os.Symlink(dir, filepath.Join(vol, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(vol, "..data_tmp"), filepath.Join(vol, "..data")); err != nil {
		t.Fatal(err)
	}
	if old != "" {
		if err := os.RemoveAll(filepath.Join(vol, old)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Lstat(filepath.Join(vol, "token")); os.IsNotExist(err) {
		if err := os.Symlink("..data/token", filepath.Join(vol, "token")); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCtrVolumeUpdatedOnTheHostIsSeenInTheGuest: a read-only volume that
// the host updates while the container runs shows the new contents in the
// guest, as under runc: a kubelet-style atomic update (how a rotated
// service account token, a Secret or a ConfigMap arrives) and a file
// rewritten in place (a hostPath volume).
func TestCtrVolumeUpdatedOnTheHostIsSeenInTheGuest(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	vol := t.TempDir()
	writeAtomically(t, vol, "..2026_12_04_first", "first")
	if err := os.WriteFile(filepath.Join(vol, "plain"), []byte("before"), 0o644); err != nil {
		t.Fatal(err)
	}
	const id = "volume-update"
	mustCtr(t, "run", "-d", "--runtime", berthRuntime,
		"--mount", "type=bind,src="+vol+",dst=/secret,options=rbind:ro", busyboxImage, id, "sleep", "1000")
	defer cleanupTask(t, id)
	read := func(name string) string {
		r := ctr(t, "task", "exec", "--exec-id", "read-"+name+"-"+time.Now().Format("150405.000000"), id, "cat", "/secret/"+name)
		return strings.TrimSpace(r.stdout)
	}
	if got := read("token"); got != "first" {
		t.Fatalf("token before the update: %q", got)
	}
	waitFor := func(what, name, want string) {
		t.Helper()
		start := time.Now()
		for got := read(name); got != want; got = read(name) {
			if time.Since(start) > 15*time.Second {
				t.Fatalf("%s: the guest still reads %q after %s, want %q", what, got, time.Since(start).Round(time.Millisecond), want)
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Logf("%s: seen in the guest after %s", what, time.Since(start).Round(time.Millisecond))
	}
	writeAtomically(t, vol, "..2026_12_04_second", "second")
	waitFor("atomic update", "token", "second")
	if err := os.WriteFile(filepath.Join(vol, "plain"), []byte("after"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor("file rewritten in place", "plain", "after")
}
