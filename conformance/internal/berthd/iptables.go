package berthd

import (
	"os/exec"
	"strings"
	"testing"
)

// Iptables is the chains and rules of every IPv4 and IPv6 table, keyed
// "iptables:nat" and so on.
type Iptables map[string][]string

// SnapshotIptables records the host's chains and rules.
func SnapshotIptables() Iptables {
	out := Iptables{}
	for _, cmd := range []string{"iptables", "ip6tables"} {
		for _, table := range []string{"filter", "nat", "mangle"} {
			out[cmd+":"+table] = iptablesTable(cmd, table)
		}
	}
	return out
}

// RemoveNew removes the rules and chains naming prefix that were not
// there when before was taken: rules first, then chains, as iptables
// needs. Anything else that differs is reported.
func (before Iptables) RemoveNew(t testing.TB, prefix string) {
	t.Helper()
	for table, rules := range before {
		cmd, tbl, _ := strings.Cut(table, ":")
		had := map[string]bool{}
		for _, l := range rules {
			had[l] = true
		}
		var chains []string
		for _, l := range iptablesTable(cmd, tbl) {
			switch {
			case had[l] || !strings.Contains(l, prefix):
			case strings.HasPrefix(l, "-A "):
				// iptables-save quotes as a shell would read it.
				if out, err := exec.Command("sh", "-c", cmd+" -t "+tbl+" -D "+l[len("-A "):]).CombinedOutput(); err != nil {
					t.Errorf("clean-up: remove rule %s %s: %v %s", table, l, err, out)
				}
			case strings.HasPrefix(l, ":"):
				chains = append(chains, strings.TrimPrefix(l, ":"))
			}
		}
		for _, c := range chains {
			if out, err := exec.Command(cmd, "-t", tbl, "-F", c).CombinedOutput(); err != nil {
				t.Errorf("clean-up: flush chain %s %s: %v %s", table, c, err, out)
			}
			if out, err := exec.Command(cmd, "-t", tbl, "-X", c).CombinedOutput(); err != nil {
				t.Errorf("clean-up: remove chain %s %s: %v %s", table, c, err, out)
			}
		}
		if after := strings.Join(iptablesTable(cmd, tbl), "\n"); after != strings.Join(rules, "\n") {
			t.Errorf("clean-up: %s differs from before:\nbefore:\n%s\nafter:\n%s", table, strings.Join(rules, "\n"), after)
		}
	}
}

// iptablesTable is one table's chain declarations (without counters)
// and rules, in iptables-save's order and quoting.
func iptablesTable(cmd, table string) []string {
	data, err := exec.Command(cmd+"-save", "-t", table).Output()
	if err != nil {
		return nil
	}
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		switch {
		case strings.HasPrefix(l, ":"):
			name, _, _ := strings.Cut(l, " ")
			lines = append(lines, name)
		case strings.HasPrefix(l, "-A "):
			lines = append(lines, l)
		}
	}
	return lines
}
