package network

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/berth-runtime/berth/internal/testutil"
)

func contrib(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(testutil.RepoRoot(), "contrib", "cni", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func jsonOf(t *testing.T, data []byte) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatalf("%v:\n%s", err, data)
	}
	return v
}

// The default configuration make install ships is the template rendered
// for 10.88.0.0/16: the two cannot drift apart.
func TestTemplateRendersTheDefault(t *testing.T) {
	got, err := RenderTemplate(contrib(t, "bridge.conflist.template"), "10.88.0.0/16")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(jsonOf(t, got), jsonOf(t, contrib(t, TemplateConfName))) {
		t.Errorf("rendered template:\n%s\ndiffers from contrib/cni/%s", got, TemplateConfName)
	}
}

func TestTemplateDualStack(t *testing.T) {
	got, err := RenderTemplate(contrib(t, "bridge.conflist.template"), "10.244.1.0/24, fd00:10:244:1::/64")
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		Plugins []struct {
			IPAM struct {
				Ranges [][]struct{ Subnet string }
				Routes []struct{ Dst string }
			}
		}
	}
	if err := json.Unmarshal(got, &conf); err != nil {
		t.Fatal(err)
	}
	ipam := conf.Plugins[0].IPAM
	if len(ipam.Ranges) != 2 || ipam.Ranges[0][0].Subnet != "10.244.1.0/24" || ipam.Ranges[1][0].Subnet != "fd00:10:244:1::/64" {
		t.Errorf("ranges %+v", ipam.Ranges)
	}
	if len(ipam.Routes) != 2 || ipam.Routes[0].Dst != "0.0.0.0/0" || ipam.Routes[1].Dst != "::/0" {
		t.Errorf("routes %+v", ipam.Routes)
	}
}

func TestTemplateBadInput(t *testing.T) {
	tmpl := contrib(t, "bridge.conflist.template")
	for _, c := range []struct {
		tmpl, cidr, want string
	}{
		{string(tmpl), "10.88.0.0", "pod CIDR"},
		{string(tmpl), "", "no pod CIDR"},
		{`{{.PodCIDR`, "10.0.0.0/8", "parse template"},
		{`{{.NoSuchField}}`, "10.0.0.0/8", "render template"},
		{`{"cniVersion": "1.0.0", "name": "x", "plugins": []}`, "10.0.0.0/8", "no plugins"},
		{`not JSON {{.PodCIDR}}`, "10.0.0.0/8", "no CNI configuration list"},
	} {
		if _, err := RenderTemplate([]byte(c.tmpl), c.cidr); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("template %q, CIDR %q: %v, want an error with %q", c.tmpl, c.cidr, err, c.want)
		}
	}
}

// The manager writes the rendered template once per pod CIDR, and does
// nothing without a template.
func TestManagerRendersTemplate(t *testing.T) {
	dir := t.TempDir()
	tmpl := filepath.Join(dir, "template")
	confDir := filepath.Join(dir, "net.d")
	m, err := NewManager(Options{NetNSDir: filepath.Join(dir, "netns"), ConfDir: confDir, ConfTemplate: tmpl})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.SetPodCIDR("10.1.0.0/24"); err != nil {
		t.Fatalf("no template: %v", err)
	}
	if _, err := os.Stat(confDir); !os.IsNotExist(err) {
		t.Errorf("configuration directory made without a template: %v", err)
	}
	if err := os.WriteFile(tmpl, contrib(t, "bridge.conflist.template"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := m.SetPodCIDR("10.1.0.0/24"); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(confDir, TemplateConfName)
	data, err := os.ReadFile(conf)
	if err != nil || !strings.Contains(string(data), `"10.1.0.0/24"`) {
		t.Fatalf("rendered configuration: %v\n%s", err, data)
	}
	before, _ := os.Stat(conf)
	if err := m.SetPodCIDR("10.1.0.0/24"); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.Stat(conf); !os.SameFile(before, after) {
		t.Errorf("configuration rewritten for the same pod CIDR")
	}
	if err := os.WriteFile(tmpl, []byte("{{.Broken"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := m.SetPodCIDR("10.2.0.0/24"); err == nil {
		t.Errorf("a broken template is no error")
	}
	if data, _ := os.ReadFile(conf); !strings.Contains(string(data), `"10.1.0.0/24"`) {
		t.Errorf("a broken template replaced the configuration:\n%s", data)
	}
}
