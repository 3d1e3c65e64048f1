package cri

import (
	"archive/tar"
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/runtime"
)

// errNoCRIU is what the kubelet's checkpoint tests recognise as a
// runtime without checkpoints: the reason is in berthd's log.
var errNoCRIU = status.Error(codes.Unknown, "checkpoint/restore support not available")

// criuCheck is `criu check`, asked once: the kernel does not change.
var criuCheck = sync.OnceValue(runtime.CheckCRIU)

// requireCRIU refuses a checkpoint or restore (op) of the container id on
// berth's own handler where CRIU cannot work; another handler's runtime
// answers for itself.
func (s *Server) requireCRIU(h *handler, op, id string) error {
	if h.name != defaultHandler {
		return nil
	}
	if err := criuCheck(); err != nil {
		s.log.Warn(op+" refused: CRIU cannot work here", "container", id, "error", err)
		return errNoCRIU
	}
	return nil
}

// CheckpointContainer dumps a running container with CRIU, leaving it
// running (the kubelet's forensic checkpoint), into the archive at
// req.Location in the form CRI-O and containerd write and checkpointctl
// reads: checkpoint/ (CRIU's images), config.dump, spec.dump,
// status.dump, rootfs-diff.tar and deleted.files (what the container
// changed in its image), container.log, and CRIU's dump.log.
func (s *Server) CheckpointContainer(ctx context.Context, req *runtimeapi.CheckpointContainerRequest) (*runtimeapi.CheckpointContainerResponse, error) {
	loc := req.GetLocation()
	if loc == "" || !filepath.IsAbs(loc) {
		return nil, toStatus(invalidf("location %q: an absolute path for the checkpoint archive is required", loc))
	}
	c, err := s.findContainer(req.GetContainerId())
	if err != nil {
		return nil, toStatus(err)
	}
	h := s.podHandler(c.ID)
	if err := s.requireCRIU(h, "checkpoint", c.ID); err != nil {
		return nil, err
	}
	unlock := s.locks.lock(c.ID)
	defer unlock()
	if c, err = s.findContainer(c.ID); err != nil {
		return nil, toStatus(err)
	}
	if c.State != containerRunning {
		return nil, toStatus(preconditionf("container %s is %s: only a running container can be checkpointed", c.ID, c.State))
	}
	rc, err := s.rt.Load(c.ID)
	if err != nil {
		return nil, toStatus(err)
	}
	start := time.Now()
	dir, err := os.MkdirTemp(s.cfg.containerDir(c.ID), "checkpoint-")
	if err != nil {
		return nil, toStatus(fmt.Errorf("checkpoint %s: %w", c.ID, err))
	}
	defer os.RemoveAll(dir)
	err = rc.Checkpoint(runtime.CheckpointOptions{
		ImagePath: filepath.Join(dir, metadata.CheckpointDirectory), WorkPath: dir,
		LeaveRunning: true, StatusFD: -1,
	})
	if err != nil {
		return nil, toStatus(fmt.Errorf("checkpoint %s: %w", c.ID, err))
	}
	if err := s.checkpointMetadata(c, h, dir); err != nil {
		return nil, toStatus(fmt.Errorf("checkpoint %s: %w", c.ID, err))
	}
	if err := writeArchive(dir, loc); err != nil {
		return nil, toStatus(fmt.Errorf("checkpoint %s: %w", c.ID, err))
	}
	s.log.Info("checkpointed container", "container", c.ID, "archive", loc, "took", time.Since(start).Round(time.Millisecond))
	return &runtimeapi.CheckpointContainerResponse{}, nil
}

// checkpointMetadata writes the archive's files besides CRIU's into dir.
func (s *Server) checkpointMetadata(c *container, h *handler, dir string) error {
	st := s.containerStatus(c)
	config := metadata.ContainerConfig{
		ID: c.ID, Name: c.Name, OCIRuntime: h.name, CreatedTime: c.CreatedAt, CheckpointedAt: time.Now(),
		RootfsImage: st.GetImage().GetImage(), RootfsImageName: st.GetImage().GetImage(), RootfsImageRef: c.ImageRef,
	}
	for name, v := range map[string]any{metadata.ConfigDumpFile: config, metadata.StatusDumpFile: st} {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return err
		}
	}
	spec, err := os.ReadFile(filepath.Join(s.cfg.containerDir(c.ID), "config.json"))
	if err != nil {
		return fmt.Errorf("read spec: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, metadata.SpecDumpFile), spec, 0o600); err != nil {
		return err
	}
	if err := s.writeRootfsDiff(c.ID, dir); err != nil {
		return err
	}
	if c.LogPath != "" {
		if err := copyFile(c.LogPath, filepath.Join(dir, "container.log")); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("copy log: %w", err)
		}
	}
	return nil
}

// writeRootfsDiff writes rootfs-diff.tar and, if the container deleted
// files of its image, deleted.files.
func (s *Server) writeRootfsDiff(id, dir string) error {
	f, err := os.OpenFile(filepath.Join(dir, metadata.RootFsDiffTar), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	deleted, err := s.images.RootfsDiff(id, w)
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil || len(deleted) == 0 {
		return err
	}
	b, err := json.Marshal(deleted)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, metadata.DeletedFilesFile), b, 0o600)
}

// copyFile copies src to a new file dst; a log the shim is writing
// is copied as far as it is written.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

// writeArchive writes the files under dir as an uncompressed tar at loc,
// whole or not at all: a temporary file beside it, synced and renamed.
func writeArchive(dir, loc string) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(loc), "."+filepath.Base(loc)+".*")
	if err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	tw := tar.NewWriter(bw)
	// dir is berthd's own, written by CRIU and by berthd: AddFS walks
	// it without following symlinks.
	if err := tw.AddFS(os.DirFS(dir)); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	if err := os.Rename(tmp.Name(), loc); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	return nil
}

// CheckpointPod is not supported yet.
func (s *Server) CheckpointPod(ctx context.Context, req *runtimeapi.CheckpointPodRequest) (*runtimeapi.CheckpointPodResponse, error) {
	return nil, status.Error(codes.Unimplemented, "pod checkpointing is not supported by berth yet")
}

// RestorePod is not supported yet.
func (s *Server) RestorePod(ctx context.Context, req *runtimeapi.RestorePodRequest) (*runtimeapi.RestorePodResponse, error) {
	return nil, status.Error(codes.Unimplemented, "restoring pods from checkpoints is not supported by berth yet")
}
