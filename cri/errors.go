package cri

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/berth-runtime/berth/image"
	"github.com/berth-runtime/berth/internal/shim"
	"github.com/berth-runtime/berth/runtime"
)

// Errors of this package; status codes are chosen from them only in
// toStatus, at the gRPC boundary.
var (
	errNotFound     = errors.New("not found")
	errInvalid      = errors.New("invalid request")
	errExists       = errors.New("already exists")
	errPrecondition = errors.New("not allowed in this state")
	errExhausted    = errors.New("out of a resource")
	errDenied       = errors.New("denied")
)

// kindError gives an error that has no kind of its own (the text of the
// runtime's init, say) one, without changing its message.
type kindError struct{ kind, err error }

func (e *kindError) Error() string   { return e.err.Error() }
func (e *kindError) Unwrap() []error { return []error{e.kind, e.err} }

// runtimeFailure classifies an error of the container runtime (the berth
// CLI and libcontainer's init, run by the shim) by what the kernel said,
// so that a CRI client never gets Unknown for a container that could not
// be made or started on this node: a path or program the request names
// that is missing or wrong is InvalidArgument, memory, pids, files or
// disk running out ResourceExhausted, a refusal by the kernel
// PermissionDenied, anything else FailedPrecondition. An error that has a
// kind already keeps it. By its text, because that is all there is: the
// container's init reports its failure to libcontainer as a message over
// its sync pipe, and no errno crosses it (runc and CRI-O read the same
// messages).
func runtimeFailure(err error) error {
	if err == nil || hasKind(err) {
		return err
	}
	msg := strings.ToLower(err.Error())
	kind := errPrecondition
	switch {
	case containsAny(msg, "no such file or directory", "executable file not found", "not a directory",
		"is a directory", "exec format error", "invalid argument", "no such device"):
		kind = errInvalid
	case containsAny(msg, "cannot allocate memory", "resource temporarily unavailable", "no space left",
		"too many open files", "disk quota exceeded", "out of memory"):
		kind = errExhausted
	case containsAny(msg, "permission denied", "operation not permitted"):
		kind = errDenied
	}
	return &kindError{kind: kind, err: err}
}

// hasKind: toStatus would give err a code other than Unknown.
func hasKind(err error) bool {
	_, ok := status.FromError(err)
	return ok || codeOf(err) != codes.Unknown
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

func notFoundf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errNotFound}, args...)...)
}

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errInvalid}, args...)...)
}

func preconditionf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errPrecondition}, args...)...)
}

// toStatus turns an error into a gRPC status with the code the CRI client
// can act on.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codeOf(err), err.Error())
}

// codeOf is the gRPC code of an error by its kind; Unknown if it has none.
func codeOf(err error) codes.Code {
	code := codes.Unknown
	switch {
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, errNotFound), errors.Is(err, image.ErrNotFound), errors.Is(err, runtime.ErrNotExist),
		errors.Is(err, image.ErrUnknownImage), errors.Is(err, image.ErrUnknownTag):
		code = codes.NotFound
	case errors.Is(err, errInvalid), errors.Is(err, image.ErrInvalidReference), errors.Is(err, runtime.ErrInvalidSpec):
		code = codes.InvalidArgument
	case errors.Is(err, errExists), errors.Is(err, runtime.ErrExist), errors.Is(err, image.ErrRootfsExists):
		code = codes.AlreadyExists
	case errors.Is(err, errPrecondition), errors.Is(err, runtime.ErrState), errors.Is(err, image.ErrPlatform):
		code = codes.FailedPrecondition
	case errors.Is(err, image.ErrUnauthorized):
		code = codes.Unauthenticated
	case errors.Is(err, image.ErrBlocked):
		code = codes.PermissionDenied
	case errors.Is(err, image.ErrUnreachable):
		code = codes.Unavailable
	case errors.Is(err, image.ErrDiskFull):
		code = codes.ResourceExhausted
	case errors.Is(err, image.ErrDigestMismatch), errors.Is(err, image.ErrBadImage):
		code = codes.DataLoss
	case errors.Is(err, errExhausted):
		code = codes.ResourceExhausted
	case errors.Is(err, errDenied):
		code = codes.PermissionDenied
	case errors.Is(err, shim.ErrUnavailable):
		code = codes.Unavailable
	}
	return code
}

// newID returns a 64-hex-digit id, as other runtimes' ids look.
func newID() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
