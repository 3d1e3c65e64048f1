package cri_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// cdiSpec is a CDI spec of the test's vendor (berth.test/device) whose
// device adds a device node (the host's /dev/null under another name),
// an environment variable and a mount, and whose spec-wide edits add
// another variable.
func cdiSpec(device, mountDir string) string {
	return fmt.Sprintf(`{
  "cdiVersion": "0.6.0",
  "kind": "berth.test/device",
  "containerEdits": {"env": ["BERTH_CDI_SPEC=yes"]},
  "devices": [{
    "name": %q,
    "containerEdits": {
      "deviceNodes": [{"path": "/dev/berth-cdi-%s", "hostPath": "/dev/null", "permissions": "rw"}],
      "env": ["BERTH_CDI_DEVICE=%s"],
      "mounts": [{"hostPath": %q, "containerPath": "/cdi-data", "options": ["ro", "bind"]}]
    }
  }]
}
`, device, device, device, mountDir)
}

// TestCDIDevices: devices named in CDIDevices (the kubelet's, for device
// plugins and DRA) and in cdi.k8s.io/ annotations get their CDI spec's
// edits: the device node with its cgroup rule, the environment, the
// mount. A spec written after berthd started serves; a device no spec
// names and a malformed name are the request's errors.
func TestCDIDevices(t *testing.T) {
	specDir := t.TempDir()
	data := t.TempDir()
	if err := os.WriteFile(filepath.Join(data, "from-the-host"), []byte("cdi mount\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(specDir, "berth-test.json"), []byte(cdiSpec("one", data)), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, daemonOptions{extra: fmt.Sprintf("cdi_spec_dirs = [%q]", specDir)})
	podCfg := d.podConfig("cdi")
	pod := d.runPod(t, podCfg)

	check := func(t *testing.T, id, device string) {
		t.Helper()
		out := d.mustExec(t, id, "sh", "-c", fmt.Sprintf(
			"test -c /dev/berth-cdi-%s && echo written > /dev/berth-cdi-%s && echo node ok; echo $BERTH_CDI_DEVICE $BERTH_CDI_SPEC; cat /cdi-data/from-the-host", device, device))
		if want := fmt.Sprintf("node ok\n%s yes\ncdi mount\n", device); out != want {
			t.Errorf("container with CDI device %s: %q, want %q", device, out, want)
		}
	}

	byField := containerConfig("by-field", "", "sleep", "3600")
	byField.CDIDevices = []*runtimeapi.CDIDevice{{Name: "berth.test/device=one"}}
	check(t, d.run(t, pod, podCfg, byField), "one")

	// The second device's spec is written now: no restart needed.
	if err := os.WriteFile(filepath.Join(specDir, "berth-test-two.json"), []byte(strings.Replace(cdiSpec("two", data), "berth.test/device", "berth.test/other", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	byAnnotation := containerConfig("by-annotation", "", "sleep", "3600")
	byAnnotation.Annotations = map[string]string{"cdi.k8s.io/test-plugin_dev0": "berth.test/other=two"}
	check(t, d.run(t, pod, podCfg, byAnnotation), "two")

	d.pull(t, suite.busybox)
	for _, tc := range []struct {
		name, device, want string
	}{
		{"unknown", "berth.test/device=nope", "no CDI spec"},
		{"malformed", "not-a-cdi-name", "CDI_devices[0]"},
	} {
		cfg := containerConfig(tc.name, "", "true")
		cfg.CDIDevices = []*runtimeapi.CDIDevice{{Name: tc.device}}
		_, err := d.RT.CreateContainer(ctxT(t), &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: cfg, SandboxConfig: podCfg})
		wantCode(t, err, codes.InvalidArgument, "CDI device "+tc.device)
		if err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CDI device %s: %v, want it to say %q", tc.device, err, tc.want)
		}
	}
}
