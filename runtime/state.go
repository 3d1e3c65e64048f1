package runtime

import (
	"time"
)

// State is a container's state as `runc state` and `runc list --format
// json` print it: the OCI state plus creation time and owner. Engines
// parse this JSON, so its shape is runc's, field for field.
type State struct {
	// OCIVersion is the runtime-spec version of the container's config.
	OCIVersion string `json:"ociVersion"`
	// ID is the container id.
	ID string `json:"id"`
	// Pid is the init process id in the caller's pid namespace; 0 once
	// the container has stopped.
	Pid int `json:"pid"`
	// Status is created, running, paused or stopped.
	Status string `json:"status"`
	// Bundle is the bundle directory the container was created from.
	Bundle string `json:"bundle"`
	// Rootfs is the absolute path of the root filesystem.
	Rootfs string `json:"rootfs"`
	// Created is when the container was created, in UTC.
	Created time.Time `json:"created"`
	// Annotations are the spec's annotations.
	Annotations map[string]string `json:"annotations,omitempty"`
	// Owner is the user owning the container's state directory.
	Owner string `json:"owner"`
}

// Status values of State.Status.
const (
	StatusCreated = "created"
	StatusRunning = "running"
	StatusPaused  = "paused"
	StatusStopped = "stopped"
)
