package image

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"

	"github.com/docker/distribution/registry/api/errcode"
	v2 "github.com/docker/distribution/registry/api/v2"
	"go.podman.io/image/v5/docker"
	"go.podman.io/image/v5/signature"
)

// Sentinel errors; the CRI layer turns them into gRPC status codes.
var (
	// ErrNotFound: no such image in the store.
	ErrNotFound = errors.New("image not found")
	// ErrUnknownImage: the registry has no such repository.
	ErrUnknownImage = errors.New("image does not exist in the registry")
	// ErrUnknownTag: the repository has no such tag or digest.
	ErrUnknownTag = errors.New("tag or digest does not exist in the registry")
	// ErrUnauthorized: credentials missing or refused.
	ErrUnauthorized = errors.New("registry refused the credentials")
	// ErrUnreachable: the registry could not be reached.
	ErrUnreachable = errors.New("registry unreachable")
	// ErrPlatform: the image has no variant for this node's platform.
	ErrPlatform = errors.New("image has no variant for this platform")
	// ErrDigestMismatch: content did not match its digest.
	ErrDigestMismatch = errors.New("content does not match its digest")
	// ErrDiskFull: the store ran out of space.
	ErrDiskFull = errors.New("no space left in the image store")
	// ErrInvalidReference: the name is not a valid image reference.
	ErrInvalidReference = errors.New("invalid image reference")
	// ErrBlocked: registries.conf or policy.json forbids the pull.
	ErrBlocked = errors.New("pull not allowed by registries.conf or policy.json")
	// ErrInUse: the image is used by a container.
	ErrInUse = errors.New("image is in use")
	// ErrBadImage: the image's manifest, config or layers are malformed.
	ErrBadImage = errors.New("malformed image")
)

// kindError gives an error one of the sentinel kinds, keeping its text.
type kindError struct {
	kind error
	err  error
}

func (e *kindError) Error() string        { return e.err.Error() }
func (e *kindError) Unwrap() error        { return e.err }
func (e *kindError) Is(target error) bool { return target == e.kind }

func withKind(kind, err error) error {
	if err == nil {
		return nil
	}
	var ke *kindError
	if errors.As(err, &ke) {
		return err
	}
	return &kindError{kind: kind, err: err}
}

// classifyPullError names what went wrong in a pull, from the registry's
// and the kernel's errors, in a way a person can act on.
func classifyPullError(err error) error {
	if err == nil {
		return nil
	}
	var ke *kindError
	if errors.As(err, &ke) {
		return err
	}
	var unauth docker.ErrUnauthorizedForCredentials
	if errors.As(err, &unauth) {
		return withKind(ErrUnauthorized, err)
	}
	var ec errcode.Error
	if errors.As(err, &ec) {
		switch ec.Code {
		case v2.ErrorCodeNameUnknown:
			return withKind(ErrUnknownImage, err)
		case v2.ErrorCodeManifestUnknown, v2.ErrorCodeBlobUnknown:
			return withKind(ErrUnknownTag, err)
		case errcode.ErrorCodeUnauthorized, errcode.ErrorCodeDenied:
			return withKind(ErrUnauthorized, err)
		}
	}
	if isGatewayError(err) {
		return withKind(ErrUnreachable, err)
	}
	if isDiskFull(err) {
		return withKind(ErrDiskFull, err)
	}
	var netErr net.Error
	var opErr *net.OpError
	if errors.As(err, &opErr) || errors.As(err, &netErr) {
		return withKind(ErrUnreachable, err)
	}
	for _, cut := range []error{syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.EHOSTUNREACH, syscall.ENETUNREACH,
		syscall.ETIMEDOUT, io.ErrUnexpectedEOF, os.ErrDeadlineExceeded} {
		if errors.Is(err, cut) {
			return withKind(ErrUnreachable, err)
		}
	}
	var rejected signature.PolicyRequirementError
	if errors.As(err, &rejected) {
		return withKind(ErrBlocked, err)
	}
	// Two refusals containers/image makes as plain text (fmt.Errorf with no
	// error to match): no variant for the platform in a manifest list or
	// image index (internal/manifest), and a registry blocked in
	// registries.conf (docker/docker_client.go).
	msg := err.Error()
	switch {
	case strings.Contains(msg, "no image found in manifest list for architecture"),
		strings.Contains(msg, "no image found in image index for architecture"):
		return withKind(ErrPlatform, err)
	case strings.Contains(msg, " is blocked in "):
		return withKind(ErrBlocked, err)
	}
	return err
}

// isGatewayError reports a gateway or an overloaded registry answering
// for a backend it cannot reach: for the puller, a registry out of reach,
// worth a retry.
func isGatewayError(err error) bool {
	var status docker.UnexpectedHTTPStatusError
	if !errors.As(err, &status) {
		return false
	}
	switch status.StatusCode {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// isDiskFull reports a write that failed for lack of space or quota.
func isDiskFull(err error) bool {
	var errno syscall.Errno
	return errors.As(err, &errno) && (errno == syscall.ENOSPC || errno == syscall.EDQUOT)
}

// malformed classifies an error of reading an image's manifest or config:
// one the registry or the store explains keeps its kind; any other is the
// image's own fault.
func malformed(err error) error {
	if err == nil {
		return nil
	}
	c := classifyPullError(err)
	var ke *kindError
	if errors.As(c, &ke) {
		return c
	}
	return withKind(ErrBadImage, err)
}

// storeIOError wraps an I/O error of a pull with what was being done,
// naming a full store as such.
func storeIOError(what string, err error) error {
	if isGatewayError(err) {
		return withKind(ErrUnreachable, err)
	}
	if isDiskFull(err) {
		return withKind(ErrDiskFull, fmt.Errorf("%s: the image store is full: %w", what, err))
	}
	return fmt.Errorf("%s: %w", what, err)
}
