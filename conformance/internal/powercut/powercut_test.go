package powercut_test

import (
	"bytes"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/berth-runtime/berth/conformance/internal/powercut"
	"github.com/berth-runtime/berth/internal/testutil"
)

// TestCutLosesWhatWasNotFlushed: through the FUSE file, what an fsync
// flushed survives a cut, what came after it is lost, or kept up to the
// prefix the cut names, in write order.
func TestCutLosesWhatWasNotFlushed(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		name string
		keep int
		want string
	}{
		{"all lost", 0, "flushed-----"},
		{"first kept", 1, "flushedAA---"},
		{"both kept", 2, "flushedAABB-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			disk := powercut.New(t, t.TempDir(), 1<<20)
			f, err := os.OpenFile(disk.Path(), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			write := func(s string, off int64) {
				t.Helper()
				if _, err := f.WriteAt([]byte(s), off); err != nil {
					t.Fatal(err)
				}
			}
			write("flushed-----", 0)
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			write("AA", 7)
			write("BB", 9)
			got := make([]byte, 12)
			if _, err := f.ReadAt(got, 0); err != nil || string(got) != "flushedAABB-" {
				t.Fatalf("before the cut: %q, %v", got, err)
			}
			if _, _, err := disk.Cut(tc.keep, rand.New(rand.NewPCG(1, 2))); err != nil {
				t.Fatal(err)
			}
			write("CC", 0) // the power is off: lands nowhere
			disk.Restore()
			if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, []byte(tc.want)) {
				t.Fatalf("after the cut: %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
