package runtime

import (
	"os"

	"github.com/opencontainers/runc/libcontainer"
	// nsexec: the C constructor that joins and creates namespaces before
	// the Go runtime of a re-executed init starts.
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
)

// InitArg is argv[1] of a binary re-executed as a container's init.
const InitArg = "init"

// IsInit reports whether this process was started as a container's init.
func IsInit() bool {
	return len(os.Args) > 1 && os.Args[1] == InitArg
}

// Init is the Go half of a container's init process. Call it from an
// init() function of package main when IsInit() is true, before anything
// else: it sets up the container from inside and execs the user process,
// and it never returns.
func Init() {
	libcontainer.Init()
}
