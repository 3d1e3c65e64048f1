package cri

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Sandbox states as recorded.
const (
	sandboxCreating = "creating" // RunPodSandbox in progress (or cut short)
	sandboxReady    = "ready"
	sandboxNotReady = "notready"
	sandboxRemoving = "removing"
)

// Container states as recorded.
const (
	containerCreating = "creating"
	containerCreated  = "created"
	containerRunning  = "running"
	containerExited   = "exited"
	containerRemoving = "removing"
)

// sandbox is a pod sandbox's record.
type sandbox struct {
	ID             string    `json:"id"`
	Name           string    `json:"name"`
	Config         []byte    `json:"config"` // PodSandboxConfig, protobuf
	RuntimeHandler string    `json:"runtimeHandler,omitempty"`
	State          string    `json:"state"`
	CreatedAt      time.Time `json:"createdAt"`
	// NetNS is the network namespace's bind mount; empty for host network.
	NetNS string   `json:"netns,omitempty"`
	IPs   []string `json:"ips,omitempty"`
	// CNIAdded records that CNI ADD ran, so that a crash before the
	// sandbox was ready still gets its DEL.
	CNIAdded bool `json:"cniAdded,omitempty"`
	// Stopping records a StopPodSandbox under way: a crash in the middle
	// (of CNI DEL, say) is finished at restart.
	Stopping     bool   `json:"stopping,omitempty"`
	CgroupParent string `json:"cgroupParent,omitempty"`
	PausePid     int    `json:"pausePid,omitempty"`
	// ShmMounted records the pod's /dev/shm tmpfs.
	ShmMounted bool `json:"shmMounted,omitempty"`

	config *runtimeapi.PodSandboxConfig
}

// container is a container's record.
type container struct {
	ID         string    `json:"id"`
	PodID      string    `json:"podID"`
	Name       string    `json:"name"`
	Config     []byte    `json:"config"` // ContainerConfig, protobuf
	ImageRef   string    `json:"imageRef"`
	ImageID    string    `json:"imageID"`
	LogPath    string    `json:"logPath,omitempty"`
	State      string    `json:"state"`
	Pid        int       `json:"pid,omitempty"`
	CreatedAt  time.Time `json:"createdAt"`
	StartedAt  time.Time `json:"startedAt,omitzero"`
	FinishedAt time.Time `json:"finishedAt,omitzero"`
	ExitCode   int32     `json:"exitCode"`
	Reason     string    `json:"reason,omitempty"`
	Message    string    `json:"message,omitempty"`
	// Resources are the limits set since creation by
	// UpdateContainerResources, protobuf.
	Resources []byte `json:"resources,omitempty"`
	// User is who the process runs as, resolved in the image.
	User *resolvedUser `json:"user,omitempty"`
	// StopSignal is the signal StopContainer sends first.
	StopSignal string `json:"stopSignal,omitempty"`

	config *runtimeapi.ContainerConfig
}

var (
	bucketSandboxes  = []byte("sandboxes")
	bucketContainers = []byte("containers")
	bucketNames      = []byte("names") // reserved names → ids
	bucketMeta       = []byte("meta")
)

// store keeps every record in memory, written through to bbolt, so that
// listing never waits for the disk or for slow work on one object.
type store struct {
	db *bolt.DB

	mu         sync.RWMutex
	sandboxes  map[string]*sandbox
	containers map[string]*container
}

func openStore(path string) (*store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("metadata %s is in use: is another berthd running?", path)
		}
		return nil, fmt.Errorf("open metadata %s: %w", path, err)
	}
	s := &store{db: db, sandboxes: map[string]*sandbox{}, containers: map[string]*container{}}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketSandboxes, bucketContainers, bucketNames, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketSandboxes).ForEach(func(k, v []byte) error {
			var sb sandbox
			if err := json.Unmarshal(v, &sb); err != nil {
				return fmt.Errorf("sandbox %s: %w", k, err)
			}
			sb.config = &runtimeapi.PodSandboxConfig{}
			if err := proto.Unmarshal(sb.Config, sb.config); err != nil {
				return fmt.Errorf("sandbox %s config: %w", k, err)
			}
			s.sandboxes[sb.ID] = &sb
			return nil
		}); err != nil {
			return err
		}
		return tx.Bucket(bucketContainers).ForEach(func(k, v []byte) error {
			var c container
			if err := json.Unmarshal(v, &c); err != nil {
				return fmt.Errorf("container %s: %w", k, err)
			}
			c.config = &runtimeapi.ContainerConfig{}
			if err := proto.Unmarshal(c.Config, c.config); err != nil {
				return fmt.Errorf("container %s config: %w", k, err)
			}
			s.containers[c.ID] = &c
			return nil
		})
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("load metadata: %w", err)
	}
	return s, nil
}

func (s *store) close() error { return s.db.Close() }

// reserveName claims a unique name for an id; it fails with the id that
// holds it.
func (s *store) reserveName(name, id string) (string, error) {
	var holder string
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketNames)
		if cur := b.Get([]byte(name)); cur != nil && string(cur) != id {
			holder = string(cur)
			return nil
		}
		return b.Put([]byte(name), []byte(id))
	})
	return holder, err
}

func (s *store) releaseName(name, id string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketNames)
		if cur := b.Get([]byte(name)); cur != nil && string(cur) == id {
			return b.Delete([]byte(name))
		}
		return nil
	})
}

// putSandbox records a sandbox (a copy of sb is kept).
func (s *store) putSandbox(sb *sandbox) error {
	data, err := json.Marshal(sb)
	if err != nil {
		return err
	}
	if err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSandboxes).Put([]byte(sb.ID), data)
	}); err != nil {
		return fmt.Errorf("record sandbox %s: %w", sb.ID, err)
	}
	cp := *sb
	s.mu.Lock()
	s.sandboxes[sb.ID] = &cp
	s.mu.Unlock()
	return nil
}

func (s *store) deleteSandbox(id string) error {
	if err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSandboxes).Delete([]byte(id))
	}); err != nil {
		return fmt.Errorf("delete sandbox %s: %w", id, err)
	}
	s.mu.Lock()
	delete(s.sandboxes, id)
	s.mu.Unlock()
	return nil
}

// getSandbox returns a copy of the record.
func (s *store) getSandbox(id string) (*sandbox, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	sb, ok := s.sandboxes[id]
	if !ok {
		return nil, false
	}
	cp := *sb
	return &cp, true
}

// known reports whether id is a recorded pod or container.
func (s *store) known(id string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, pod := s.sandboxes[id]
	_, ctr := s.containers[id]
	return pod || ctr
}

func (s *store) listSandboxes() []*sandbox {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*sandbox, 0, len(s.sandboxes))
	for _, sb := range s.sandboxes {
		cp := *sb
		out = append(out, &cp)
	}
	return out
}

func (s *store) putContainer(c *container) error {
	data, err := json.Marshal(c)
	if err != nil {
		return err
	}
	if err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketContainers).Put([]byte(c.ID), data)
	}); err != nil {
		return fmt.Errorf("record container %s: %w", c.ID, err)
	}
	cp := *c
	s.mu.Lock()
	s.containers[c.ID] = &cp
	s.mu.Unlock()
	return nil
}

func (s *store) deleteContainer(id string) error {
	if err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketContainers).Delete([]byte(id))
	}); err != nil {
		return fmt.Errorf("delete container %s: %w", id, err)
	}
	s.mu.Lock()
	delete(s.containers, id)
	s.mu.Unlock()
	return nil
}

func (s *store) getContainer(id string) (*container, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c, ok := s.containers[id]
	if !ok {
		return nil, false
	}
	cp := *c
	return &cp, true
}

func (s *store) listContainers() []*container {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*container, 0, len(s.containers))
	for _, c := range s.containers {
		cp := *c
		out = append(out, &cp)
	}
	return out
}

// podContainers lists the containers of a pod.
func (s *store) podContainers(podID string) []*container {
	var out []*container
	for _, c := range s.listContainers() {
		if c.PodID == podID {
			out = append(out, c)
		}
	}
	return out
}

// getMeta and putMeta keep small daemon-wide settings (the pod CIDR).
func (s *store) getMeta(key string) string {
	var v string
	_ = s.db.View(func(tx *bolt.Tx) error {
		v = string(tx.Bucket(bucketMeta).Get([]byte(key)))
		return nil
	})
	return v
}

func (s *store) putMeta(key, value string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put([]byte(key), []byte(value)) })
}

// idLocks serializes operations on one object, and only on that one.
type idLocks struct {
	mu    sync.Mutex
	locks map[string]*idLock
}

type idLock struct {
	mu   sync.Mutex
	refs int
}

func newIDLocks() *idLocks { return &idLocks{locks: map[string]*idLock{}} }

// lock takes the lock of id and returns its release.
func (l *idLocks) lock(id string) func() {
	l.mu.Lock()
	lk := l.locks[id]
	if lk == nil {
		lk = &idLock{}
		l.locks[id] = lk
	}
	lk.refs++
	l.mu.Unlock()
	lk.mu.Lock()
	return func() {
		lk.mu.Unlock()
		l.mu.Lock()
		if lk.refs--; lk.refs == 0 {
			delete(l.locks, id)
		}
		l.mu.Unlock()
	}
}
