//go:build tools

// Package tools pins gotestsum, which runs berth's tests for make test:
// it prints each package's result, the output of failures, and a summary
// that lists every skipped test with its reason.
package tools

import _ "gotest.tools/gotestsum"
