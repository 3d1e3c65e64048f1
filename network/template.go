package network

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"text/template"

	"github.com/containernetworking/cni/libcni"
)

// TemplateConfName is the file a configuration template is rendered into,
// in the configuration directory.
const TemplateConfName = "10-berth-bridge.conflist"

// TemplateData is what a configuration template sees, as containerd's
// conf_template does: the node's pod CIDR, and a default route for each
// of its address families.
type TemplateData struct {
	// PodCIDR is the first of the node's pod CIDRs.
	PodCIDR string
	// PodCIDRRanges are all of them (two on a dual-stack node).
	PodCIDRRanges []string
	// Routes are the default routes of their families.
	Routes []string
}

// RenderTemplate renders a CNI configuration template for the
// comma-separated pod CIDRs and checks that the result is a usable
// configuration list.
func RenderTemplate(tmpl []byte, podCIDRs string) ([]byte, error) {
	var d TemplateData
	families := map[string]bool{}
	for _, c := range strings.Split(podCIDRs, ",") {
		c = strings.TrimSpace(c)
		if c == "" {
			continue
		}
		_, n, err := net.ParseCIDR(c)
		if err != nil {
			return nil, fmt.Errorf("pod CIDR %q: %w", c, err)
		}
		d.PodCIDRRanges = append(d.PodCIDRRanges, n.String())
		route := "0.0.0.0/0"
		if n.IP.To4() == nil {
			route = "::/0"
		}
		if !families[route] {
			families[route] = true
			d.Routes = append(d.Routes, route)
		}
	}
	if len(d.PodCIDRRanges) == 0 {
		return nil, errors.New("no pod CIDR")
	}
	d.PodCIDR = d.PodCIDRRanges[0]
	t, err := template.New("cni").Option("missingkey=error").Parse(string(tmpl))
	if err != nil {
		return nil, fmt.Errorf("parse template: %w", err)
	}
	var b bytes.Buffer
	if err := t.Execute(&b, d); err != nil {
		return nil, fmt.Errorf("render template: %w", err)
	}
	list, err := libcni.ConfListFromBytes(b.Bytes())
	if err != nil {
		return nil, fmt.Errorf("rendered template is no CNI configuration list: %w", err)
	}
	if len(list.Plugins) == 0 {
		return nil, errors.New("rendered template has no plugins")
	}
	return b.Bytes(), nil
}

// renderTemplate writes the configuration template, rendered for the pod
// CIDRs, into the configuration directory, unless it is there already.
func (m *Manager) renderTemplate(podCIDRs string) error {
	if m.opts.ConfTemplate == "" {
		return nil
	}
	tmpl, err := os.ReadFile(m.opts.ConfTemplate)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("CNI configuration template: %w", err)
	}
	conf, err := RenderTemplate(tmpl, podCIDRs)
	if err != nil {
		return fmt.Errorf("CNI configuration template %s: %w", m.opts.ConfTemplate, err)
	}
	path := filepath.Join(m.opts.ConfDir, TemplateConfName)
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, conf) {
		return nil
	}
	if err := os.MkdirAll(m.opts.ConfDir, 0o755); err != nil {
		return fmt.Errorf("CNI configuration directory: %w", err)
	}
	// Written aside and renamed: a reader never sees half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, conf, 0o644); err != nil {
		return fmt.Errorf("write CNI configuration: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write CNI configuration: %w", err)
	}
	m.log.Info("CNI configuration written from the template", "path", path, "podCIDR", podCIDRs)
	return nil
}
