package image

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"path/filepath"
	"testing"
)

// BenchmarkTarSplitRecorder is what recording a layer's tar-split adds
// to reading the tar: a layer of 2000 files of 64 KiB, through the
// recorder as fetchLayerOnce tees it, against reading it alone.
func BenchmarkTarSplitRecorder(b *testing.B) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	content := bytes.Repeat([]byte("x"), 64<<10)
	for i := 0; i < 2000; i++ {
		_ = tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("d/f%d", i), Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg})
		_, _ = tw.Write(content)
	}
	_ = tw.Close()
	layer := buf.Bytes()
	b.Run("read", func(b *testing.B) {
		b.SetBytes(int64(len(layer)))
		for i := 0; i < b.N; i++ {
			tr := tar.NewReader(bytes.NewReader(layer))
			for {
				if _, err := tr.Next(); err != nil {
					break
				}
				_, _ = io.Copy(io.Discard, tr)
			}
		}
	})
	b.Run("read+tar-split", func(b *testing.B) {
		b.SetBytes(int64(len(layer)))
		dir := b.TempDir()
		for i := 0; i < b.N; i++ {
			rec, err := newTarSplitRecorder(filepath.Join(dir, fmt.Sprint(i)))
			if err != nil {
				b.Fatal(err)
			}
			tr := tar.NewReader(io.TeeReader(bytes.NewReader(layer), rec))
			for {
				if _, err := tr.Next(); err != nil {
					break
				}
				_, _ = io.Copy(io.Discard, tr)
			}
			if err := rec.finish(nil); err != nil {
				b.Fatal(err)
			}
		}
	})
}
