package cri

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	imgspec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	crierrors "k8s.io/cri-api/pkg/errors"

	"github.com/berth-runtime/berth/image"
	"github.com/berth-runtime/berth/internal/shim"
	"github.com/berth-runtime/berth/runtime"
)

// CreateContainer makes a container in a ready pod: its root filesystem
// from the image, its spec, and its process, created by the pod's shim
// and waiting for StartContainer.
func (s *Server) CreateContainer(ctx context.Context, req *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	id, err := s.createContainer(ctx, req)
	if err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.CreateContainerResponse{ContainerId: id}, nil
}

// containerName is a container's unique name, as the kubelet knows it.
func containerName(m *runtimeapi.ContainerMetadata, pod *runtimeapi.PodSandboxMetadata) string {
	return strings.Join([]string{m.Name, pod.GetName(), pod.GetNamespace(), pod.GetUid(), fmt.Sprint(m.Attempt)}, "_")
}

// createContainer runs the steps of CreateContainer in order, each
// pushing its undo: reserve (record and name, under the pod's lock),
// image, rootfs, spec, create (by the pod's shim), record.
func (s *Server) createContainer(ctx context.Context, req *runtimeapi.CreateContainerRequest) (_ string, retErr error) {
	sb, err := s.findSandbox(req.GetPodSandboxId())
	if err != nil {
		return "", err
	}
	cfg := req.GetConfig()
	if err := validateContainerConfig(cfg, sb.config); err != nil {
		return "", err
	}
	c, err := newContainer(sb, cfg)
	if err != nil {
		return "", err
	}
	log := s.log.With("container", c.ID, "name", c.Name, "pod", sb.ID)

	// The pod's lock is held only to check it and record the container:
	// a RemovePodSandbox that comes later finds the container and waits
	// for its lock.
	unlockPod := s.locks.lock(sb.ID)
	unlock := s.locks.lock(c.ID)
	defer unlock()
	var u undo
	defer func() {
		if retErr != nil {
			log.Warn("CreateContainer failed; undoing", "error", retErr)
			u.run()
		}
	}()
	sb, err = s.reserveContainer(sb.ID, c, &u)
	unlockPod()
	if err != nil {
		return "", err
	}
	unpack, restore, err := s.checkpointSource(cfg.GetImage().GetImage())
	if err != nil {
		return "", err
	}
	if restore {
		if err := s.unpackCheckpoint(ctx, c, unpack, &u); err != nil {
			return "", err
		}
		cfg = c.config
	}
	img, imgCfg, err := s.containerImage(c, cfg)
	if err != nil {
		return "", err
	}
	in, err := s.containerSpecInput(c, sb, &imgCfg.Config)
	if err != nil {
		return "", err
	}
	if in.rootfs, err = s.containerRootfs(c, sb, img, &u, log); err != nil {
		return "", err
	}
	if c.Restore != "" {
		if err := s.applyCheckpointRootfs(c); err != nil {
			return "", err
		}
	}
	if in.imageVolumes, err = s.containerImageVolumes(c, &u, log); err != nil {
		return "", err
	}
	if err := s.writeContainerBundle(c, in, &u); err != nil {
		return "", err
	}
	if c.Restore != "" {
		// StartContainer restores its process.
		c.State = containerCreated
		if err := s.store.putContainer(c); err != nil {
			return "", err
		}
	} else if err := s.createInShim(ctx, c, &u); err != nil {
		return "", err
	}
	log.Info("container created", "pid", c.Pid, "image", cfg.Image.GetImage())
	s.emit(c.ID, sb.ID, runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT)
	return c.ID, nil
}

// newContainer is the record of a container being created in sb.
func newContainer(sb *sandbox, cfg *runtimeapi.ContainerConfig) (*container, error) {
	c := &container{
		ID: newID(), PodID: sb.ID, Name: containerName(cfg.Metadata, sb.config.Metadata),
		State: containerCreating, CreatedAt: time.Now(), config: cfg,
	}
	var err error
	if c.Config, err = proto.Marshal(cfg); err != nil {
		return nil, err
	}
	if dir := sb.config.LogDirectory; dir != "" && cfg.LogPath != "" {
		c.LogPath = filepath.Join(dir, cfg.LogPath)
	}
	return c, nil
}

// reserveContainer checks, under the pod's lock, that the pod is ready,
// and records the container and its name. It returns the pod as stored,
// with its configuration decoded.
func (s *Server) reserveContainer(podID string, c *container, u *undo) (*sandbox, error) {
	sb, ok := s.store.getSandbox(podID)
	if !ok {
		return nil, notFoundf("pod sandbox %s", podID)
	}
	if sb.State != sandboxReady {
		return nil, preconditionf("pod sandbox %s is not ready (%s)", podID, sb.State)
	}
	holder, err := s.store.reserveName("ctr:"+c.Name, c.ID)
	if err != nil {
		return nil, err
	}
	if holder != "" {
		return nil, fmt.Errorf("%w: container name %q is held by %s; remove that container first", errExists, c.Name, holder)
	}
	u.add(func() { _ = s.store.releaseName("ctr:"+c.Name, c.ID) })
	if err := s.store.putContainer(c); err != nil {
		return nil, err
	}
	u.add(func() { _ = s.store.deleteContainer(c.ID) })
	sb.config = &runtimeapi.PodSandboxConfig{}
	if err := proto.Unmarshal(sb.Config, sb.config); err != nil {
		return nil, err
	}
	return sb, nil
}

// containerImage finds the container's image in the store and notes it
// and its stop signal in the record.
func (s *Server) containerImage(c *container, cfg *runtimeapi.ContainerConfig) (*image.Image, *imgspec.Image, error) {
	img, err := s.images.Get(cfg.Image.GetImage())
	if err != nil {
		return nil, nil, fmt.Errorf("image %s: %w (pull it first)", cfg.Image.GetImage(), err)
	}
	if img.Artifact {
		return nil, nil, invalidf("image %s is an OCI artifact, not a runnable image: it can be an image volume, not a container's image", cfg.Image.GetImage())
	}
	imgCfg, err := s.images.Config(img)
	if err != nil {
		return nil, nil, err
	}
	c.ImageID = img.ID
	c.ImageRef = img.ID
	if len(img.RepoDigests) > 0 {
		c.ImageRef = img.RepoDigests[0]
	}
	c.StopSignal = stopSignal(cfg.StopSignal, imgCfg.Config.StopSignal)
	return img, imgCfg, nil
}

// containerSpecInput gathers what the container's spec is made from: the
// pod's pause process, whose namespaces it joins, and the target of a
// pid namespace it shares with another container.
func (s *Server) containerSpecInput(c *container, sb *sandbox, imgCfg *imgspec.ImageConfig) (specInput, error) {
	in := specInput{id: c.ID, sb: sb, cfg: c.config, image: imgCfg}
	var err error
	if in.pausePid, err = s.pausePid(sb); err != nil {
		return in, err
	}
	in.nsPid = in.pausePid
	if ns := c.config.GetLinux().GetSecurityContext().GetNamespaceOptions(); ns.GetPid() == runtimeapi.NamespaceMode_TARGET {
		if in.nsPid, err = s.targetPid(sb.ID, ns.TargetId); err != nil {
			return in, err
		}
	}
	return in, nil
}

// containerRootfs mounts the container's root filesystem from its image,
// mapped into the pod's user namespace if it has one.
func (s *Server) containerRootfs(c *container, sb *sandbox, img *image.Image, u *undo, log *slog.Logger) (string, error) {
	var idmap *image.IDMap
	if uids, gids := podUserns(sb.config); uids != nil {
		idmap = &image.IDMap{UsernsPath: s.usernsFile(sb.ID), HostUID: int(uids[0].HostID), HostGID: int(gids[0].HostID)}
	}
	rootfs, err := s.images.CreateRootfs(c.ID, img.ID, idmap)
	if err != nil {
		return "", err
	}
	u.add(func() {
		if err := s.images.RemoveRootfs(c.ID); err != nil {
			log.Warn("undo root filesystem", "error", err)
		}
	})
	return rootfs.Path, nil
}

// containerImageVolumes mounts the images the container's image volumes
// name (shared with every other container that uses them) and returns
// the host path each mount binds, by its index in the config's mounts.
// The kubelet pulled them; an error says ImageVolumeMountFailed first,
// as the kubelet reads it.
func (s *Server) containerImageVolumes(c *container, u *undo, log *slog.Logger) (map[int]string, error) {
	out := map[int]string{}
	for i, m := range c.config.GetMounts() {
		ref := m.GetImage().GetImage()
		if ref == "" {
			continue
		}
		if len(out) == 0 {
			u.add(func() {
				if err := s.images.UnmountImages(c.ID); err != nil {
					log.Warn("undo image volumes", "error", err)
				}
			})
		}
		im, err := s.images.MountImage(ref, c.ID)
		if err != nil {
			return nil, imageVolumeError(i, fmt.Errorf("image %s: %w (pull it first)", ref, err))
		}
		src := im.Path
		if sub := m.GetImageSubPath(); sub != "" {
			if src, err = im.SubPath(sub); err != nil {
				return nil, imageVolumeError(i, invalidf("%v", err))
			}
		}
		out[i] = src
	}
	return out, nil
}

// imageVolumeError says ImageVolumeMountFailed first, which the kubelet
// reads, and keeps err's kind for its status code.
func imageVolumeError(i int, err error) error {
	wrapped := fmt.Errorf("%w: mounts[%d]: %w", crierrors.ErrImageVolumeMountFailed, i, err)
	if codeOf(err) == codes.Unknown {
		return &kindError{kind: errPrecondition, err: wrapped}
	}
	return wrapped
}

// writeContainerBundle writes the container's OCI bundle (its spec over
// the root filesystem) and makes its log's directory.
func (s *Server) writeContainerBundle(c *container, in specInput, u *undo) error {
	spec, usr, err := s.containerSpec(in)
	if err != nil {
		return err
	}
	c.User = usr
	bundle := s.cfg.containerDir(c.ID)
	u.add(func() { _ = os.RemoveAll(bundle) })
	if err := writeSpec(bundle, spec, s.podHandler(c.PodID), s.log); err != nil {
		return err
	}
	if c.LogPath != "" {
		if err := os.MkdirAll(filepath.Dir(c.LogPath), 0o755); err != nil {
			return fmt.Errorf("log directory: %w", err)
		}
	}
	return nil
}

// createInShim has the pod's shim create the container's process, which
// waits for StartContainer, and records it as created.
func (s *Server) createInShim(ctx context.Context, c *container, u *undo) error {
	// Recorded before the shim creates it: a crash from here on finds a
	// "creating" container at restart and removes it.
	if err := s.store.putContainer(c); err != nil {
		return err
	}
	cfg := c.config
	client := s.shimFor(c.PodID)
	pid, err := client.Create(ctx, c.ID, shim.CreateRequest{
		Bundle: s.cfg.containerDir(c.ID), LogPath: c.LogPath, Stdin: cfg.Stdin, StdinOnce: cfg.StdinOnce, TTY: cfg.Tty,
	})
	if err != nil {
		return runtimeFailure(fmt.Errorf("create container: %w", err))
	}
	u.add(func() {
		s.deleteRuntimeContainer(c.ID)
		_ = client.Forget(context.Background(), c.ID, "")
	})
	c.Pid = pid
	c.State = containerCreated
	return s.store.putContainer(c)
}

// pausePid is the pid of the pod's pause process, which must be alive:
// its /proc/<pid>/ns files are what containers join.
func (s *Server) pausePid(sb *sandbox) (int, error) {
	c, err := s.rt.Load(sb.ID)
	if err != nil {
		return 0, preconditionf("pod sandbox %s has no pause process: %v", sb.ID, err)
	}
	st, err := c.State()
	if err != nil {
		return 0, err
	}
	if st.Status != runtime.StatusRunning || st.Pid != sb.PausePid {
		return 0, preconditionf("pod sandbox %s: its pause process is not running (%s)", sb.ID, st.Status)
	}
	return st.Pid, nil
}

// targetPid is the pid of the container whose pid namespace another one
// joins (ephemeral debug containers target an app container).
func (s *Server) targetPid(podID, target string) (int, error) {
	t, err := s.findContainer(target)
	if err != nil {
		return 0, invalidf("namespace_options.target_id: %v", err)
	}
	if t.PodID != podID {
		return 0, invalidf("namespace_options.target_id: container %s is in another pod", target)
	}
	if t.State != containerRunning {
		return 0, preconditionf("namespace_options.target_id: container %s is not running", target)
	}
	return t.Pid, nil
}

// stopSignal names the signal that stops a container: the CRI's, else the
// image's, else SIGTERM.
func stopSignal(sig runtimeapi.Signal, imageSignal string) string {
	if sig != runtimeapi.Signal_SIGNAL_RUNTIME_DEFAULT {
		n := strings.TrimPrefix(sig.String(), "SIGNAL_")
		n = strings.Replace(n, "MINPLUS", "MIN+", 1)
		n = strings.Replace(n, "MAXMINUS", "MAX-", 1)
		return n
	}
	if imageSignal != "" {
		if _, err := runtime.ParseSignal(imageSignal); err == nil {
			return imageSignal
		}
	}
	return "SIGTERM"
}
