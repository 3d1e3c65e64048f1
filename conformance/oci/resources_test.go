package oci_test

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/berth-runtime/berth/internal/testutil"
)

func ptr[T any](v T) *T { return &v }

// TestMemoryLimitOOMKills checks the limit is enforced: a process that
// allocates past it is killed by the kernel's OOM killer.
func TestMemoryLimitOOMKills(t *testing.T) {
	b := newBerth(t)
	bundle := testutil.NewBundle(t, "oom",
		"sh", "-c", `a=$(head -c 200000000 /dev/zero | tr '\0' x); echo survived ${#a}`)
	limit := int64(32 << 20)
	bundle.Spec.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &limit, Swap: &limit}
	bundle.Save(t)
	r := b.run("run", "-b", bundle.Dir, "oom")
	if r.ExitCode != 137 || strings.Contains(r.Stdout, "survived") {
		t.Fatalf("allocating 200 MB under a 32 MiB limit: %s, want exit 137 (OOM-killed)", r)
	}
	assertGone(t, b, "oom")
}

// TestPidsLimitStopsForkBomb checks that a pids limit caps the number of
// processes however hard the container forks.
func TestPidsLimitStopsForkBomb(t *testing.T) {
	b := newBerth(t)
	// The forking subshell dies at the first failed fork; ": >" and exec
	// need no fork once the limit is hit.
	bundle := testutil.NewBundle(t, "pids", "sh", "-c",
		`(for i in $(seq 200); do sleep 300 & done) 2>/dev/null; : > /tmp/done; exec sleep 300`)
	bundle.Spec.Linux.Resources.Pids = &specs.LinuxPids{Limit: ptr[int64](20)}
	bundle.Save(t)
	b.deleteOnCleanup("pids")
	b.ok("run", "-d", "-b", bundle.Dir, "pids")
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(bundle.Rootfs(), "tmp", "done")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("fork loop never finished")
		}
		time.Sleep(50 * time.Millisecond)
	}
	current, _ := strconv.Atoi(readTrim(t, cgroupFile(t, "pids", "pids", "pids.current", "pids.current")))
	var pids []int
	if err := json.Unmarshal([]byte(b.ok("ps", "-f", "json", "pids").Stdout), &pids); err != nil {
		t.Fatal(err)
	}
	// The kernel refused forks ("max" events), and what lives fits the
	// limit (the subshell itself has exited, freeing one slot).
	events := readTrim(t, cgroupFile(t, "pids", "pids", "pids.events", "pids.events"))
	if current > 20 || current < 15 || len(pids) != current || events == "max 0" {
		t.Fatalf("pids.current %d, %d processes, events %q under a pids limit of 20 after forking 200", current, len(pids), events)
	}
}

func TestUpdateChangesLimitsOfRunningContainer(t *testing.T) {
	b := newBerth(t)
	bundle := testutil.NewBundle(t, "upd", "sleep", "300")
	limit := int64(64 << 20)
	bundle.Spec.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &limit}
	bundle.Spec.Linux.Resources.Pids = &specs.LinuxPids{Limit: ptr[int64](50)}
	bundle.Save(t)
	b.deleteOnCleanup("upd")
	b.ok("run", "-d", "-b", bundle.Dir, "upd")

	memFile := cgroupFile(t, "upd", "memory", "memory.limit_in_bytes", "memory.max")
	pidsFile := cgroupFile(t, "upd", "pids", "pids.max", "pids.max")
	cpuFile := cgroupFile(t, "upd", "cpu", "cpu.cfs_quota_us", "cpu.max")
	if got := readTrim(t, memFile); got != strconv.Itoa(64<<20) {
		t.Fatalf("memory limit before update: %s", got)
	}

	b.ok("update", "--memory", "128M", "--pids-limit", "30", "--cpu-quota", "50000", "--cpu-period", "100000", "upd")
	if got := readTrim(t, memFile); got != strconv.Itoa(128<<20) {
		t.Fatalf("memory limit after update: %s", got)
	}
	if got := readTrim(t, pidsFile); got != "30" {
		t.Fatalf("pids limit after update: %s", got)
	}
	if got := readTrim(t, cpuFile); got != "50000" && got != "50000 100000" {
		t.Fatalf("cpu quota after update: %s", got)
	}

	// From a resources file; what it leaves out stays.
	res := filepath.Join(t.TempDir(), "res.json")
	if err := os.WriteFile(res, []byte(`{"pids": {"limit": 40}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	b.ok("update", "-r", res, "upd")
	if got := readTrim(t, pidsFile); got != "40" {
		t.Fatalf("pids limit after update -r: %s", got)
	}
	if got := readTrim(t, memFile); got != strconv.Itoa(128<<20) {
		t.Fatalf("memory limit changed by an update that did not name it: %s", got)
	}
	if r := b.run("update", "--memory", "lots", "upd"); r.ExitCode != 1 || !strings.Contains(r.Stderr, "invalid value for memory") {
		t.Fatalf("bad update value: %s", r)
	}
}

func TestEventsStats(t *testing.T) {
	b := newBerth(t)
	bundle := testutil.NewBundle(t, "ev", "sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 300")
	limit := int64(256 << 20)
	bundle.Spec.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &limit}
	bundle.Spec.Linux.Resources.Pids = &specs.LinuxPids{Limit: ptr[int64](100)}
	bundle.Save(t)
	b.deleteOnCleanup("ev")
	b.ok("run", "-d", "-b", bundle.Dir, "ev")
	time.Sleep(200 * time.Millisecond)

	r := b.ok("events", "--stats", "ev")
	var ev struct {
		Type string `json:"type"`
		ID   string `json:"id"`
		Data struct {
			CPU struct {
				Usage struct {
					Total uint64 `json:"total"`
				} `json:"usage"`
			} `json:"cpu"`
			Memory struct {
				Usage struct {
					Usage uint64 `json:"usage"`
					Limit uint64 `json:"limit"`
				} `json:"usage"`
			} `json:"memory"`
			Pids struct {
				Current uint64 `json:"current"`
				Limit   uint64 `json:"limit"`
			} `json:"pids"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &ev); err != nil {
		t.Fatalf("events --stats: %v in %q", err, r.Stdout)
	}
	d := ev.Data
	if ev.Type != "stats" || ev.ID != "ev" || d.CPU.Usage.Total == 0 || d.Memory.Usage.Usage == 0 ||
		d.Memory.Usage.Limit != uint64(limit) || d.Pids.Current < 1 || d.Pids.Limit != 100 {
		t.Fatalf("events --stats: %+v", ev)
	}

	// The streaming form prints stats every interval: two of them are
	// awaited, however long the binary takes to start (seconds under a
	// VM's software emulation).
	cmd := exec.Command(b.bin, b.global([]string{"events", "--interval", "100ms", "ev"})...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	var stats int
	timeout := time.After(time.Minute)
	for stats < 2 {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("events stream ended after %d stats events", stats)
			}
			if strings.Contains(l, `"type":"stats"`) {
				stats++
			}
		case <-timeout:
			t.Fatalf("events stream printed %d stats events in a minute", stats)
		}
	}
	// Deleting the container removes its cgroup, which ends the stream.
	b.ok("delete", "--force", "ev")
	for {
		select {
		case _, ok := <-lines:
			if ok {
				continue
			}
			if err := <-exited; err != nil {
				t.Errorf("events stream after the container's deletion: %v", err)
			}
			return
		case <-time.After(time.Minute):
			t.Fatal("events stream did not end with the container")
		}
	}
}
