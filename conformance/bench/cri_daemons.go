package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/internal/testutil"
)

// Peers are the builds berth is measured against: containerd 2.x with its
// runc shim and ctr, and the runc release that containerd pins, built from
// the Go module proxy by hack/containerd/build.sh (`make containerd`).
type Peers struct{ Dir string }

// Bin is the path of one of the peers' binaries.
func (p Peers) Bin(name string) string { return filepath.Join(p.Dir, name) }

// Check says which binary is missing, if one is.
func (p Peers) Check() error {
	for _, b := range []string{"containerd", "containerd-shim-runc-v2", "runc"} {
		if _, err := os.Stat(p.Bin(b)); err != nil {
			return fmt.Errorf("peer %s: %w (`make containerd` builds containerd 2.x and runc into %s)", b, err, p.Dir)
		}
	}
	return nil
}

// daemonSetup is where a CRI daemon of a benchmark keeps everything and
// what it serves pods and images from. Both daemons get the same.
type daemonSetup struct {
	// dir holds the daemon's root, state, socket, configuration and log.
	dir string
	// cniBin holds the plugins, cniConf the network configuration (may
	// be an empty directory: no pods then).
	cniBin, cniConf string
	// registry is the plain-HTTP registry on 127.0.0.1 (host:port);
	// regConf says so in berth's registries.conf.
	registry, regConf string
	// pause is containerd's sandbox image.
	pause string
	// podCgroups is the pods' cgroup parent; bridge the CNI bridge the
	// daemon's stop removes ("" for none).
	podCgroups, bridge string
	// syncLayers turns on containerd's image_pull_with_sync_fs: each
	// unpacked layer synced, as berth always does.
	syncLayers bool
	// removeDir: stop removes dir too (a pull's daemon, whose root holds
	// the unpacked image).
	removeDir bool
	// extra is TOML added to berthd's configuration.
	extra string
	// afterStop runs once the daemon has stopped, before dir goes.
	afterStop func()
}

// daemonLogLevel is both daemons' level: equal logging work.
const daemonLogLevel = "warn"

// startBerthdCRI starts berthd from binDir as s says and waits until its
// CRI socket answers.
func startBerthdCRI(ctx context.Context, binDir string, s daemonSetup) (*criDaemon, error) {
	sock := filepath.Join(s.dir, "berth.sock")
	config := fmt.Sprintf(`root = %q
state = %q
socket = %q
cgroup_driver = "cgroupfs"
cgroup_parent = %q
cni_conf_dir = %q
cni_conf_template = ""
cni_bin_dirs = [%q]
registries_conf = %q
log_level = %q
stream_address = "127.0.0.1:0"
%s`, filepath.Join(s.dir, "root"), filepath.Join(s.dir, "state"), sock, CgroupParent+"/berthd",
		s.cniConf, s.cniBin, s.regConf, daemonLogLevel, s.extra)
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return nil, err
	}
	cfgFile := filepath.Join(s.dir, "berth.toml")
	if err := os.WriteFile(cfgFile, []byte(config), 0o644); err != nil {
		return nil, err
	}
	launch := func() (*daemonProcess, error) {
		return startProcess(filepath.Join(s.dir, "berthd.log"), filepath.Join(binDir, "berthd"), nil, "--config", cfgFile)
	}
	dir := s.dir
	// berth-lazy, which berthd starts with [lazy_pull] on, outlives it as
	// on a node: stopped here, once the pods are gone.
	s.afterStop = func() { stopByPidFile(filepath.Join(s.dir, "state", "lazy", "berth-lazy.pid"), 30*time.Second) }
	return connectCRI(ctx, "berth", sock, launch, s, func(exe, cmdline string) bool {
		return filepath.Base(exe) == "berth-shim" && strings.Contains(cmdline, dir)
	})
}

// startContainerdCRI starts the peers' containerd as s says, configured as
// kubeadm users configure containerd 2.x (config version 3): the runc
// shim with the peers' runc, the overlayfs snapshotter, registry hosts in
// certs.d, restrict_oom_score_adj for a node without CAP_SYS_RESOURCE,
// NRI off (berth has none).
func startContainerdCRI(ctx context.Context, peers Peers, s daemonSetup) (*criDaemon, error) {
	sock := filepath.Join(s.dir, "containerd.sock")
	certs := filepath.Join(s.dir, "certs.d")
	hostDir := filepath.Join(certs, s.registry)
	if err := os.MkdirAll(hostDir, 0o755); err != nil {
		return nil, err
	}
	hosts := fmt.Sprintf("server = %q\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n",
		"http://"+s.registry, "http://"+s.registry)
	if err := os.WriteFile(filepath.Join(hostDir, "hosts.toml"), []byte(hosts), 0o644); err != nil {
		return nil, err
	}
	config := fmt.Sprintf(`version = 3
root = %q
state = %q
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  level = %q
[plugins.'io.containerd.internal.v1.opt']
  path = %q
[plugins.'io.containerd.nri.v1.nri']
  disable = true
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  image_pull_with_sync_fs = %t
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %q
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = %q
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = %q
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [%q]
    conf_dir = %q
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
`, filepath.Join(s.dir, "root"), filepath.Join(s.dir, "state"), sock, sock+".ttrpc", daemonLogLevel,
		filepath.Join(s.dir, "opt"), s.syncLayers, s.pause, certs, peers.Bin("runc"), s.cniBin, s.cniConf)
	cfgFile := filepath.Join(s.dir, "config.toml")
	if err := os.WriteFile(cfgFile, []byte(config), 0o600); err != nil {
		return nil, err
	}
	// containerd finds its shim in PATH.
	env := append(os.Environ(), "PATH="+peers.Dir+":"+os.Getenv("PATH"))
	launch := func() (*daemonProcess, error) {
		return startProcess(filepath.Join(s.dir, "containerd.log"), peers.Bin("containerd"), env, "--config", cfgFile)
	}
	return connectCRI(ctx, "containerd", sock, launch, s, func(exe, cmdline string) bool {
		return filepath.Base(exe) == "containerd-shim-runc-v2" && strings.Contains(cmdline, sock)
	})
}

// connectCRI launches a daemon, waits for its CRI socket and makes the
// criDaemon, whose stop leaves nothing of it running and whose restart
// kills the daemon (not its pods) and launches it again.
func connectCRI(ctx context.Context, name, sock string, launch func() (*daemonProcess, error), s daemonSetup, shim func(exe, cmdline string) bool) (*criDaemon, error) {
	d := &criDaemon{name: name, cgroupParent: s.podCgroups, bridge: s.bridge, shim: shim}
	var proc *daemonProcess
	broken := false
	connect := func(ctx context.Context) error {
		var err error
		if proc, err = launch(); err != nil {
			return err
		}
		conn, rt, err := dialCRI(ctx, sock, proc)
		if err != nil {
			log := proc.logText()
			proc.stop(30 * time.Second)
			return fmt.Errorf("%s: %w\n%s", name, err, lastLines(log, 20))
		}
		d.conn, d.rt, d.img, d.pid = conn, rt, runtimeapi.NewImageServiceClient(conn), proc.pid()
		return nil
	}
	if err := connect(ctx); err != nil {
		if s.removeDir {
			os.RemoveAll(s.dir)
		}
		return nil, err
	}
	d.restart = func(ctx context.Context) error {
		d.conn.Close()
		proc.kill()
		err := connect(ctx)
		broken = err != nil
		return err
	}
	d.stop = func() {
		if broken {
			// Once more, to remove the pods through it.
			broken = connect(context.Background()) != nil
		}
		if !broken {
			removeAllPods(d)
			d.conn.Close()
			proc.stop(30 * time.Second)
		}
		if s.afterStop != nil {
			s.afterStop()
		}
		if s.removeDir {
			os.RemoveAll(s.dir)
		}
		if s.bridge != "" {
			removeBridge(s.bridge)
		}
	}
	return d, nil
}

// stopByPidFile sends SIGTERM to the berth-lazy a pid file names (a
// stale file's pid, reused by another program, is left alone), waits up
// to grace for it to go, then kills it.
func stopByPidFile(pidFile string, grace time.Duration) {
	data, err := os.ReadFile(pidFile)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return
	}
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || !strings.HasPrefix(filepath.Base(exe), "berth-lazy") {
		return
	}
	_ = unix.Kill(pid, unix.SIGTERM)
	for deadline := time.Now().Add(grace); testutil.Alive(pid) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if testutil.Alive(pid) {
		_ = unix.Kill(pid, unix.SIGKILL)
	}
}
