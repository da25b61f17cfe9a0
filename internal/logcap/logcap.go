// Package logcap writes a log file that never grows past a size limit: a
// write that would cross the limit first moves the file to <path>.1
// (replacing the previous one) and starts a new file, so the two together
// hold at most twice the limit and always the most recent output.
//
// It exists for what a guest writes into host files (its serial console,
// virtiofsd's messages about its requests): the guest is hostile and the
// files live on /run, a tmpfs counted against host memory.
package logcap

import (
	"fmt"
	"os"
	"sync"
)

// File is a size-capped log file. It is safe for concurrent use.
type File struct {
	path     string
	maxBytes int64

	mu   sync.Mutex
	f    *os.File
	size int64
	err  error // sticky: once rotation fails, writes are dropped
}

// Create truncates or creates path (mode 0640) and returns a File that
// keeps it, with <path>.1, within maxBytes each. maxBytes must be positive.
func Create(path string, maxBytes int64) (*File, error) {
	if maxBytes <= 0 {
		return nil, fmt.Errorf("log %s: size limit %d must be positive", path, maxBytes)
	}
	os.Remove(path + ".1")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return nil, err
	}
	return &File{path: path, maxBytes: maxBytes, f: f}, nil
}

// Write appends p, rotating first if p would cross the limit. A single
// write larger than the limit keeps only its last maxBytes. Write never
// fails for the caller (a log must not stop the program feeding it): it
// always reports len(p) written, and after a failed rotation drops output.
func (l *File) Write(p []byte) (int, error) {
	n := len(p)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil || l.f == nil {
		return n, nil
	}
	if int64(len(p)) > l.maxBytes {
		p = p[int64(len(p))-l.maxBytes:]
	}
	if l.size+int64(len(p)) > l.maxBytes {
		if err := l.rotate(); err != nil {
			l.err = err
			return n, nil
		}
	}
	w, _ := l.f.Write(p)
	l.size += int64(w)
	return n, nil
}

func (l *File) rotate() error {
	l.f.Close()
	l.f = nil
	if err := os.Rename(l.path, l.path+".1"); err != nil && !os.IsNotExist(err) {
		return err
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	l.f, l.size = f, 0
	return nil
}

// Close closes the file; later writes are dropped.
func (l *File) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// Name is the path of the current log file.
func (l *File) Name() string { return l.path }
