package cgroups

import (
	"context"
	"testing"
	"time"
)

// The forms of a pod's cgroup parent that the kubelet, CRI test clients
// and hand-written pod configs send, as containerd and CRI-O take them.
func TestPodParent(t *testing.T) {
	cases := []struct {
		driver Driver
		in     string
		want   string // "" for an error
	}{
		{Systemd, "kubepods-besteffort-pod1234.slice", "kubepods-besteffort-pod1234.slice"},
		{Systemd, "/test.slice", "test.slice"},
		{Systemd, "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234.slice", "kubepods-besteffort-pod1234.slice"},
		{Systemd, "system.slice/", "system.slice"},
		{Systemd, "/kubepods/besteffort/pod1234", ""},
		{Systemd, "test--a.slice", ""},
		{Systemd, "-.slice", ""},
		{Systemd, ".slice", ""},
		{Systemd, "/", ""},
		{Cgroupfs, "/kubepods/besteffort/pod1234", "/kubepods/besteffort/pod1234"},
		{Cgroupfs, "/kubepods.slice/kubepods-besteffort.slice", "/kubepods.slice/kubepods-besteffort.slice"},
		{Cgroupfs, "kubepods", ""},
		{Cgroupfs, "/a/../b", ""},
		{Cgroupfs, "/a//b", ""},
	}
	for _, tc := range cases {
		got, err := tc.driver.PodParent(tc.in)
		if tc.want == "" {
			if err == nil {
				t.Errorf("%s PodParent(%q) = %q, want an error", tc.driver, tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s PodParent(%q) = %q, %v; want %q", tc.driver, tc.in, got, err, tc.want)
		}
	}
}

// The shared connection to systemd outlives the context of the call
// that made it: godbus closes a connection when its context ends, and
// a request's context ending closed it under concurrent callers (the VM
// tier's churn test saw "use of closed network connection").
func TestSharedConnOutlivesCallerContext(t *testing.T) {
	if !SystemdRunning() {
		t.Skip("no systemd as init here: the VM tier runs this")
	}
	// A connection made by this call.
	sharedConn.Lock()
	if sharedConn.c != nil {
		sharedConn.c.Close()
		sharedConn.c = nil
	}
	sharedConn.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	if err := RemoveSlice(ctx, "berthtest-neverstarted.slice"); err != nil {
		t.Fatalf("stop a slice that was never started: %v", err)
	}
	sharedConn.Lock()
	conn := sharedConn.c
	sharedConn.Unlock()
	cancel()
	time.Sleep(200 * time.Millisecond)
	if !conn.Connected() {
		t.Fatal("the shared connection closed when the context of the call that made it ended")
	}
}
