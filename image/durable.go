package image

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// What the store lists is on disk: every file a record names is synced
// before the record commits (bbolt syncs its own file at commit), so that
// after a power cut the store never lists a layer whose files are empty
// or missing. containerd does the same for its content blobs.

// syncFS is syncfs(2), a variable so that a test can watch the order of
// syncs and commits.
var syncFS = func(fd int) error { return unix.Syncfs(fd) }

// syncTree makes everything written under dir durable. One syncfs(2) of
// the file system is cheaper than an fsync of each file of a layer of
// thousands (and it waits for the layer's data in one go, not file by
// file); it also flushes other writers' dirty data, which they would
// have flushed soon anyway.
func syncTree(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := syncFS(int(f.Fd())); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// syncDir makes a directory's entries durable (a rename into it).
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// writeFileSynced writes data to path through a synced temporary file in
// tmpDir and a rename, then syncs path's directory: path holds either
// nothing or all of data, also after a power cut.
func writeFileSynced(tmpDir, path string, data []byte) error {
	f, err := os.CreateTemp(tmpDir, "blob-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	if _, err := f.Write(data); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o600)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(path))
}
