package oci_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/berth-runtime/berth/internal/testutil"
)

// requireGo skips a test that builds with the Go toolchain (the manual
// pages are generated from the command definitions) where there is none:
// the VM tier's guest runs test binaries built on the host.
func requireGo(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("needs the Go toolchain (the manual pages are built from the commands), which this host has not: make test runs it where the tests are built")
	}
}

// packageScript builds a release artifact of the built binaries with
// hack/release/package.sh and returns its path.
func packageScript(t *testing.T, kind string) string {
	t.Helper()
	requireGo(t)
	script, err := filepath.Abs("../../hack/release/package.sh")
	if err != nil {
		t.Fatal(err)
	}
	cni := os.Getenv("BERTH_CNI_BIN")
	if kind == "tarball" && cni == "" {
		t.Skip("BERTH_CNI_BIN is not set: the tarball carries the CNI plugins (make e2e sets it)")
	}
	out := t.TempDir()
	cmd := exec.Command(script, kind, out)
	cmd.Env = append(os.Environ(), "BIN_DIR="+testutil.BinDir(), "CNI_BIN="+cni, "VERSION=0.1.0+test")
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("package.sh %s: %v\n%s", kind, err, b)
	}
	return strings.TrimSpace(string(b))
}

// TestReleaseTarball: the tarball of make release, laid out as
// containerd's (extract at /), with its checksum, and binaries that run.
func TestReleaseTarball(t *testing.T) {
	testutil.Slow(t)
	tarball := packageScript(t, "tarball")
	sum := exec.Command("sha256sum", "-c", "SHA256SUMS")
	sum.Dir = filepath.Dir(tarball)
	if out, err := sum.CombinedOutput(); err != nil {
		t.Errorf("sha256sum -c SHA256SUMS: %v\n%s", err, out)
	}
	dir := t.TempDir()
	if out, err := exec.Command("tar", "-C", dir, "-xzf", tarball).CombinedOutput(); err != nil {
		t.Fatalf("extract: %v\n%s", err, out)
	}
	for _, f := range []string{"usr/local/bin/berth", "usr/local/bin/berth-shim", "usr/local/bin/pause", "usr/local/bin/berthd",
		"usr/local/bin/berthctl", "usr/local/bin/berth-lazy", "opt/cni/bin/bridge", "opt/cni/bin/host-local", "opt/cni/bin/portmap", "opt/cni/bin/loopback",
		"etc/systemd/system/berthd.service", "etc/berth/berth.toml", "etc/berth/cni-bridge.conflist.template",
		"etc/cni/net.d/10-berth-bridge.conflist", "usr/local/share/man/man8/berth.8", "usr/local/share/man/man8/berthd.8",
		"usr/local/share/man/man8/berthctl.8"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("tarball lacks %s", f)
		}
	}
	unit, _ := os.ReadFile(filepath.Join(dir, "etc/systemd/system/berthd.service"))
	if !strings.Contains(string(unit), "\nExecStart=/usr/local/bin/berthd\n") || !strings.Contains(string(unit), "\nType=notify\n") {
		t.Errorf("berthd.service:\n%s", unit)
	}
	// Every key is there, commented out, with the installed paths.
	conf, _ := os.ReadFile(filepath.Join(dir, "etc/berth/berth.toml"))
	for _, line := range []string{`# root = "/var/lib/berth"`, `# runtime_path = "/usr/local/bin/berth"`, `# socket_group = ""`} {
		if !strings.Contains(string(conf), line+"\n") {
			t.Errorf("berth.toml lacks %q:\n%s", line, conf)
		}
	}
	for _, l := range strings.Split(strings.TrimSpace(string(conf)), "\n") {
		if !strings.HasPrefix(l, "#") {
			t.Errorf("berth.toml sets %q: every key stays commented out", l)
		}
	}
	for _, b := range []string{"berth", "berthd", "berthctl"} {
		if out, err := exec.Command(filepath.Join(dir, "usr/local/bin", b), "--version").CombinedOutput(); err != nil || !strings.Contains(string(out), "0.1.0") {
			t.Errorf("%s --version from the tarball: %v %s", b, err, out)
		}
	}
}

// TestDebianPackage: make deb's package installs into a clean root
// (dpkg --root: its Depends are the host's business, forced), lists its
// files, keeps /etc/berth as conffiles, starts and enables nothing, and
// purging it removes all of it.
func TestDebianPackage(t *testing.T) {
	testutil.Slow(t)
	for _, tool := range []string{"dpkg", "dpkg-deb", "dpkg-query"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed: not a Debian system", tool)
		}
	}
	deb := packageScript(t, "deb")
	root := t.TempDir()
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "var/lib/dpkg/status"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	dpkg := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("dpkg", append([]string{"--root=" + root, "--force-script-chrootless", "--log=/dev/null"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("dpkg %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	dpkg("--force-depends", "-i", deb)
	files := strings.Split(dpkg("-L", "berth"), "\n")
	for _, f := range []string{"/usr/bin/berth", "/usr/bin/berth-shim", "/usr/bin/pause", "/usr/bin/berthd", "/usr/bin/berthctl",
		"/lib/systemd/system/berthd.service", "/etc/berth/berth.toml", "/etc/berth/cni-bridge.conflist.template",
		"/usr/share/man/man8/berth.8.gz", "/usr/share/man/man8/berthd.8.gz", "/usr/share/man/man8/berthctl.8.gz"} {
		if !slices.Contains(files, f) {
			t.Errorf("dpkg -L berth lacks %s:\n%s", f, strings.Join(files, "\n"))
		}
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("%s not installed: %v", f, err)
		}
	}
	q, err := exec.Command("dpkg-query", "--admindir="+filepath.Join(root, "var/lib/dpkg"), "-W", "-f=${Status}|${Conffiles}", "berth").Output()
	if err != nil || !strings.HasPrefix(string(q), "install ok installed|") ||
		!strings.Contains(string(q), "/etc/berth/berth.toml ") || !strings.Contains(string(q), "/etc/berth/cni-bridge.conflist.template ") {
		t.Errorf("dpkg-query status and conffiles: %v %q", err, q)
	}
	// man finds the pages: gzipped roff.
	if page, err := exec.Command("gzip", "-dc", filepath.Join(root, "usr/share/man/man8/berthctl.8.gz")).Output(); err != nil || !strings.Contains(string(page), ".TH ") {
		t.Errorf("berthctl.8.gz is not a gzipped manual page: %v %.200s", err, page)
	}
	unit, _ := os.ReadFile(filepath.Join(root, "lib/systemd/system/berthd.service"))
	if !strings.Contains(string(unit), "\nExecStart=/usr/bin/berthd\n") {
		t.Errorf("the package's berthd.service does not start /usr/bin/berthd:\n%s", unit)
	}
	// Enabled would be a link under /etc/systemd/system.
	if _, err := os.Stat(filepath.Join(root, "etc/systemd")); err == nil {
		t.Errorf("installing enabled something: %s/etc/systemd exists", root)
	}

	dpkg("--purge", "berth")
	var left []string
	_ = filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && !strings.HasPrefix(p, filepath.Join(root, "var/lib/dpkg")) {
			left = append(left, p)
		}
		return nil
	})
	if len(left) > 0 {
		t.Errorf("purge left %v", left)
	}
}

// TestManPages: make docs' pages have a section for every command of
// each binary, and the release binaries carry no generator.
func TestManPages(t *testing.T) {
	testutil.Slow(t)
	requireGo(t)
	script, err := filepath.Abs("../../hack/docs/build.sh")
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if b, err := exec.Command(script, out).CombinedOutput(); err != nil {
		t.Fatalf("hack/docs/build.sh: %v\n%s", err, b)
	}
	want := map[string][]string{
		"berth":    {"create", "start", "run", "exec", "kill", "delete", "state", "spec"},
		"berthd":   {"config"},
		"berthctl": {"pull", "runp", "ps", "exec", "attach", "port-forward", "update", "completion", "events"},
	}
	for bin, cmds := range want {
		page, err := os.ReadFile(filepath.Join(out, bin+".8"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(page), ".nh\n.TH "+bin+"(8)") || !strings.Contains(string(page), "\n.SH NAME\n"+bin+` \-`) {
			t.Errorf("%s.8 is not a manual page of %s:\n%.300s", bin, bin, page)
		}
		for _, c := range cmds {
			if !regexp.MustCompile(`(?m)^\.SH ` + regexp.QuoteMeta(c) + `(,|$)`).Match(page) {
				t.Errorf("%s.8 has no section for %s", bin, c)
			}
		}
		if out, err := exec.Command(testutil.Bin(t, bin), "man").CombinedOutput(); err == nil {
			t.Errorf("the built %s answers \"man\" (%.80s): the release binaries carry no generator", bin, out)
		}
	}
}
