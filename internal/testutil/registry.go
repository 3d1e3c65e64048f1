package testutil

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Registry is Debian's docker-registry (the reference distribution
// registry) serving plain HTTP on 127.0.0.1, started by a test.
type Registry struct {
	// Addr is host:port.
	Addr string
	// User and Password are set when the registry requires them.
	User, Password string
	// Dir holds the registry's storage and configuration.
	Dir string

	cmd *exec.Cmd
}

// RegistryOptions configure StartRegistry.
type RegistryOptions struct {
	// Auth requires HTTP basic authentication (htpasswd).
	Auth bool
}

// StartRegistry starts a registry that the test's clean-up stops.
func StartRegistry(t T, o RegistryOptions) *Registry {
	t.Helper()
	bin := RequireCommand(t, "docker-registry")
	r := &Registry{Dir: t.TempDir()}
	if err := r.start(bin, o); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return r
}

func (r *Registry) start(bin string, o RegistryOptions) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	r.Addr = fmt.Sprintf("127.0.0.1:%d", port)
	config := fmt.Sprintf(`version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
  secret: berth-test
`, filepath.Join(r.Dir, "data"), r.Addr)
	if o.Auth {
		r.User, r.Password = "berth", "s3cret-pass"
		hash, err := bcrypt.GenerateFromPassword([]byte(r.Password), bcrypt.MinCost)
		if err != nil {
			return err
		}
		htpasswd := filepath.Join(r.Dir, "htpasswd")
		if err := os.WriteFile(htpasswd, []byte(r.User+":"+string(hash)+"\n"), 0o600); err != nil {
			return err
		}
		config += fmt.Sprintf("auth:\n  htpasswd:\n    realm: berth-test\n    path: %s\n", htpasswd)
	}
	cfgPath := filepath.Join(r.Dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(r.Dir, "registry.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	r.cmd = exec.Command(bin, "serve", cfgPath)
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		return fmt.Errorf("start docker-registry: %w", err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + r.Addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			r.Stop()
			log, _ := os.ReadFile(logf.Name())
			return fmt.Errorf("docker-registry did not come up on %s: %v: %s", r.Addr, err, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop stops the registry (only the process this test started).
func (r *Registry) Stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	_, _ = r.cmd.Process.Wait()
	r.cmd = nil
}

// Restart starts the registry again on the same address and storage.
func (r *Registry) Restart(t T) {
	t.Helper()
	r.Stop()
	bin := RequireCommand(t, "docker-registry")
	cfg := filepath.Join(r.Dir, "config.yml")
	logf, err := os.OpenFile(filepath.Join(r.Dir, "registry.log"), os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	r.cmd = exec.Command(bin, "serve", cfg)
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if resp, err := http.Get("http://" + r.Addr + "/v2/"); err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("docker-registry did not come back on %s", r.Addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// RegistriesConf writes a registries.conf (v2) that marks the given
// registries insecure (plain HTTP), plus extra TOML, and returns its path.
func RegistriesConf(t T, extra string, insecure ...string) string {
	t.Helper()
	conf := ""
	for _, r := range insecure {
		conf += fmt.Sprintf("[[registry]]\nlocation = %q\ninsecure = true\n\n", r)
	}
	conf = extra + "\n" + conf
	p := filepath.Join(t.TempDir(), "registries.conf")
	if err := os.WriteFile(p, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ThrottledProxy forwards a new port on 127.0.0.1 to addr, sending at most
// rate bytes per second towards the client, until the clean-up closes it
// and every connection. Returns its address.
func ThrottledProxy(t T, addr string, rate int) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	track := func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	// Idle keep-alive connections would block the copiers forever: close
	// every connection, then wait.
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			track(c)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				up, err := net.Dial("tcp", addr)
				if err != nil {
					return
				}
				track(up)
				defer up.Close()
				go func() { _, _ = io.Copy(up, c) }()
				buf := make([]byte, 32<<10)
				for {
					n, err := up.Read(buf)
					if n > 0 {
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
						time.Sleep(time.Duration(n) * time.Second / time.Duration(rate))
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}
