package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/internal/testutil"
)

// PodBench compares what a kubelet waits for when it starts a pod:
// RunPodSandbox until the sandbox is ready with its network, then the
// pod's first container created and started, then the pod's teardown.
// berthd and containerd's CRI plugin (with runc) run side by side, each
// on a private root and socket, with the same CNI configuration (bridge,
// host-local, portmap) on a bridge of its own.
type PodBench struct {
	Scratch *testutil.Scratch
	// BinDir holds the built berth binaries; CNIBin the CNI plugins.
	BinDir, CNIBin string
	// StateRoot is a directory under /run for the daemons' state.
	StateRoot string
	// Peers holds the containerd and runc builds berth is compared with.
	Peers  Peers
	Rounds int
	// Density is how many pods the density figure starts (0: none), in
	// DensityRounds rounds;
	// Parallel how many the concurrency figure starts at once, in
	// ParallelRounds rounds.
	Density, DensityRounds, Parallel, ParallelRounds int
	Log                                              func(format string, args ...any)
}

// criDaemon is a CRI runtime under test.
type criDaemon struct {
	name         string
	rt           runtimeapi.RuntimeServiceClient
	img          runtimeapi.ImageServiceClient
	conn         *grpc.ClientConn
	cgroupParent string
	bridge       string
	stop         func()
	// restart kills the daemon, not its pods, and starts it again; nil
	// fields until it answers.
	restart func(ctx context.Context) error
	// pid is the daemon's; shim tells its shims' command lines.
	pid  int
	shim func(exe, cmdline string) bool
}

// Run measures pod start and teardown, then density and concurrency, and
// adds the figures to res.
func (b *PodBench) Run(ctx context.Context, res *Results) error {
	s := b.Scratch
	var reg *testutil.Registry
	var busybox, pause, regConf string
	if err := testutil.Guard(func() {
		reg = testutil.StartRegistry(s, testutil.RegistryOptions{})
		regConf = testutil.RegistriesConf(s, "", reg.Addr)
		rootfs := s.TempDir()
		testutil.BusyboxRootfs(s, rootfs)
		bb := testutil.BuildOCI(s, s.TempDir(), "latest", testutil.ImageSpec{
			Layers: []testutil.Layer{{Dir: rootfs}},
			Config: v1.ImageConfig{Cmd: []string{"sh"}, Env: []string{"PATH=/bin"}},
		})
		reg.Push(s, bb, "bench/busybox:latest")
		busybox = reg.Addr + "/bench/busybox:latest"
		pause = pushPause(s, reg, b.BinDir)
	}); err != nil {
		return err
	}

	var daemons []*criDaemon
	defer func() {
		for _, d := range daemons {
			d.stop()
		}
	}()
	for _, start := range []func() (*criDaemon, error){
		func() (*criDaemon, error) {
			s, err := b.setup("berthd", "bb-berth", "10.220.1.0/24", reg.Addr, regConf, pause)
			if err != nil {
				return nil, err
			}
			return startBerthdCRI(ctx, b.BinDir, s)
		},
		func() (*criDaemon, error) {
			s, err := b.setup("containerd", "bb-ctrd", "10.220.2.0/24", reg.Addr, regConf, pause)
			if err != nil {
				return nil, err
			}
			return startContainerdCRI(ctx, b.Peers, s)
		},
	} {
		d, err := start()
		if err != nil {
			return err
		}
		daemons = append(daemons, d)
	}

	for _, d := range daemons {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		_, err := d.img.PullImage(cctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: busybox}})
		cancel()
		if err != nil {
			return fmt.Errorf("%s: pull %s: %w", d.name, busybox, err)
		}
		// A first pod, not counted: containerd pulls its pause image, both
		// make their bridge and iptables chains.
		if _, _, _, err := b.pod(ctx, d, busybox, "warmup"); err != nil {
			return fmt.Errorf("%s: first pod: %w", d.name, err)
		}
	}

	note := "berthd and containerd 2.x's CRI plugin (io.containerd.runc.v2 shim, runc; config version 3 as kubeadm users write it, NRI off), each on a private root and socket, both logging at " + daemonLogLevel + ", called over CRI by this program; the same CNI configuration (bridge + host-local + portmap, from `make test`'s plugin build) on a bridge each; cgroupfs driver. "
	ready := &Case{Group: "Pod start over CRI", Name: "RunPodSandbox with networking", Unit: "ms",
		Note: note + "From the call to its answer, which both give once the pause process runs in its namespaces and CNI ADD is done; the sandbox's READY state is checked after each."}
	running := &Case{Group: "Pod start over CRI", Name: "pod to running container", Unit: "ms",
		Target: "berth at most 0.5× containerd",
		Note:   "RunPodSandbox, CreateContainer and StartContainer of a busybox `sleep` container (image present): what a kubelet waits for before a pod's first container runs."}
	teardown := &Case{Group: "Pod start over CRI", Name: "StopPodSandbox + RemovePodSandbox", Unit: "ms",
		Note: "The pod above, with its running container: kill, CNI DEL, unmount, remove."}
	for round := 0; round < b.Rounds && ctx.Err() == nil; round++ {
		for _, d := range rotated(daemons, round) {
			r, c, t, err := b.pod(ctx, d, busybox, fmt.Sprintf("bench-%d", round))
			record(ready.SeriesFor(d.name), r, err, b.Log)
			record(running.SeriesFor(d.name), c, err, b.Log)
			record(teardown.SeriesFor(d.name), t, err, b.Log)
		}
	}
	res.Cases = append(res.Cases, ready, running, teardown)
	if b.Density > 0 && ctx.Err() == nil {
		b.Log("density: %d pods per runtime", b.Density)
		res.Cases = append(res.Cases, b.density(ctx, daemons, busybox, b.Density, max(1, b.DensityRounds))...)
	}
	if b.Parallel > 0 && ctx.Err() == nil {
		b.Log("concurrency: %d pods at once, %d rounds", b.Parallel, b.ParallelRounds)
		res.Cases = append(res.Cases, b.concurrency(ctx, daemons, busybox, b.Parallel, b.ParallelRounds)...)
	}
	return ctx.Err()
}

// pod runs one pod with one container through d and removes it, timing
// each part.
func (b *PodBench) pod(ctx context.Context, d *criDaemon, image, name string) (ready, running, teardown time.Duration, err error) {
	p, err := b.startPod(ctx, d, image, name)
	if err != nil {
		return 0, 0, 0, err
	}
	teardown, err = b.removePod(ctx, d, p)
	return p.ready, p.running, teardown, err
}

// benchPod is a pod a benchmark started, and what its start took.
type benchPod struct {
	id, logDir      string
	ready, running  time.Duration
	run, create, st time.Duration // each call's own latency
}

// startPod runs a pod with one sleeping container, timing each call; on
// error nothing of it is left.
func (b *PodBench) startPod(ctx context.Context, d *criDaemon, image, name string) (p *benchPod, err error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	p = &benchPod{}
	if p.logDir, err = os.MkdirTemp(b.StateRoot, "logs-"); err != nil {
		return nil, err
	}
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "bench", Uid: name + "-" + d.name},
		Hostname:     name,
		LogDirectory: p.logDir,
		Linux:        &runtimeapi.LinuxPodSandboxConfig{CgroupParent: d.cgroupParent},
	}
	defer func() {
		if err != nil {
			// Leave nothing behind, whatever failed.
			if p.id != "" {
				_, _ = d.rt.RemovePodSandbox(context.Background(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id})
			}
			os.RemoveAll(p.logDir)
		}
	}()
	start := time.Now()
	run, err := d.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		return nil, fmt.Errorf("RunPodSandbox: %w", err)
	}
	p.ready = time.Since(start)
	p.run = p.ready
	p.id = run.PodSandboxId
	st, err := d.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: p.id})
	if err != nil {
		return nil, fmt.Errorf("PodSandboxStatus: %w", err)
	}
	if st.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY || st.Status.GetNetwork().GetIp() == "" {
		return nil, fmt.Errorf("pod %s: state %v, IP %q", p.id, st.Status.State, st.Status.GetNetwork().GetIp())
	}
	t := time.Now()
	cc, err := d.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: p.id, SandboxConfig: cfg,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "sleep"},
			Image:    &runtimeapi.ImageSpec{Image: image},
			Command:  []string{"sleep", "36000"},
			LogPath:  "sleep.log",
		}})
	if err != nil {
		return nil, fmt.Errorf("CreateContainer: %w", err)
	}
	p.create = time.Since(t)
	t = time.Now()
	if _, err := d.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cc.ContainerId}); err != nil {
		return nil, fmt.Errorf("StartContainer: %w", err)
	}
	p.st = time.Since(t)
	p.running = time.Since(start)
	return p, nil
}

// removePod stops and removes a pod, timing both calls together.
func (b *PodBench) removePod(ctx context.Context, d *criDaemon, p *benchPod) (time.Duration, error) {
	stop, remove, err := b.removePodTimed(ctx, d, p)
	return stop + remove, err
}

func (b *PodBench) removePodTimed(ctx context.Context, d *criDaemon, p *benchPod) (stop, remove time.Duration, err error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	defer os.RemoveAll(p.logDir)
	start := time.Now()
	if _, err := d.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil {
		_, _ = d.rt.RemovePodSandbox(context.Background(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id})
		return 0, 0, fmt.Errorf("StopPodSandbox: %w", err)
	}
	stop = time.Since(start)
	start = time.Now()
	if _, err := d.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id}); err != nil {
		return 0, 0, fmt.Errorf("RemovePodSandbox: %w", err)
	}
	return stop, time.Since(start), nil
}

// setup is one daemon's directory under StateRoot and its own bridge,
// with the CNI configuration every daemon shares.
func (b *PodBench) setup(name, bridge, subnet, registry, regConf, pause string) (daemonSetup, error) {
	cni, err := b.cniConfig(bridge, subnet)
	if err != nil {
		return daemonSetup{}, err
	}
	return daemonSetup{dir: filepath.Join(b.StateRoot, name), cniBin: b.CNIBin, cniConf: cni,
		registry: registry, regConf: regConf, pause: pause,
		podCgroups: CgroupParent + "/pods-" + name, bridge: bridge}, nil
}

// cniConfig writes the shared CNI configuration for one daemon's bridge
// and returns its directory.
func (b *PodBench) cniConfig(bridge, subnet string) (string, error) {
	dir := filepath.Join(b.StateRoot, "cni-"+bridge)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	conf := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "bench-%[1]s",
  "plugins": [
    {"type": "bridge", "bridge": %[1]q, "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": %[2]q, "ranges": [[{"subnet": %[3]q}]]}},
    {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
  ]
}`, bridge, filepath.Join(dir, "ipam"), subnet)
	return dir, os.WriteFile(filepath.Join(dir, "10-bench.conflist"), []byte(conf), 0o644)
}

// removeBridge deletes a benchmark's bridge, which outlives its pods.
func removeBridge(name string) {
	if _, err := net.InterfaceByName(name); err == nil {
		_ = exec.Command("ip", "link", "del", name).Run()
	}
}

// dialCRI connects to a daemon's CRI socket and waits until it answers, or
// until the daemon exits.
func dialCRI(ctx context.Context, sock string, proc *daemonProcess) (*grpc.ClientConn, runtimeapi.RuntimeServiceClient, error) {
	// Retried every 10 ms, not after gRPC's default backoff of a second:
	// the restart figures time how soon the daemon answers.
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1, MaxDelay: 10 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		return nil, nil, err
	}
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	deadline := time.Now().Add(30 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := rt.Version(cctx, &runtimeapi.VersionRequest{})
		cancel()
		if err == nil {
			return conn, rt, nil
		}
		select {
		case <-proc.done:
			conn.Close()
			return nil, nil, fmt.Errorf("exited: %v", proc.err)
		default:
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			conn.Close()
			return nil, nil, fmt.Errorf("does not answer on %s: %w", sock, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// removeAllPods removes whatever pods a daemon still has, so that
// stopping it leaves no process behind.
func removeAllPods(d *criDaemon) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pods, err := d.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return
	}
	for _, p := range pods.Items {
		_, _ = d.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.Id})
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// pushPause pushes an image of berth's pause binary and returns its
// reference: containerd runs its sandboxes from an image, and the same
// program in it keeps the two runtimes' pause processes the same.
func pushPause(s *testutil.Scratch, reg *testutil.Registry, binDir string) string {
	pauseBin, err := os.ReadFile(filepath.Join(binDir, "pause"))
	if err != nil {
		s.Fatal(err)
	}
	p := testutil.BuildOCI(s, s.TempDir(), "latest", testutil.ImageSpec{
		Layers: []testutil.Layer{{Files: []testutil.File{{Path: "pause", Content: string(pauseBin), Mode: 0o755}}}},
		Config: v1.ImageConfig{Entrypoint: []string{"/pause"}},
	})
	reg.Push(s, p, "bench/pause:latest")
	return reg.Addr + "/bench/pause:latest"
}
