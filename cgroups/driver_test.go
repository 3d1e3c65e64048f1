package cgroups

import "testing"

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
