package lazy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"time"

	"go.podman.io/image/v5/types"
)

// Fetcher reads byte ranges of one blob.
type Fetcher interface {
	// Fetch returns the n bytes of the blob at off, or an error: never
	// fewer bytes without one.
	Fetch(ctx context.Context, off, n int64) ([]byte, error)
}

// DefaultFetchTimeout bounds one range request: a registry that stops
// answering makes a read fail after it rather than hang the reader.
const DefaultFetchTimeout = 30 * time.Second

// SourceFetcher reads ranges of a blob through a containers/image source,
// so that a lazy read reaches the registry exactly as the pull's GetBlob
// does: the same registries.conf mirrors (and fallback among them),
// credentials, TLS settings and retries. containers/image offers ranged
// reads (GetBlobAt, what its partial pulls use) only to its own packages,
// through a parameter type of an internal package; SourceFetcher calls it
// by reflection, and fails to construct, rather than at a read, when a
// source has no such method or containers/image changed its shape.
func SourceFetcher(src types.ImageSource, info types.BlobInfo, timeout time.Duration) (Fetcher, error) {
	m := reflect.ValueOf(src).MethodByName("GetBlobAt")
	if !m.IsValid() {
		return nil, fmt.Errorf("image source %s cannot read byte ranges", transportName(src))
	}
	chunks, err := chunkSliceType(m.Type())
	if err != nil {
		return nil, fmt.Errorf("image source %s: GetBlobAt: %w", transportName(src), err)
	}
	if timeout <= 0 {
		timeout = DefaultFetchTimeout
	}
	return &sourceFetcher{getBlobAt: m, chunks: chunks, info: info, timeout: timeout}, nil
}

func transportName(src types.ImageSource) string {
	if ref := src.Reference(); ref != nil && ref.Transport() != nil {
		return ref.Transport().Name()
	}
	return fmt.Sprintf("%T", src)
}

var (
	contextType   = reflect.TypeFor[context.Context]()
	blobInfoType  = reflect.TypeFor[types.BlobInfo]()
	streamsType   = reflect.TypeFor[chan io.ReadCloser]()
	errorsType    = reflect.TypeFor[chan error]()
	errorType     = reflect.TypeFor[error]()
	uint64Type    = reflect.TypeFor[uint64]()
	errWrongShape = errors.New("not func(context.Context, types.BlobInfo, []struct{Offset, Length uint64}) (chan io.ReadCloser, chan error, error)")
)

// chunkSliceType checks GetBlobAt's signature and returns the type of its
// chunk list.
func chunkSliceType(t reflect.Type) (reflect.Type, error) {
	if t.NumIn() != 3 || t.NumOut() != 3 || t.In(0) != contextType || t.In(1) != blobInfoType ||
		t.Out(0) != streamsType || t.Out(1) != errorsType || t.Out(2) != errorType {
		return nil, errWrongShape
	}
	s := t.In(2)
	if s.Kind() != reflect.Slice || s.Elem().Kind() != reflect.Struct {
		return nil, errWrongShape
	}
	for _, name := range []string{"Offset", "Length"} {
		if f, ok := s.Elem().FieldByName(name); !ok || f.Type != uint64Type {
			return nil, errWrongShape
		}
	}
	return s, nil
}

type sourceFetcher struct {
	getBlobAt reflect.Value
	chunks    reflect.Type
	info      types.BlobInfo
	timeout   time.Duration
}

func (f *sourceFetcher) Fetch(ctx context.Context, off, n int64) ([]byte, error) {
	if off < 0 || n <= 0 {
		return nil, fmt.Errorf("fetch %d bytes at %d: invalid range", n, off)
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	chunks := reflect.MakeSlice(f.chunks, 1, 1)
	chunks.Index(0).FieldByName("Offset").SetUint(uint64(off))
	chunks.Index(0).FieldByName("Length").SetUint(uint64(n))
	out := f.getBlobAt.Call([]reflect.Value{reflect.ValueOf(ctx), reflect.ValueOf(f.info), chunks})
	if err, _ := out[2].Interface().(error); err != nil {
		return nil, fmt.Errorf("fetch %d bytes at %d of %s: %w", n, off, f.info.Digest, err)
	}
	streams, _ := out[0].Interface().(chan io.ReadCloser)
	errs, _ := out[1].Interface().(chan error)
	var data []byte
	err := consume(ctx, streams, errs, func(rc io.Reader) error {
		data = make([]byte, n)
		_, err := io.ReadFull(rc, data)
		return err
	})
	if err == nil && data == nil {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return nil, fmt.Errorf("fetch %d bytes at %d of %s: %w", n, off, f.info.Digest, err)
	}
	return data, nil
}

// Streamer streams a blob from an offset to its end, for a whole fetch
// that goes on where a broken one stopped; SourceFetcher's fetchers are
// Streamers.
type Streamer interface {
	Stream(ctx context.Context, off int64) (io.ReadCloser, error)
}

// Stream is one range request for the blob from off to its end; closing
// the stream ends the request.
func (f *sourceFetcher) Stream(ctx context.Context, off int64) (io.ReadCloser, error) {
	if off < 0 || off >= f.info.Size {
		return nil, fmt.Errorf("stream %s from %d: outside its %d bytes", f.info.Digest, off, f.info.Size)
	}
	ctx, cancel := context.WithCancel(ctx)
	chunks := reflect.MakeSlice(f.chunks, 1, 1)
	chunks.Index(0).FieldByName("Offset").SetUint(uint64(off))
	chunks.Index(0).FieldByName("Length").SetUint(uint64(f.info.Size - off))
	out := f.getBlobAt.Call([]reflect.Value{reflect.ValueOf(ctx), reflect.ValueOf(f.info), chunks})
	if err, _ := out[2].Interface().(error); err != nil {
		cancel()
		return nil, fmt.Errorf("stream %s from %d: %w", f.info.Digest, off, err)
	}
	streams, _ := out[0].Interface().(chan io.ReadCloser)
	errs, _ := out[1].Interface().(chan error)
	for {
		select {
		case rc, ok := <-streams:
			if !ok {
				// No stream: the error, if any, is on errs.
				err := io.ErrUnexpectedEOF
				if errs != nil {
					if e, ok := <-errs; ok && e != nil {
						err = e
					}
				}
				cancel()
				go func() { _ = consume(context.Background(), nil, errs, nil) }()
				return nil, fmt.Errorf("stream %s from %d: %w", f.info.Digest, off, err)
			}
			return &rangeStream{ReadCloser: rc, cancel: cancel, streams: streams, errs: errs}, nil
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			cancel()
			go func() { _ = consume(context.Background(), streams, errs, nil) }()
			return nil, fmt.Errorf("stream %s from %d: %w", f.info.Digest, off, err)
		case <-ctx.Done():
			cancel()
			go func() { _ = consume(context.Background(), streams, errs, nil) }()
			return nil, ctx.Err()
		}
	}
}

// rangeStream is Stream's stream; Close ends its request and takes what
// GetBlobAt still sends.
type rangeStream struct {
	io.ReadCloser
	cancel  context.CancelFunc
	streams chan io.ReadCloser
	errs    chan error
}

func (r *rangeStream) Close() error {
	err := r.ReadCloser.Close()
	r.cancel()
	go func() { _ = consume(context.Background(), r.streams, r.errs, nil) }()
	return err
}

// consume follows GetBlobAt's contract for its channels: each stream read
// to its end in order, at most one error, both channels closed at the
// end. first reads the first stream. Should ctx end first, what is still
// sent is taken and closed in the background (GetBlobAt's goroutine ends
// with its request, which ends with ctx).
func consume(ctx context.Context, streams chan io.ReadCloser, errs chan error, first func(io.Reader) error) error {
	var firstErr error
	for streams != nil || errs != nil {
		select {
		case rc, ok := <-streams:
			if !ok {
				streams = nil
				continue
			}
			if first != nil && firstErr == nil {
				firstErr = first(rc)
			}
			first = nil
			_, _ = io.Copy(io.Discard, rc)
			rc.Close()
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			if firstErr == nil {
				firstErr = err
			}
		case <-ctx.Done():
			go func() { _ = consume(context.Background(), streams, errs, nil) }()
			return ctx.Err()
		}
	}
	return firstErr
}
