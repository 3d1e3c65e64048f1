package main

import (
	"slices"
	"testing"
)

func TestRemotePorts(t *testing.T) {
	got, err := remotePorts([]string{"8080", "0:80", "9000:443"})
	if err != nil || !slices.Equal(got, []int32{8080, 80, 443}) {
		t.Errorf("remotePorts: %v, %v", got, err)
	}
	for _, bad := range []string{"http", "0:http", "x:80", "70000", "0", ":80", "80:"} {
		if _, err := remotePorts([]string{bad}); err == nil {
			t.Errorf("remotePorts(%q): no error", bad)
		}
	}
}
