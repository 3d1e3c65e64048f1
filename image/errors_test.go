package image

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/docker/distribution/registry/api/errcode"
	v2 "github.com/docker/distribution/registry/api/v2"
	"go.podman.io/image/v5/docker"
	"go.podman.io/image/v5/signature"
)

// classifyPullError gives each failure the libraries report its kind from
// the error's type or value, wrapped as containers/image wraps them; only
// the two refusals containers/image makes as plain text match by text.
func TestClassifyPullError(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("reading manifest latest in 127.0.0.1:5000/x: %w", err) }
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"name unknown", wrap(v2.ErrorCodeNameUnknown.WithMessage("repository name not known to registry")), ErrUnknownImage},
		{"manifest unknown", wrap(fmt.Errorf("%s%.0w", "manifest unknown", v2.ErrorCodeManifestUnknown.WithMessage("manifest unknown"))), ErrUnknownTag},
		{"denied", wrap(errcode.ErrorCodeDenied.WithMessage("requested access to the resource is denied")), ErrUnauthorized},
		{"bad credentials", docker.ErrUnauthorizedForCredentials{Err: errors.New("401")}, ErrUnauthorized},
		{"refused", wrap(&net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}), ErrUnreachable},
		{"reset mid-body", wrap(fmt.Errorf("read body: %w", syscall.ECONNRESET)), ErrUnreachable},
		{"cut short", wrap(io.ErrUnexpectedEOF), ErrUnreachable},
		{"disk full", wrap(&os.PathError{Op: "write", Path: "/x", Err: syscall.ENOSPC}), ErrDiskFull},
		{"policy", wrap(signature.PolicyRequirementError("Running image docker://x is rejected by policy.")), ErrBlocked},
		{"blocked registry", errors.New("registry 127.0.0.1:5000 is blocked in /etc/containers/registries.conf or /etc/containers/registries.conf.d"), ErrBlocked},
		{"platform", wrap(errors.New(`no image found in manifest list for architecture "amd64", variant "", OS "linux"`)), ErrPlatform},
		{"other", wrap(errors.New("something else")), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := classifyPullError(tc.err)
			if got.Error() != tc.err.Error() {
				t.Errorf("text changed: %q, was %q", got, tc.err)
			}
			for _, kind := range []error{ErrUnknownImage, ErrUnknownTag, ErrUnauthorized, ErrUnreachable, ErrDiskFull, ErrBlocked, ErrPlatform} {
				if errors.Is(got, kind) != (kind == tc.want) {
					t.Errorf("errors.Is(%q, %v) = %v", got, kind, !(kind == tc.want))
				}
			}
		})
	}
}
