package cri

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/image"
	"github.com/berth-runtime/berth/internal/shim"
)

// A container is restored from a checkpoint as CRI-O has it: its
// CreateContainer names, as the image, either a checkpoint archive's
// absolute path (CheckpointContainer's, or CRI-O's), or a checkpoint
// image: an archive added to an empty image, with the annotation below
// (what `buildah add` and `buildah config --annotation` make, and what a
// pod's image can name). CreateContainer makes the container from the
// image the checkpoint was made from (pulled if the node lacks it), with
// the checkpointed changes to its files; StartContainer restores its
// processes with CRIU, in the pod it is created in.

// checkpointImageAnnotation marks a checkpoint image, as CRI-O reads it.
const checkpointImageAnnotation = "io.kubernetes.cri-o.annotations.checkpoint.name"

// checkpointSource says whether a CreateContainer's image is a
// checkpoint, and if so how to unpack it into a directory.
func (s *Server) checkpointSource(ref string) (unpack func(*os.Root) error, ok bool, err error) {
	if filepath.IsAbs(ref) { // an image reference never is
		return func(root *os.Root) error {
			f, err := os.Open(ref)
			if errors.Is(err, fs.ErrNotExist) {
				return notFoundf("checkpoint archive %s", ref)
			}
			if err != nil {
				return fmt.Errorf("checkpoint archive: %w", err)
			}
			defer f.Close()
			if err := image.ExtractFiles(root, f); err != nil {
				return invalidf("checkpoint archive %s: %v", ref, err)
			}
			return nil
		}, true, nil
	}
	img, err := s.images.Get(ref)
	if err != nil || img.Artifact {
		return nil, false, nil // containerImage says what is wrong
	}
	ann, err := s.images.Annotations(img)
	if err != nil || ann[checkpointImageAnnotation] == "" {
		return nil, false, err
	}
	return func(root *os.Root) error {
		if err := s.images.CopyFiles(img, root); err != nil {
			return invalidf("checkpoint image %s: %v", ref, err)
		}
		return nil
	}, true, nil
}

// restoreDir is where a container's checkpoint is unpacked.
func (s *Server) restoreDir(id string) string {
	return filepath.Join(s.cfg.containerDir(id), "restore")
}

// unpackCheckpoint unpacks the checkpoint for the container c and makes
// its config the checkpointed container's: its image, and its command
// where the request names none.
func (s *Server) unpackCheckpoint(ctx context.Context, c *container, unpack func(*os.Root) error, u *undo) error {
	if err := s.requireCRIU(s.podHandler(c.PodID), "restore", c.ID); err != nil {
		return err
	}
	source := c.config.GetImage().GetImage()
	dir := s.restoreDir(c.ID)
	u.add(func() { _ = os.RemoveAll(s.cfg.containerDir(c.ID)) })
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	if err := unpack(root); err != nil {
		return err
	}
	var config metadata.ContainerConfig
	var spec specs.Spec
	for name, v := range map[string]any{metadata.ConfigDumpFile: &config, metadata.SpecDumpFile: &spec} {
		b, err := root.ReadFile(name)
		if err == nil {
			err = json.Unmarshal(b, v)
		}
		if err != nil {
			return invalidf("checkpoint %s: %s: %v", source, name, err)
		}
	}
	if _, err := root.Stat(filepath.Join(metadata.CheckpointDirectory, "inventory.img")); err != nil {
		return invalidf("checkpoint %s has no CRIU images: %v", source, err)
	}
	ref, err := s.checkpointedImage(ctx, &config)
	if err != nil {
		return err
	}
	cfg := proto.Clone(c.config).(*runtimeapi.ContainerConfig)
	cfg.Image = &runtimeapi.ImageSpec{Image: ref}
	if len(cfg.Command) == 0 && len(cfg.Args) == 0 && spec.Process != nil {
		cfg.Args = spec.Process.Args
	}
	c.config = cfg
	if c.Config, err = proto.Marshal(cfg); err != nil {
		return err
	}
	c.Restore = dir
	s.log.Info("restoring a container from a checkpoint", "container", c.ID, "checkpoint", source,
		"checkpointed", config.ID, "image", ref, "at", config.CheckpointedAt)
	return nil
}

// checkpointedImage is the image a checkpointed container ran, by the
// name it had or else its digest; one the node lacks is pulled, as
// CRI-O does (the kubelet pulled the checkpoint, not what it names).
func (s *Server) checkpointedImage(ctx context.Context, config *metadata.ContainerConfig) (string, error) {
	var refs []string
	for _, r := range []string{config.RootfsImageName, config.RootfsImageRef, config.RootfsImage} {
		if r != "" && !slices.Contains(refs, r) {
			refs = append(refs, r)
		}
	}
	if len(refs) == 0 {
		return "", invalidf("checkpoint: %s names no image", metadata.ConfigDumpFile)
	}
	for _, r := range refs {
		if _, err := s.images.Get(r); err == nil {
			return r, nil
		}
	}
	if image.LocalTransport(refs[0]) {
		return "", notFoundf("image %s of the checkpoint", refs[0])
	}
	s.log.Info("pulling the image of a checkpoint", "image", refs[0])
	if _, err := s.images.Pull(ctx, refs[0], image.PullOptions{}); err != nil {
		return "", fmt.Errorf("image %s of the checkpoint: %w", refs[0], err)
	}
	return refs[0], nil
}

// applyCheckpointRootfs puts the checkpointed container's changes to its
// image into c's new root filesystem.
func (s *Server) applyCheckpointRootfs(c *container) error {
	root, err := os.OpenRoot(c.Restore)
	if err != nil {
		return err
	}
	defer root.Close()
	var deleted []string
	if b, err := root.ReadFile(metadata.DeletedFilesFile); err == nil {
		if err := json.Unmarshal(b, &deleted); err != nil {
			return invalidf("checkpoint: %s: %v", metadata.DeletedFilesFile, err)
		}
	}
	diff, err := root.Open(metadata.RootFsDiffTar)
	if errors.Is(err, fs.ErrNotExist) {
		return s.images.ApplyRootfsDiff(c.ID, bytes.NewReader(nil), deleted)
	}
	if err != nil {
		return err
	}
	defer diff.Close()
	if err := s.images.ApplyRootfsDiff(c.ID, diff, deleted); err != nil {
		return invalidf("checkpoint: %v", err)
	}
	return nil
}

// restoreInShim has the pod's shim restore the container's processes
// from its checkpoint: StartContainer of a restored container.
func (s *Server) restoreInShim(ctx context.Context, c *container) error {
	cfg := c.config
	pid, err := s.shimFor(c.PodID).Create(ctx, c.ID, shim.CreateRequest{
		Bundle: s.cfg.containerDir(c.ID), LogPath: c.LogPath, Stdin: cfg.Stdin, StdinOnce: cfg.StdinOnce, TTY: cfg.Tty,
		Restore: &shim.RestoreRequest{ImagePath: filepath.Join(c.Restore, metadata.CheckpointDirectory), WorkPath: c.Restore},
	})
	if err != nil {
		return runtimeFailure(fmt.Errorf("restore container %s: %w", c.ID, err))
	}
	dir := c.Restore
	c.Pid, c.State, c.StartedAt, c.Restore = pid, containerRunning, time.Now(), ""
	if err := s.store.putContainer(c); err != nil {
		return err
	}
	// CRIU's images are no longer needed; its log is kept with the bundle.
	_ = os.RemoveAll(filepath.Join(dir, metadata.CheckpointDirectory))
	s.log.Info("container restored", "container", c.ID, "name", c.Name, "pid", pid)
	s.emit(c.ID, c.PodID, runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT)
	return nil
}
