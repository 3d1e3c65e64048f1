package image

import (
	"archive/tar"
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-runtime/berth/internal/testutil"
)

// hostile is a tar entry of an attack.
type hostile struct {
	name     string
	typ      byte
	linkname string
	content  string
}

func tarOf(t testing.TB, entries []hostile) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		hdr := &tar.Header{Name: e.name, Typeflag: typ, Linkname: e.linkname, Mode: 0o644, ModTime: time.Unix(1e9, 0)}
		if typ == tar.TypeDir {
			hdr.Mode = 0o755
		}
		if typ == tar.TypeReg {
			hdr.Size = int64(len(e.content))
		}
		if typ == tar.TypeChar {
			hdr.Devmajor, hdr.Devminor = 1, 3
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if typ == tar.TypeReg {
			tw.Write([]byte(e.content))
		}
	}
	tw.Close()
	return buf.Bytes()
}

// sandbox is a directory with layer directories and, beside them, a
// sentinel tree (testutil.Sentinel) that no unpack, metadata fix or
// overlay mount may touch: "../outside" from a layer.
type sandbox struct {
	root, lower, layer, outside string
	sentinel                    *testutil.Sentinel
}

// The overlay's own directories; with lower and layer, all that may be
// written.
var overlayDirs = []string{"upper", "work", "merged"}

func newSandbox(t testing.TB) sandbox {
	root := t.TempDir()
	s := sandbox{root: root, lower: filepath.Join(root, "lower"), layer: filepath.Join(root, "layer"), outside: filepath.Join(root, "outside")}
	for _, d := range append([]string{s.lower, s.layer, s.outside}, overlayDirs...) {
		if !filepath.IsAbs(d) {
			d = filepath.Join(root, d)
		}
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s.sentinel = testutil.NewSentinelAt(t, s.outside)
	return s
}

// check fails if the sentinel tree changed or anything exists under the
// sandbox root but the layer and overlay directories and the sentinel.
func (s sandbox) check(t testing.TB) {
	t.Helper()
	for _, d := range s.sentinel.Changes() {
		t.Errorf("outside the layers: %s", d)
	}
	allowed := []string{s.lower, s.layer, s.outside}
	for _, d := range overlayDirs {
		allowed = append(allowed, filepath.Join(s.root, d))
	}
	err := filepath.WalkDir(s.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == s.root {
			return nil
		}
		for _, a := range allowed {
			if p == a || strings.HasPrefix(p, a+"/") {
				return nil
			}
		}
		t.Errorf("unpack wrote outside the layer: %s", p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestUnpackContainsHostileTars(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: unpacking sets owners and creates device nodes")
	}
	cases := map[string][]hostile{
		"dot-dot":                {{name: "../escape", content: "x"}},
		"deep dot-dot":           {{name: "a/../../../escape", content: "x"}},
		"absolute":               {{name: "/escape", content: "x"}},
		"absolute dot-dot":       {{name: "/../../outside/sentinel", content: "pwned"}},
		"write through symlink":  {{name: "link", typ: tar.TypeSymlink, linkname: "../outside"}, {name: "link/sentinel", content: "pwned"}},
		"absolute symlink":       {{name: "link", typ: tar.TypeSymlink, linkname: "/"}, {name: "link/outside/sentinel", content: "pwned"}},
		"symlink chain":          {{name: "a", typ: tar.TypeSymlink, linkname: "b"}, {name: "b", typ: tar.TypeSymlink, linkname: "../outside"}, {name: "a/sentinel", content: "pwned"}},
		"dir then symlink":       {{name: "d", typ: tar.TypeDir}, {name: "d", typ: tar.TypeSymlink, linkname: "../outside"}, {name: "d/sentinel", content: "pwned"}},
		"nested symlink":         {{name: "x/y", typ: tar.TypeSymlink, linkname: "../../../../outside"}, {name: "x/y/sentinel", content: "pwned"}},
		"hardlink out":           {{name: "hl", typ: tar.TypeLink, linkname: "../outside/sentinel"}},
		"hardlink absolute":      {{name: "hl", typ: tar.TypeLink, linkname: "/etc/passwd"}},
		"hardlink via symlink":   {{name: "link", typ: tar.TypeSymlink, linkname: "../outside"}, {name: "hl", typ: tar.TypeLink, linkname: "link/sentinel"}},
		"whiteout out":           {{name: "../outside/.wh.sentinel"}},
		"whiteout via symlink":   {{name: "link", typ: tar.TypeSymlink, linkname: "../outside"}, {name: "link/.wh.sentinel"}},
		"opaque via symlink":     {{name: "link", typ: tar.TypeSymlink, linkname: "../outside"}, {name: "link/.wh..wh..opq"}},
		"symlink over sentinel":  {{name: "../outside/sentinel", typ: tar.TypeSymlink, linkname: "/etc/passwd"}},
		"device through symlink": {{name: "link", typ: tar.TypeSymlink, linkname: "../outside"}, {name: "link/null", typ: tar.TypeChar}},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			s := newSandbox(t)
			_, _ = unpack(context.Background(), s.layer, bytes.NewReader(tarOf(t, entries)), unpackOptions{})
			s.check(t)
		})
	}
}

func TestUnpackDenyDevices(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	s := newSandbox(t)
	_, err := unpack(context.Background(), s.layer, bytes.NewReader(tarOf(t, []hostile{{name: "dev/mem", typ: tar.TypeChar}})), unpackOptions{denyDevices: true})
	if err == nil || !strings.Contains(err.Error(), "device node /dev/mem") {
		t.Fatalf("device node with devices denied: %v", err)
	}
	// FIFOs are no devices.
	s2 := newSandbox(t)
	if _, err := unpack(context.Background(), s2.layer, bytes.NewReader(tarOf(t, []hostile{{name: "fifo", typ: tar.TypeFifo}})), unpackOptions{denyDevices: true}); err != nil {
		t.Fatalf("fifo: %v", err)
	}
}

func TestUnpackReportsImpliedDirs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	s := newSandbox(t)
	res, err := unpack(context.Background(), s.layer, bytes.NewReader(tarOf(t, []hostile{
		{name: "explicit", typ: tar.TypeDir},
		{name: "explicit/f", content: "1"},
		{name: "implied/deeper/f", content: "2"},
	})), unpackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(res.implied, ",") != "/implied,/implied/deeper" || res.inodes != 3 || res.size != 2 {
		t.Fatalf("result %+v", res)
	}
}

// FuzzUnpack: whatever the tars, unpacking a lower and an upper layer,
// giving the upper one's implied directories their lower metadata
// (fixImpliedDirs) and mounting the two as an overlay write nothing
// outside the layer and overlay directories, and change nothing in the
// sentinel tree beside them: no owner, mode, time or xattr.
func FuzzUnpack(f *testing.F) {
	if os.Geteuid() != 0 {
		f.Skip("needs root")
	}
	none := tarOf(f, nil)
	f.Add(none, tarOf(f, []hostile{{name: "link", typ: tar.TypeSymlink, linkname: "../outside"}, {name: "link/sentinel", content: "pwned"}}))
	f.Add(none, tarOf(f, []hostile{{name: "../escape", content: "x"}, {name: "a/.wh.b"}, {name: "c/.wh..wh..opq"}}))
	f.Add(none, tarOf(f, []hostile{{name: "hl", typ: tar.TypeLink, linkname: "../outside/sentinel"}, {name: "d", typ: tar.TypeDir}}))
	f.Add(none, tarOf(f, []hostile{{name: "x/y", typ: tar.TypeSymlink, linkname: "/../.."}, {name: "x/y/z", content: "1"}}))
	// Issue 14: implied parents through a symlink of the layer's own, or
	// of the lower layer, onto a real directory below.
	lowerVictim := tarOf(f, []hostile{{name: "a", typ: tar.TypeDir}, {name: "a/victim", typ: tar.TypeDir}, {name: "a/victim/inner", typ: tar.TypeDir}})
	f.Add(lowerVictim, tarOf(f, []hostile{{name: "a", typ: tar.TypeSymlink, linkname: "../outside"}, {name: "a/victim/x", content: "1"}}))
	f.Add(lowerVictim, tarOf(f, []hostile{{name: "a", typ: tar.TypeSymlink, linkname: "b"}, {name: "b", typ: tar.TypeSymlink, linkname: "../outside"}, {name: "a/victim/inner/x", content: "1"}}))
	f.Add(tarOf(f, []hostile{{name: "a", typ: tar.TypeSymlink, linkname: "../outside"}}), tarOf(f, []hostile{{name: "a/victim/x", content: "1"}}))
	f.Add(tarOf(f, []hostile{{name: "a", typ: tar.TypeDir}, {name: "a/.wh..wh..opq"}}), tarOf(f, []hostile{{name: "a/victim/x", content: "1"}}))
	f.Fuzz(func(t *testing.T, lowerTar, upperTar []byte) {
		s := newSandbox(t)
		_, _ = unpack(context.Background(), s.lower, bytes.NewReader(lowerTar), unpackOptions{})
		res, err := unpack(context.Background(), s.layer, bytes.NewReader(upperTar), unpackOptions{})
		if err == nil {
			_ = fixImpliedDirs(s.layer, res.implied, []string{s.lower})
			merged := filepath.Join(s.root, "merged")
			if mountOverlay([]string{s.layer, s.lower}, filepath.Join(s.root, "upper"), filepath.Join(s.root, "work"), merged) == nil {
				if err := unmountAll(merged); err != nil {
					t.Fatal(err)
				}
			}
		}
		s.check(t)
	})
}
