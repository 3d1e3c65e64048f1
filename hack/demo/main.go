// Command demo is `make run`: it starts berthd and runs a pod with a
// container through berthctl, the way a person new to berth would, with
// an image pulled (with progress bars) from a registry it starts on
// 127.0.0.1. berthd keeps running afterwards for more berthctl commands.
package main

import (
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berth-runtime/berth/internal/testutil"
)

func main() {
	binDir := flag.String("bin-dir", "bin", "directory of the built binaries")
	socket := flag.String("socket", "/run/berth/berth.sock", "berthd's CRI socket")
	flag.Parse()
	log.SetFlags(0)
	bin, err := filepath.Abs(*binDir)
	if err != nil {
		log.Fatal(err)
	}
	if err := run(bin, *socket); err != nil {
		log.Fatalf("demo: %v", err)
	}
}

func run(bin, socket string) error {
	if conn, err := net.Dial("unix", socket); err == nil {
		conn.Close()
		return fmt.Errorf("a runtime already serves %s: stop it first (or pass -socket)", socket)
	}
	work := "/run/berth-demo"
	if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	scratchDir, err := os.MkdirTemp("", "berth-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(scratchDir)
	s := testutil.NewScratch(scratchDir)
	defer s.Close()

	var ref, regConf string
	err = testutil.Guard(func() {
		step("building a busybox image and pushing it to a registry on 127.0.0.1")
		reg := testutil.StartRegistry(s, testutil.RegistryOptions{})
		rootfs := s.TempDir()
		testutil.BusyboxRootfs(s, rootfs)
		// A layer big enough for the progress bars to have something to
		// show, served at 16 MiB/s.
		filler := make([]byte, 48<<20)
		if _, err := rand.Read(filler); err != nil {
			s.Fatal(err)
		}
		layout := testutil.BuildOCI(s, s.TempDir(), "latest", testutil.ImageSpec{
			Layers: []testutil.Layer{{Dir: rootfs}, {Files: []testutil.File{{Path: "filler", Content: string(filler)}}, Compression: "none"}},
			Config: v1.ImageConfig{Cmd: []string{"sh"}, Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}},
		})
		reg.Push(s, layout, "demo/busybox:latest")
		proxy := testutil.ThrottledProxy(s, reg.Addr, 16<<20)
		ref = proxy + "/demo/busybox:latest"
		regConf = filepath.Join(work, "registries.conf")
		conf := fmt.Sprintf("unqualified-search-registries = [\"docker.io\"]\n\n[[registry]]\nlocation = %q\ninsecure = true\n", proxy)
		if err := os.WriteFile(regConf, []byte(conf), 0o644); err != nil {
			s.Fatal(err)
		}
	})
	if err != nil {
		return err
	}

	step("starting berthd on " + socket)
	logPath := filepath.Join(work, "berthd.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	d := exec.Command(filepath.Join(bin, "berthd"), "--socket", socket, "--registries-conf", regConf, "--log-level", "info")
	d.Stdout, d.Stderr = logf, logf
	// Its own session: berthd outlives the demo.
	d.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := d.Start(); err != nil {
		return err
	}
	pid := d.Process.Pid
	_ = d.Process.Release()
	if err := waitSocket(socket, 30*time.Second); err != nil {
		return fmt.Errorf("berthd (pid %d) does not answer: %w; see %s", pid, err, logPath)
	}

	ctl := func(args ...string) (string, error) {
		fmt.Printf("+ berthctl %s\n", strings.Join(args, " "))
		cmd := exec.Command(filepath.Join(bin, "berthctl"), append([]string{"-r", "unix://" + socket}, args...)...)
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = io.MultiWriter(os.Stdout, &out), os.Stderr
		err := cmd.Run()
		return strings.TrimSpace(out.String()), err
	}
	podJSON := filepath.Join(work, "pod.json")
	ctrJSON := filepath.Join(work, "container.json")
	name := fmt.Sprintf("demo-%d", os.Getpid())
	if err := os.WriteFile(podJSON, []byte(fmt.Sprintf(`{"metadata": {"name": %[1]q, "namespace": "default", "uid": %[1]q},
 "hostname": "demo", "log_directory": "/var/log/pods/berth-%[1]s", "linux": {}}`, name)), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(ctrJSON, []byte(fmt.Sprintf(`{"metadata": {"name": "hello"}, "image": {"image": %q},
 "command": ["sh", "-c", "echo hello from a berth pod: $(hostname), uid $(id -u); exec sleep 3600"],
 "log_path": "hello.log"}`, ref)), 0o644); err != nil {
		return err
	}
	step("pulling, with a progress bar per layer")
	if _, err := ctl("pull", ref); err != nil {
		return err
	}
	step("running a pod and a container in it")
	pod, err := ctl("runp", podJSON)
	if err != nil {
		return err
	}
	ctr, err := ctl("create", pod, ctrJSON, podJSON)
	if err != nil {
		return err
	}
	if _, err := ctl("start", ctr); err != nil {
		return err
	}
	if _, err := ctl("ps"); err != nil {
		return err
	}
	if _, err := ctl("exec", ctr, "sh", "-c", "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status"); err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond)
	if _, err := ctl("logs", ctr); err != nil {
		return err
	}
	fmt.Printf(`
berthd keeps running (pid %d, log %s). Try:
  %[3]s/berthctl pods
  %[3]s/berthctl exec -it %[4]s sh
  %[3]s/berthctl stopp %[5]s && %[3]s/berthctl rmp %[5]s
Stop berthd with: kill %[1]d   (its pods keep running until removed)
`, pid, logPath, bin, ctr[:13], pod[:13])
	return nil
}

func step(msg string) { fmt.Printf("\n== %s\n", msg) }

func waitSocket(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		conn, err := net.Dial("unix", path)
		if err == nil {
			conn.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}
