package berthd

import (
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berth-runtime/berth/internal/testutil"
)

// PushBusybox builds a busybox image (static busybox, `sh` as its
// command, env as given), pushes it to reg as busybox:latest, and returns
// its reference and its layer, for images built on top of it.
func PushBusybox(s *testutil.Scratch, reg *testutil.Registry, env ...string) (ref string, base testutil.Layer) {
	rootfs := s.TempDir()
	testutil.BusyboxRootfs(s, rootfs)
	base = testutil.Layer{Dir: rootfs}
	layout := testutil.BuildOCI(s, s.TempDir(), "latest", testutil.ImageSpec{
		Layers: []testutil.Layer{base},
		Config: v1.ImageConfig{Cmd: []string{"sh"}, Env: env},
	})
	reg.Push(s, layout, "busybox:latest")
	return reg.Addr + "/busybox:latest", base
}
