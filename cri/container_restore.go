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
	"time"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/image"
	"github.com/berth-runtime/berth/internal/shim"
)

// A container restored from a checkpoint archive (CheckpointContainer's,
// or CRI-O's) is asked for as CRI-O has it: CreateContainer with the
// archive's absolute path as the image. CreateContainer makes the
// container from the image the checkpoint was made from, with the
// checkpointed changes to its files; StartContainer restores its
// processes with CRIU, in the pod it is created in.

// checkpointArchive says whether a CreateContainer's image names a
// checkpoint archive: image references are never absolute paths.
func checkpointArchive(ref string) (string, bool) {
	return ref, filepath.IsAbs(ref)
}

// restoreDir is where a container's checkpoint is unpacked.
func (s *Server) restoreDir(id string) string {
	return filepath.Join(s.cfg.containerDir(id), "restore")
}

// unpackCheckpoint unpacks the archive for the container c and makes its
// config the checkpointed container's: its image, and its command where
// the request names none.
func (s *Server) unpackCheckpoint(c *container, archive string, u *undo) error {
	if h := s.podHandler(c.PodID); h.name == defaultHandler || h.name == "" {
		if err := criuCheck(); err != nil {
			s.log.Warn("restore refused: CRIU cannot work here", "container", c.ID, "error", err)
			return errNoCRIU
		}
	}
	f, err := os.Open(archive)
	if errors.Is(err, fs.ErrNotExist) {
		return notFoundf("checkpoint archive %s", archive)
	}
	if err != nil {
		return fmt.Errorf("checkpoint archive: %w", err)
	}
	defer f.Close()
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
	if err := image.ExtractTar(root, f); err != nil {
		return invalidf("checkpoint archive %s: %v", archive, err)
	}
	var config metadata.ContainerConfig
	var spec specs.Spec
	for name, v := range map[string]any{metadata.ConfigDumpFile: &config, metadata.SpecDumpFile: &spec} {
		b, err := root.ReadFile(name)
		if err == nil {
			err = json.Unmarshal(b, v)
		}
		if err != nil {
			return invalidf("checkpoint archive %s: %s: %v", archive, name, err)
		}
	}
	if _, err := root.Stat(filepath.Join(metadata.CheckpointDirectory, "inventory.img")); err != nil {
		return invalidf("checkpoint archive %s has no CRIU images: %v", archive, err)
	}
	ref := config.RootfsImageName
	if _, err := s.images.Get(ref); err != nil && config.RootfsImageRef != "" {
		ref = config.RootfsImageRef
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
	s.log.Info("restoring a container from a checkpoint", "container", c.ID, "archive", archive,
		"checkpointed", config.ID, "image", ref, "at", config.CheckpointedAt)
	return nil
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
