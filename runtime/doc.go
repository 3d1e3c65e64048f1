// Package runtime is berth's container core: OCI bundles in, running
// containers out, on top of runc's libcontainer.
//
// It turns an OCI runtime spec into a libcontainer configuration, creates,
// starts, signals, pauses, updates and deletes containers kept under one
// state directory (like one `runc --root`), runs extra processes in them,
// and writes the hardened default spec. It knows nothing of gRPC,
// Kubernetes or images: the CLI, the shim and the CRI server all stand on
// it.
//
// Any binary that starts containers through this package must call Init
// first thing when it is re-executed as the container's init (argv[1] ==
// "init"); see Init.
package runtime
