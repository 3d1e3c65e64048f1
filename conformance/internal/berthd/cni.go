package berthd

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-runtime/berth/internal/testutil"
)

// CNIBinDir is where make test builds the standard CNI plugins.
func CNIBinDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("BERTH_CNI_BIN")
	if dir == "" {
		dir = filepath.Join(testutil.RepoRoot(), ".cache", "cni-bin")
	}
	for _, p := range []string{"bridge", "host-local", "portmap", "loopback"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			t.Fatalf("CNI plugin %s not built in %s (make test builds them: hack/cni-plugins/build.sh): %v", p, dir, err)
		}
	}
	return dir
}

// BridgeNetwork writes a bridge + host-local + portmap configuration on a
// bridge and subnets of the test's own (one range each: two make a
// dual-stack network), and removes the bridge afterwards.
func BridgeNetwork(t *testing.T, bridge string, subnets ...string) (confDir, ipamDir string) {
	t.Helper()
	confDir, ipamDir = t.TempDir(), t.TempDir()
	var ranges []string
	for _, s := range subnets {
		ranges = append(ranges, fmt.Sprintf(`[{"subnet": %q}]`, s))
	}
	conf := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "berth-test",
  "plugins": [
    {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": %q, "ranges": [%s]}},
    {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
  ]
}`, bridge, ipamDir, strings.Join(ranges, ", "))
	if err := os.WriteFile(filepath.Join(confDir, "10-berth-test.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	OwnBridge(t, bridge)
	return confDir, ipamDir
}

// OwnBridge removes, after the test, the bridge its pods' plugins make and
// the CNI- iptables chains and rules they leave: portmap's node-wide
// chains, made by the first pod with a hostPort and kept by the plugin,
// go too if the test made them.
func OwnBridge(t *testing.T, bridge string) {
	t.Helper()
	iptables := SnapshotIptables()
	t.Cleanup(func() {
		iptables.RemoveNew(t, "CNI-")
		if _, err := net.InterfaceByName(bridge); err == nil {
			if out, err := exec.Command("ip", "link", "del", bridge).CombinedOutput(); err != nil {
				t.Errorf("remove bridge %s: %v %s", bridge, err, out)
			}
		}
	})
}
