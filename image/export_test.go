package image

// SetSyncFS replaces syncfs(2) for a test and returns the restore.
func SetSyncFS(f func(fd int) error) (restore func()) {
	old := syncFS
	syncFS = f
	return func() { syncFS = old }
}
