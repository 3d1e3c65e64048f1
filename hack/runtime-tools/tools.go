//go:build tools

// Package tools pins the runtime-tools programs built by build.sh.
package tools

import (
	_ "github.com/opencontainers/runtime-tools/cmd/runtimetest"
	_ "github.com/opencontainers/runtime-tools/validation/util"
)
