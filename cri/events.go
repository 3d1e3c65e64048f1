package cri

import (
	"sync"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// eventHub fans container lifecycle events out to GetContainerEvents
// streams (the kubelet's evented PLEG).
type eventHub struct {
	mu   sync.Mutex
	subs map[chan *runtimeapi.ContainerEventResponse]struct{}
}

// eventBuffer is how far a stream may fall behind before events are
// dropped for it; the kubelet relists periodically, so a dropped event
// delays, never loses, a state change.
const eventBuffer = 1024

func newEventHub() *eventHub {
	return &eventHub{subs: map[chan *runtimeapi.ContainerEventResponse]struct{}{}}
}

func (h *eventHub) subscribe() (<-chan *runtimeapi.ContainerEventResponse, func()) {
	ch := make(chan *runtimeapi.ContainerEventResponse, eventBuffer)
	h.mu.Lock()
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		delete(h.subs, ch)
		h.mu.Unlock()
	}
}

// publish never blocks: a slow stream loses events, not the daemon.
func (h *eventHub) publish(ev *runtimeapi.ContainerEventResponse) (dropped int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs {
		select {
		case ch <- ev:
		default:
			dropped++
		}
	}
	return dropped
}

func (h *eventHub) subscribers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}

// emit publishes an event of a container (or of a sandbox, whose id it
// then carries) with the pod's current status.
func (s *Server) emit(id, podID string, t runtimeapi.ContainerEventType) {
	if s.events.subscribers() == 0 {
		return
	}
	ev := &runtimeapi.ContainerEventResponse{ContainerId: id, ContainerEventType: t, CreatedAt: time.Now().UnixNano()}
	if sb, ok := s.store.getSandbox(podID); ok {
		ev.PodSandboxStatus = s.sandboxStatus(sb)
		for _, c := range s.store.podContainers(podID) {
			ev.ContainersStatuses = append(ev.ContainersStatuses, s.containerStatus(c))
		}
	}
	s.publish(ev)
}

func (s *Server) publish(ev *runtimeapi.ContainerEventResponse) {
	if n := s.events.publish(ev); n > 0 {
		s.log.Warn("container event dropped for slow subscribers", "container", ev.ContainerId, "type", ev.ContainerEventType.String(), "subscribers", n)
	}
}

// GetContainerEvents streams container events until the client leaves.
func (s *Server) GetContainerEvents(_ *runtimeapi.GetEventsRequest, stream runtimeapi.RuntimeService_GetContainerEventsServer) error {
	ch, cancel := s.events.subscribe()
	defer cancel()
	for {
		select {
		case ev := <-ch:
			if err := stream.Send(ev); err != nil {
				return err
			}
		case <-stream.Context().Done():
			return nil
		}
	}
}
