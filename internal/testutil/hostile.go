package testutil

import (
	"archive/tar"
	"strings"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// HostileImage is an image of two layers aimed at a host directory (a
// sentinel's victim) through symlinks.
type HostileImage struct {
	Name string
	Spec ImageSpec
	// Inside, if set, is a directory of the root filesystem that a read
	// through a lower layer's symlink would give the victim's owner and
	// mode (SentinelUID, SentinelMode).
	Inside string
}

// HostileImpliedDirImages are the attacks on the directories a layer
// implies as parents of its files (issue 14): their metadata is copied
// from the layer below, so a symlink of the layer's own, or of a lower
// layer, could make the copy chown and chmod a host directory or read
// one. Each sits over a lower layer with a real directory of that name
// (mode 0777, owner 4242, an extended attribute).
func HostileImpliedDirImages(s *Sentinel) []HostileImage {
	rel := strings.TrimPrefix(s.Victim, "/")
	victimDir := func(p string) File {
		return File{Path: p, Type: tar.TypeDir, Mode: 0o777, UID: 4242, GID: 4242,
			Xattrs: map[string]string{"user.berth-evil": "1"}}
	}
	file := func(p string) File { return File{Path: p, Content: "x"} }
	link := func(p, target string) File { return File{Path: p, Type: tar.TypeSymlink, Linkname: target} }
	up := strings.Repeat("../", 2+strings.Count(s.Victim, "/"))
	image := func(name string, lower, upper []File, inside string) HostileImage {
		return HostileImage{Name: name, Inside: inside, Spec: ImageSpec{
			Layers: []Layer{{Files: lower}, {Files: upper}},
			Config: v1.ImageConfig{Cmd: []string{"/bin/sh"}},
		}}
	}
	return []HostileImage{
		image("symlink to the host directory",
			[]File{victimDir("a/victim")}, []File{link("a", s.Dir), file("a/victim/x")}, ""),
		image("symlink to /",
			[]File{victimDir("a/" + rel)}, []File{link("a", "/"), file("a/" + rel + "/x")}, ""),
		image("symlink to ..",
			[]File{victimDir("a/" + rel)}, []File{link("a", up), file("a/" + rel + "/x")}, ""),
		image("chain of symlinks",
			[]File{victimDir("a/victim")}, []File{link("a", "b"), link("b", "c"), link("c", s.Dir), file("a/victim/x")}, ""),
		image("symlink deeper down",
			[]File{victimDir("d/l/victim")}, []File{{Path: "d", Type: tar.TypeDir}, link("d/l", s.Dir), file("d/l/victim/x")}, ""),
		image("symlink to the victim itself",
			[]File{victimDir("a/inner")}, []File{link("a", s.Victim), file("a/inner/x")}, ""),
		image("symlink in the lower layer",
			[]File{link("a", s.Dir)}, []File{file("a/victim/x")}, "a/victim"),
		image("lower layer symlink to /",
			[]File{link("a", "/")}, []File{file("a/" + rel + "/x")}, "a/"+rel),
	}
}
