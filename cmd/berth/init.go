package main

import "github.com/berth-runtime/berth/runtime"

// When berth is re-executed as a container's init ("berth init"), the
// container is set up here, before main and before any flag parsing, and
// this process becomes the user's process.
func init() {
	if runtime.IsInit() {
		runtime.Init()
	}
}
