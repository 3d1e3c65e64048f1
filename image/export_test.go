package image

// SetSyncFS replaces syncfs(2) for a test and returns the restore.
func SetSyncFS(f func(fd int) error) (restore func()) {
	old := syncFS
	syncFS = f
	return func() { syncFS = old }
}

// SetDefaultConfigPaths makes registriesConf and policy the paths whose
// absence means the defaults, for a test; it returns the restore.
func SetDefaultConfigPaths(registriesConf, policy string) (restore func()) {
	oldR, oldP := defaultRegistriesConf, defaultPolicyFile
	defaultRegistriesConf, defaultPolicyFile = registriesConf, policy
	return func() { defaultRegistriesConf, defaultPolicyFile = oldR, oldP }
}
