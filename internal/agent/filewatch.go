package agent

import (
	"encoding/binary"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// fileWatch reports modifications of one file (a cgroup v2 file such as
// memory.events, which the kernel marks modified when its values
// change). The file may not exist yet: each ok() call tries to watch it
// again until it does, and a file that goes (its cgroup removed) is
// watched afresh once it is back.
type fileWatch struct {
	path    string
	changed chan struct{}

	mu      sync.Mutex
	f       *os.File // the inotify instance; nil if inotify failed
	fd      int      // f's descriptor (f.Fd() would make f blocking)
	watched bool
}

func newFileWatch(path string) *fileWatch {
	w := &fileWatch{path: path, changed: make(chan struct{}, 1)}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return w
	}
	w.f, w.fd = os.NewFile(uintptr(fd), "inotify"), fd
	go w.read()
	return w
}

// ok reports whether the file is being watched, trying to watch it if
// it is not.
func (w *fileWatch) ok() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return false
	}
	if !w.watched {
		_, err := unix.InotifyAddWatch(w.fd, w.path, unix.IN_MODIFY)
		w.watched = err == nil
	}
	return w.watched
}

// read turns inotify events into wake-ups; the watch's removal (the file
// deleted) makes ok() watch it again.
func (w *fileWatch) read() {
	buf := make([]byte, 4096)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			return // closed
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			// struct inotify_event: wd, mask, cookie, len, name.
			mask := binary.NativeEndian.Uint32(buf[off+4:])
			nameLen := binary.NativeEndian.Uint32(buf[off+12:])
			if mask&unix.IN_IGNORED != 0 {
				w.mu.Lock()
				w.watched = false
				w.mu.Unlock()
			}
			off += unix.SizeofInotifyEvent + int(nameLen)
		}
		select {
		case w.changed <- struct{}{}:
		default:
		}
	}
}

func (w *fileWatch) close() {
	if w.f != nil {
		w.f.Close()
	}
}
