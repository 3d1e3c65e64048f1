package network

import (
	"net"
	"os"
	"testing"
)

func TestNetNSLifecycle(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir := t.TempDir()
	ns, err := NewNetNS(dir, "pod1")
	if err != nil {
		t.Fatal(err)
	}
	if !IsNetNS(ns.Path) {
		t.Fatal("not a network namespace mount")
	}
	var names []string
	var loUp bool
	err = ns.Do(func() error {
		ifs, err := net.Interfaces()
		for _, i := range ifs {
			names = append(names, i.Name)
			if i.Name == "lo" {
				loUp = i.Flags&net.FlagUp != 0
			}
		}
		return err
	})
	if err != nil || len(names) != 1 || names[0] != "lo" || !loUp {
		t.Fatalf("interfaces in the new namespace: %v (lo up %v), %v", names, loUp, err)
	}
	if _, err := NewNetNS(dir, "pod1"); err == nil {
		t.Fatal("second namespace with the same name")
	}
	if err := ns.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(ns.Path); !os.IsNotExist(err) {
		t.Fatal("netns file left")
	}
	if err := ns.Remove(); err != nil {
		t.Fatalf("second remove: %v", err)
	}
	if _, err := NewNetNS(dir, "../x"); err == nil {
		t.Fatal("bad name accepted")
	}
}
