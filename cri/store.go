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
	// Restore is the unpacked checkpoint a created container is
	// restored from by StartContainer (no process exists before).
	Restore string `json:"restore,omitempty"`

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
	return putRecord(s, bucketSandboxes, s.sandboxes, "sandbox", sb.ID, sb)
}

func (s *store) deleteSandbox(id string) error {
	return deleteRecord(s, bucketSandboxes, s.sandboxes, "sandbox", id)
}

// getSandbox returns a copy of the record.
func (s *store) getSandbox(id string) (*sandbox, bool) { return getRecord(s, s.sandboxes, id) }

func (s *store) listSandboxes() []*sandbox { return listRecords(s, s.sandboxes) }

// known reports whether id is a recorded pod or container.
func (s *store) known(id string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, pod := s.sandboxes[id]
	_, ctr := s.containers[id]
	return pod || ctr
}

// putContainer records a container (a copy of c is kept).
func (s *store) putContainer(c *container) error {
	return putRecord(s, bucketContainers, s.containers, "container", c.ID, c)
}

func (s *store) deleteContainer(id string) error {
	return deleteRecord(s, bucketContainers, s.containers, "container", id)
}

// getContainer returns a copy of the record.
func (s *store) getContainer(id string) (*container, bool) { return getRecord(s, s.containers, id) }

func (s *store) listContainers() []*container { return listRecords(s, s.containers) }

// putRecord writes a record to its bucket and, once that committed, a
// copy to memory, where the lists read it.
func putRecord[T any](s *store, bucket []byte, mem map[string]*T, kind, id string, v *T) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).Put([]byte(id), data)
	}); err != nil {
		return fmt.Errorf("record %s %s: %w", kind, id, err)
	}
	cp := *v
	s.mu.Lock()
	mem[id] = &cp
	s.mu.Unlock()
	return nil
}

// deleteRecord removes a record from its bucket, then from memory.
func deleteRecord[T any](s *store, bucket []byte, mem map[string]*T, kind, id string) error {
	if err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).Delete([]byte(id))
	}); err != nil {
		return fmt.Errorf("delete %s %s: %w", kind, id, err)
	}
	s.mu.Lock()
	delete(mem, id)
	s.mu.Unlock()
	return nil
}

// getRecord returns a copy of a record, which the caller may change.
func getRecord[T any](s *store, mem map[string]*T, id string) (*T, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := mem[id]
	if !ok {
		return nil, false
	}
	cp := *v
	return &cp, true
}

// listRecords returns copies of every record of a kind.
func listRecords[T any](s *store, mem map[string]*T) []*T {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*T, 0, len(mem))
	for _, v := range mem {
		cp := *v
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
