//go:build tools

// Package tools pins checkpointctl, the checkpoint-restore project's
// reader of checkpoint archives (CRI-O's, containerd's, Podman's): the
// CRI suite has it show berth's archives, in the VM tier where CRIU runs.
package tools

import _ "github.com/checkpoint-restore/checkpointctl"
