package logcap

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestFileStaysWithinLimitAndKeepsTheLatestOutput(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	l, err := Create(path, 1000)
	if err != nil {
		t.Fatal(err)
	}
	line := []byte("0123456789012345678901234567890123456789\n") // 41 bytes
	for i := 0; i < 10000; i++ {
		if n, err := l.Write(line); n != len(line) || err != nil {
			t.Fatalf("write %d: %d, %v", i, n, err)
		}
	}
	l.Write([]byte("last\n"))
	big := bytes.Repeat([]byte("x"), 5000)
	l.Write(big)
	l.Write([]byte("tail\n"))
	l.Close()
	cur, _ := os.ReadFile(path)
	old, _ := os.ReadFile(path + ".1")
	if len(cur) > 1000 || len(old) > 1000 {
		t.Fatalf("sizes %d and %d, want at most 1000 each", len(cur), len(old))
	}
	if !bytes.HasSuffix(cur, []byte("tail\n")) {
		t.Errorf("current file ends %q, want the last write", cur[max(0, len(cur)-20):])
	}
	if !bytes.Equal(old, bytes.Repeat([]byte("x"), 1000)) {
		t.Errorf("rotated file holds %d bytes, want the last 1000 of the oversized write", len(old))
	}
	if n, _ := l.Write(line); n != len(line) {
		t.Errorf("write after close reports %d", n)
	}
}

func TestCreateTruncatesAndRejectsNoLimit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.log")
	os.WriteFile(path, []byte("old"), 0o644)
	os.WriteFile(path+".1", []byte("older"), 0o644)
	l, err := Create(path, 10)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if b, _ := os.ReadFile(path); len(b) != 0 {
		t.Errorf("Create kept %q", b)
	}
	if _, err := os.Stat(path + ".1"); !os.IsNotExist(err) {
		t.Errorf("Create kept %s.1", path)
	}
	if _, err := Create(path, 0); err == nil {
		t.Error("Create with no limit succeeded")
	}
}
