package image

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"

	digest "github.com/opencontainers/go-digest"
	"github.com/vbatts/tar-split/tar/asm"
	"github.com/vbatts/tar-split/tar/storage"
	"golang.org/x/sys/unix"
)

// A layer is kept unpacked, not as the tar it came as. To give the tar
// back byte for byte (an export's layers must match the diff IDs of the
// image's config, or the image would change its ID), each pull also
// records the layer's tar-split: its headers and padding as they were,
// and a checksum of each file's content, which the unpacked files
// provide again. containers/storage (podman, CRI-O) keeps layers the
// same way.

// tarSplitPath is where a layer's tar-split is kept: beside, never
// inside, the layer's directory, which is an overlay's lower layer.
func (s *Store) tarSplitPath(chainID digest.Digest) string {
	return s.path("tar-split", chainID.Encoded()+".json.gz")
}

// tarSplitRecorder records the tar-split of a tar stream as a side
// reader of it: what it cannot parse (a tar that repeats a file name,
// say) leaves the layer without one, which only its export refuses;
// the pull itself is the unpacker's business alone.
type tarSplitRecorder struct {
	pw   *io.PipeWriter
	file *os.File
	done chan error
}

// newTarSplitRecorder starts recording into a new file at dst; the tar
// stream is whatever is written to the recorder.
func newTarSplitRecorder(dst string) (*tarSplitRecorder, error) {
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	r := &tarSplitRecorder{pw: pw, file: f, done: make(chan error, 1)}
	go func() {
		zw := gzip.NewWriter(f)
		err := func() error {
			its, done, err := asm.NewInputTarStreamWithDone(pr, storage.NewJSONPacker(zw), nil)
			if err != nil {
				return err
			}
			_, err = io.Copy(io.Discard, its)
			its.Close()
			if derr := <-done; err == nil {
				err = derr
			}
			return err
		}()
		if cerr := zw.Close(); err == nil {
			err = cerr
		}
		// Whatever tar-split left unread: the writer must never block.
		_, _ = io.Copy(io.Discard, pr)
		r.done <- err
	}()
	return r, nil
}

// Write feeds the tar stream; it never fails, so that a tar-split
// failure never fails the unpack it watches.
func (r *tarSplitRecorder) Write(p []byte) (int, error) {
	_, _ = r.pw.Write(p)
	return len(p), nil
}

// finish ends the stream (with the unpack's error, if any) and reports
// whether the tar-split is whole; the file is synced and closed.
func (r *tarSplitRecorder) finish(streamErr error) error {
	r.pw.CloseWithError(streamErr)
	err := <-r.done
	if serr := r.file.Sync(); err == nil {
		err = serr
	}
	if cerr := r.file.Close(); err == nil {
		err = cerr
	}
	return err
}

// layerFiles gives tar-split the content of a layer's files from its
// unpacked directory. The names come from the image: the kernel resolves
// each inside the layer (openat2, RESOLVE_IN_ROOT), as the unpack did,
// an absolute symlink of the layer included.
type layerFiles struct{ root *os.File }

func (l layerFiles) Get(name string) (io.ReadCloser, error) {
	fd, err := unix.Openat2(int(l.root.Fd()), path.Clean("/"+name), &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOFOLLOW,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
	if err != nil {
		return nil, fmt.Errorf("file %s of the layer: %w", name, err)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// errNoTarSplit: the layer was stored without its tar-split (by a berth
// before it kept them, or from a tar it could not record).
var errNoTarSplit = errors.New("the store has no record of this layer's tar (pull the image again to export it)")

// layerTar is a stored layer's tar as it was pulled: its size, and a
// function that writes it to w, checking it against the diff ID.
func (s *Store) layerTar(chainID, diffID digest.Digest) (int64, func(w io.Writer) error, error) {
	open := func() (storage.Unpacker, func(), error) {
		f, err := os.Open(s.tarSplitPath(chainID))
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil, fmt.Errorf("layer %s: %w", diffID, errNoTarSplit)
		}
		if err != nil {
			return nil, nil, err
		}
		zr, err := gzip.NewReader(f)
		if err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("tar-split of layer %s: %w", chainID, err)
		}
		return storage.NewJSONUnpacker(zr), func() { zr.Close(); f.Close() }, nil
	}
	up, closeFn, err := open()
	if err != nil {
		return 0, nil, err
	}
	var size int64
	for {
		e, err := up.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			closeFn()
			return 0, nil, fmt.Errorf("tar-split of layer %s: %w", chainID, err)
		}
		switch e.Type {
		case storage.SegmentType:
			size += int64(len(e.Payload))
		case storage.FileType:
			size += e.Size
		}
	}
	closeFn()
	write := func(w io.Writer) error {
		up, closeFn, err := open()
		if err != nil {
			return err
		}
		defer closeFn()
		root, err := os.Open(s.layerPath(chainID))
		if err != nil {
			return err
		}
		defer root.Close()
		d := diffID.Algorithm().Digester()
		cw := &countingWriter{w: io.MultiWriter(w, d.Hash())}
		if err := asm.WriteOutputTarStream(layerFiles{root}, up, cw); err != nil {
			return fmt.Errorf("layer %s: %w", diffID, err)
		}
		if cw.n != size || d.Digest() != diffID {
			return fmt.Errorf("layer %s: the tar rebuilt from the store is %s (%d bytes), not the layer", diffID, d.Digest(), cw.n)
		}
		return nil
	}
	return size, write, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
