package runtime

import (
	"errors"

	"github.com/opencontainers/runc/libcontainer"
)

var (
	// ErrNotExist is returned for an unknown container id.
	ErrNotExist = errors.New("container does not exist")
	// ErrExist is returned when a container id is already in use.
	ErrExist = errors.New("container already exists")
	// ErrNotRunning is returned for a signal to a container with no
	// running init process.
	ErrNotRunning = errors.New("container is not running")
	// ErrInvalidSpec marks a bundle or spec that cannot be run as given.
	ErrInvalidSpec = errors.New("invalid container spec")
	// ErrState marks an operation that the container's current status
	// does not allow (start a stopped container, delete a running one).
	ErrState = errors.New("operation not allowed in this container state")
)

// kindError gives an error one of this package's sentinel kinds while
// keeping its own message and chain.
type kindError struct {
	kind error
	err  error
}

func (e *kindError) Error() string        { return e.err.Error() }
func (e *kindError) Unwrap() error        { return e.err }
func (e *kindError) Is(target error) bool { return target == e.kind }

// withKind marks err as being of kind.
func withKind(kind, err error) error {
	if err == nil {
		return nil
	}
	return &kindError{kind: kind, err: err}
}

// translate maps libcontainer's sentinel errors to this package's.
func translate(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, libcontainer.ErrNotExist):
		return withKind(ErrNotExist, err)
	case errors.Is(err, libcontainer.ErrExist):
		return withKind(ErrExist, err)
	case errors.Is(err, libcontainer.ErrNotRunning):
		return withKind(ErrNotRunning, err)
	}
	return err
}
