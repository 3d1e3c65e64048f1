package image_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/image"
	"github.com/berth-runtime/berth/internal/testutil"
)

// TestPullHostileImpliedDirs: pulling any of the hostile images, and
// making a root filesystem of it, changes nothing in a host directory
// tree outside the store, and reads nothing from it.
func TestPullHostileImpliedDirs(t *testing.T) {
	s := localStore(t)
	for i, c := range testutil.HostileImpliedDirImages(testutil.NewSentinel(t)) {
		t.Run(c.Name, func(t *testing.T) {
			// A sentinel of its own, so that one case's damage is its own.
			sentinel := testutil.NewSentinel(t)
			c := testutil.HostileImpliedDirImages(sentinel)[i]
			ref := "oci:" + testutil.BuildOCI(t, t.TempDir(), "v1", c.Spec)
			img, err := s.Pull(context.Background(), ref, image.PullOptions{})
			if err != nil {
				t.Fatalf("pull: %v", err)
			}
			defer func() { must(t, s.Remove(img.ID)) }()
			sentinel.Check(t)
			id := fmt.Sprintf("hostile-%d", i)
			rootfs, err := s.CreateRootfs(id, img.ID, nil)
			if err != nil {
				t.Fatalf("root filesystem: %v", err)
			}
			defer func() { must(t, s.RemoveRootfs(id)) }()
			sentinel.Check(t)
			if c.Inside != "" {
				var st unix.Stat_t
				must(t, unix.Lstat(filepath.Join(rootfs.Path, c.Inside), &st))
				if st.Uid == testutil.SentinelUID || st.Mode&0o7777 == testutil.SentinelMode {
					t.Errorf("%s in the container has the host directory's owner %d and mode %o", c.Inside, st.Uid, st.Mode&0o7777)
				}
			}
		})
	}
}

// TestRootfsUsageStaysInside: a container swapping one of its
// directories with a symlink to / (RENAME_EXCHANGE, as fast as it can)
// while its usage is measured never makes the walk count the host's
// files.
func TestRootfsUsageStaysInside(t *testing.T) {
	s := localStore(t)
	ref := "oci:" + testutil.BuildOCI(t, t.TempDir(), "v1", simpleImage(testutil.File{Path: "f", Content: "x"}))
	img, err := s.Pull(context.Background(), ref, image.PullOptions{})
	must(t, err)
	rootfs, err := s.CreateRootfs("usage", img.ID, nil)
	must(t, err)
	defer s.RemoveRootfs("usage")
	dir, link := filepath.Join(rootfs.Path, "d"), filepath.Join(rootfs.Path, "l")
	must(t, os.Mkdir(dir, 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "file"), []byte("x"), 0o644))
	must(t, os.Symlink("/", link))
	_, inodes, err := s.RootfsUsage("usage")
	must(t, err)
	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				done <- n
				return
			default:
			}
			if unix.Renameat2(unix.AT_FDCWD, dir, unix.AT_FDCWD, link, unix.RENAME_EXCHANGE) == nil {
				n++
			}
		}
	}()
	most := int64(0)
	for i := 0; i < 300; i++ {
		_, n, err := s.RootfsUsage("usage")
		if err != nil {
			t.Errorf("usage: %v", err)
			break
		}
		most = max(most, n)
	}
	close(stop)
	swaps := <-done
	if swaps == 0 {
		t.Fatal("the directory was never swapped: the test proves nothing")
	}
	// The upper layer holds d (or l), its file and the other: a few
	// inodes; the host's / holds thousands.
	if most > inodes+4 {
		t.Errorf("usage counted %d inodes during %d swaps (%d before): the walk left the container's layer", most, swaps, inodes)
	}
	t.Logf("%d swaps, at most %d inodes counted (%d before)", swaps, most, inodes)
}
