// Command berth-bench runs berth's benchmarks side by side with its peers
// and writes bench/results/<date>.{json,md} with charts. `make bench`
// runs it as root after building berth.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/conformance/bench"
	"github.com/berth-runtime/berth/internal/testutil"
)

// nsEnv marks the re-executed child that runs inside the private mount
// namespace.
const nsEnv = "BERTH_BENCH_PRIVATE_MNTNS"

func main() {
	out := flag.String("out", "bench/results", "directory for results, report and charts")
	rounds := flag.Int("rounds", 30, "rounds per figure")
	binDir := flag.String("bin-dir", envOr("BERTH_BIN_DIR", "bin"), "directory holding the built berth binaries")
	only := flag.String("only", strings.Join(allGroups, ","), "comma-separated benchmark groups to run: "+strings.Join(allGroups, ", "))
	peers := flag.String("peers", envOr("BERTH_PEERS", ".cache/containerd"), "directory holding containerd 2.x, its runc shim and runc (make containerd)")
	cniBin := flag.String("cni-bin", envOr("BERTH_CNI_BIN", ".cache/cni-bin"), "directory holding the CNI plugins (make cni-plugins)")
	podRounds := flag.Int("pod-rounds", 20, "rounds of the pod benchmark")
	density := flag.Int("density", 250, "pods the density benchmark starts per runtime (0: skip); memory per pod is read at 110 too")
	densityRounds := flag.Int("density-rounds", 2, "rounds of the density benchmark")
	parallel := flag.Int("parallel", 50, "pods the concurrency benchmark starts at once (0: skip)")
	parallelRounds := flag.Int("parallel-rounds", 3, "rounds of the concurrency benchmark")
	pullMB := flag.Int("pull-mb", 200, "unpacked size of the pull benchmark's image, in MiB")
	pullRounds := flag.Int("pull-rounds", 5, "rounds of the pull benchmark")
	lazyMB := flag.Int("lazy-mb", 1024, "unpacked size of the lazy pull benchmark's image, in MiB")
	lazyRounds := flag.Int("lazy-rounds", 3, "rounds of the lazy pull benchmark")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if os.Geteuid() != 0 {
		fatal(errors.New("benchmarks start containers: run as root"))
	}
	if os.Getenv(nsEnv) == "" {
		os.Exit(reexecInPrivateMountNamespace())
	}
	// Interrupted, the benchmark stops between two measurements and still
	// removes every container, cgroup and directory it made.
	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGINT, unix.SIGTERM)
	defer stop()
	res := &bench.Results{Started: time.Now(), Machine: bench.DescribeMachine(), Versions: map[string]string{}}
	groups := map[string]bool{}
	for _, g := range strings.Split(*only, ",") {
		groups[strings.TrimSpace(g)] = true
	}
	for _, g := range allGroups {
		if !groups[g] {
			res.Partial = true
		}
	}
	cfg := config{binDir: *binDir, peers: bench.Peers{Dir: *peers}, rounds: *rounds, groups: groups, pullMB: *pullMB, pullRounds: *pullRounds,
		lazyMB: *lazyMB, lazyRounds: *lazyRounds,
		cniBin: *cniBin, podRounds: *podRounds, density: *density, densityRounds: *densityRounds, parallel: *parallel, parallelRounds: *parallelRounds}
	if err := run(ctx, res, cfg, log); err != nil {
		fatal(err)
	}
	res.Finished = time.Now()
	report, err := res.Write(*out)
	if err != nil {
		fatal(err)
	}
	fmt.Println("report:", report)
}

// allGroups are the benchmark groups, in the order they run.
var allGroups = []string{"oci", "pull", "lazy", "pod"}

// config is what the command line chose.
type config struct {
	binDir     string
	peers      bench.Peers
	rounds     int
	groups     map[string]bool
	pullMB     int
	pullRounds int
	lazyMB     int
	lazyRounds int
	cniBin     string
	podRounds  int
	density    int
	// densityRounds of the density benchmark.
	densityRounds int
	parallel      int
	// parallelRounds of the concurrency benchmark.
	parallelRounds int
}

func run(ctx context.Context, res *bench.Results, cfg config, log *slog.Logger) error {
	binDir, rounds := cfg.binDir, cfg.rounds
	work, err := os.MkdirTemp("", "berth-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	// State roots on the tmpfs under /run, as in production, and apart
	// from the binaries' directory (libcontainer's overlay seal of its own
	// binary needs the two not to overlap).
	stateRoot, err := os.MkdirTemp("/run", "berth-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stateRoot)
	// containerd keeps its shims' sockets, its pods' network namespaces
	// and its CNI cache in fixed places, whatever its root.
	removeNew := testutil.RemoveIfNew("/run/containerd", "/run/netns", "/var/lib/cni/results")
	defer func() {
		if err := removeNew(); err != nil {
			log.Warn("clean-up", "error", err)
		}
	}()
	defer func() {
		// The v2 hierarchy of a hybrid host is covered here, so the
		// removal reports it; what counts is what is left in the others.
		_ = cgroups.RemoveTree(bench.CgroupParent)
		var left []string
		all, _ := filepath.Glob("/sys/fs/cgroup/*" + bench.CgroupParent)
		for _, p := range all {
			if !strings.HasPrefix(p, "/sys/fs/cgroup/unified/") {
				left = append(left, p)
			}
		}
		if len(left) > 0 {
			log.Warn("benchmark cgroups left behind", "paths", left)
		}
		// This process's test parent goes too, and the shared root if
		// nothing else is in it.
		_ = cgroups.RemoveTree(testutil.CgroupParent)
		testutil.RemoveCgroupIfUnused(testutil.CgroupRoot)
	}()

	absBin, err := filepath.Abs(binDir)
	if err != nil {
		return err
	}
	berth := filepath.Join(absBin, "berth")
	if _, err := os.Stat(berth); err != nil {
		return fmt.Errorf("%s: run `make build` first", berth)
	}
	if cfg.peers.Dir, err = filepath.Abs(cfg.peers.Dir); err != nil {
		return err
	}
	if err := cfg.peers.Check(); err != nil {
		return err
	}
	// The current releases: runc as containerd 2.x pins it, built from the
	// module proxy; crun is Debian's (C, no Go module to build it from).
	runc := cfg.peers.Bin("runc")
	runtimes := []bench.OCIRuntime{
		{Name: "berth", Bin: berth, Root: filepath.Join(stateRoot, "berth")},
		{Name: "runc", Bin: runc, Root: filepath.Join(stateRoot, "runc")},
	}
	res.Versions["berth"] = bench.Version(berth, "--version")
	res.Versions["runc"] = bench.Version(runc, "--version")
	res.Versions["containerd"] = bench.Version(cfg.peers.Bin("containerd"), "--version")
	if p, err := exec.LookPath("crun"); err == nil {
		runtimes = append(runtimes, bench.OCIRuntime{Name: "crun", Bin: p, Root: filepath.Join(stateRoot, "crun")})
		res.Versions["crun"] = bench.Version(p, "--version")
	} else {
		res.Note("crun is not installed: its figures are missing (`make bench` installs it)")
	}
	if mode := cgroups.HostMode(); mode == cgroups.Hybrid {
		res.Note("This host's cgroups are v1 in hybrid mode. crun refuses hybrid mode while the v2 hierarchy holds a controller (here hugetlb), so all runtimes ran in a private mount namespace without /sys/fs/cgroup/unified: same conditions for each, v1 controllers only.")
	}
	logf := func(f string, a ...any) { log.Warn(fmt.Sprintf(f, a...)) }
	if cfg.groups["oci"] {
		floor, err := bench.BuildFloor(work)
		if err != nil {
			return err
		}
		oci := &bench.OCIBench{Runtimes: runtimes, Floor: floor, Rounds: rounds, Work: work, Log: logf}
		log.Info("OCI start benchmarks", "rounds", rounds, "runtimes", len(runtimes))
		if err := oci.Run(ctx, res); err != nil {
			return err
		}
	}
	if cfg.groups["pull"] {
		for _, name := range []string{"skopeo", "umoci"} {
			if p, err := exec.LookPath(name); err == nil {
				res.Versions[name] = bench.Version(p, "--version")
			}
		}
		scratch := testutil.NewScratch(work)
		defer scratch.Close()
		pull := &bench.PullBench{Scratch: scratch, BinDir: absBin, Peers: cfg.peers, Rounds: cfg.pullRounds, SizeMB: cfg.pullMB,
			Log: func(f string, a ...any) { log.Info(fmt.Sprintf(f, a...)) }}
		log.Info("pull benchmarks", "rounds", cfg.pullRounds, "MiB", cfg.pullMB)
		if err := pull.Run(ctx, res); err != nil {
			return err
		}
	}
	if cfg.groups["lazy"] {
		scratch := testutil.NewScratch(work)
		defer scratch.Close()
		lazy := &bench.LazyBench{Scratch: scratch, BinDir: absBin, Peers: cfg.peers, Rounds: cfg.lazyRounds, SizeMB: cfg.lazyMB,
			Log: func(f string, a ...any) { log.Info(fmt.Sprintf(f, a...)) }}
		log.Info("lazy pull benchmarks", "rounds", cfg.lazyRounds, "MiB", cfg.lazyMB)
		if err := lazy.Run(ctx, res); err != nil {
			return err
		}
	}
	if cfg.groups["pod"] {
		cniBin, err := filepath.Abs(cfg.cniBin)
		if err != nil {
			return err
		}
		scratch := testutil.NewScratch(work)
		defer scratch.Close()
		pod := &bench.PodBench{Scratch: scratch, BinDir: absBin, Peers: cfg.peers, CNIBin: cniBin, StateRoot: stateRoot, Rounds: cfg.podRounds,
			Density: cfg.density, DensityRounds: cfg.densityRounds, Parallel: cfg.parallel, ParallelRounds: cfg.parallelRounds,
			Log: func(f string, a ...any) { log.Warn(fmt.Sprintf(f, a...)) }}
		log.Info("pod benchmarks", "rounds", cfg.podRounds)
		if err := pod.Run(ctx, res); err != nil {
			return err
		}
	}
	return nil
}

// reexecInPrivateMountNamespace runs this program again in a new mount
// namespace whose mounts do not propagate back to the host, after taking
// the empty cgroup v2 hierarchy of a hybrid host out of it.
func reexecInPrivateMountNamespace() int {
	cmd := exec.Command("/proc/self/exe", os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), nsEnv+"=1")
	// The child makes its mounts private first thing (see init), and is
	// told to clean up and stop if this process dies.
	cmd.SysProcAttr = &unix.SysProcAttr{Unshareflags: unix.CLONE_NEWNS, Pdeathsig: unix.SIGTERM}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "berth-bench:", err)
		return 1
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM)
	go func() {
		for s := range sigs {
			_ = cmd.Process.Signal(s)
		}
	}()
	if err := cmd.Wait(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "berth-bench:", err)
		return 1
	}
	return 0
}

func init() {
	if os.Getenv(nsEnv) == "" {
		return
	}
	// In the private namespace: stop propagation, then unmount.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		fatal(fmt.Errorf("make mounts private: %w", err))
	}
	if cgroups.HostMode() == cgroups.Hybrid {
		// Cover it with an empty tmpfs of this namespace's own: crun in v1
		// mode still writes <path>/cgroup.procs under it, which must not
		// land on the host's /sys/fs/cgroup tmpfs.
		if err := unix.Unmount("/sys/fs/cgroup/unified", unix.MNT_DETACH); err != nil {
			fatal(fmt.Errorf("unmount the v2 hierarchy in the private namespace: %w", err))
		}
		if err := unix.Mount("berth-bench", "/sys/fs/cgroup/unified", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=1m"); err != nil {
			fatal(fmt.Errorf("cover the v2 hierarchy in the private namespace: %w", err))
		}
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "berth-bench:", err)
	os.Exit(1)
}
