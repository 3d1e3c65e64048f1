package cri

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/berth-runtime/berth/image"
	"github.com/berth-runtime/berth/runtime"
)

// Errors of this package; status codes are chosen from them only in
// toStatus, at the gRPC boundary.
var (
	errNotFound     = errors.New("not found")
	errInvalid      = errors.New("invalid request")
	errExists       = errors.New("already exists")
	errPrecondition = errors.New("not allowed in this state")
)

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
	}
	return status.Error(code, err.Error())
}

// newID returns a 64-hex-digit id, as other runtimes' ids look.
func newID() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
