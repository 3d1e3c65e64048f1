package cluster_test

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestVolumes: ConfigMap, Secret, projected service-account token and
// downward API volumes, with updates reaching the running pod; a subPath
// of a ConfigMap; an emptyDir in memory with its size limit.
func TestVolumes(t *testing.T) {
	requireCluster(t)
	ns := namespace(t)
	apply(t, fmt.Sprintf(`apiVersion: v1
kind: ConfigMap
metadata: {name: conf, namespace: %[1]s}
data: {greeting: hello, sub: from-subpath}
---
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: %[1]s}
stringData: {password: s3cret}
---
apiVersion: v1
kind: Pod
metadata: {name: vols, namespace: %[1]s, labels: {tier: one}}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - {name: conf, configMap: {name: conf}}
  - {name: creds, secret: {secretName: creds, defaultMode: 0400}}
  - name: token
    projected:
      sources:
      - serviceAccountToken: {path: token, audience: berth-e2e, expirationSeconds: 3600}
  - name: info
    downwardAPI:
      items:
      - {path: labels, fieldRef: {fieldPath: metadata.labels}}
      - {path: mem-limit, resourceFieldRef: {containerName: c, resource: limits.memory, divisor: 1Mi}}
  - {name: mem, emptyDir: {medium: Memory, sizeLimit: 16Mi}}
  containers:
  - name: c
    image: %[2]s
    command: [sleep, "3600"]
    resources: {limits: {memory: 64Mi}}
    volumeMounts:
    - {name: conf, mountPath: /conf}
    - {name: conf, mountPath: /etc/sub.txt, subPath: sub}
    - {name: creds, mountPath: /creds}
    - {name: token, mountPath: /token}
    - {name: info, mountPath: /info}
    - {name: mem, mountPath: /mem}
`, ns, suite.busybox))
	waitReady(t, ns, "vols")
	cat := func(p string) string { return execIn(t, ns, "vols", "cat", p) }
	for p, want := range map[string]string{
		"/conf/greeting":  "hello",
		"/etc/sub.txt":    "from-subpath",
		"/creds/password": "s3cret",
		"/info/mem-limit": "64",
	} {
		if got := cat(p); got != want {
			t.Errorf("%s: %q, want %q", p, got, want)
		}
	}
	if got := cat("/info/labels"); !strings.Contains(got, `tier="one"`) {
		t.Errorf("/info/labels: %q", got)
	}
	if tok := cat("/token/token"); strings.Count(tok, ".") != 2 {
		t.Errorf("/token/token is no JWT: %q", tok)
	}
	if mode := execIn(t, ns, "vols", "stat", "-L", "-c", "%a", "/creds/password"); strings.TrimSpace(mode) != "400" {
		t.Errorf("secret mode %s, want 400", mode)
	}
	// The memory emptyDir is a tmpfs of the limit's size: 20 MiB do not fit.
	if mounts := cat("/proc/mounts"); !strings.Contains(mounts, "tmpfs /mem tmpfs") {
		t.Errorf("/mem is not a tmpfs:\n%s", mounts)
	}
	out, _, err := kubectlErr("-n", ns, "exec", "vols", "--", "dd", "if=/dev/zero", "of=/mem/big", "bs=1M", "count=20")
	if err == nil {
		t.Errorf("20 MiB written into a 16 MiB memory emptyDir: %s", out)
	}

	// Updates reach the running pod (the subPath keeps what it had, as
	// Kubernetes documents).
	kubectl(t, "-n", ns, "patch", "configmap", "conf", "-p", `{"data":{"greeting":"updated","sub":"changed"}}`)
	kubectl(t, "-n", ns, "patch", "secret", "creds", "-p", `{"stringData":{"password":"rotated"}}`)
	kubectl(t, "-n", ns, "label", "pod", "vols", "tier=two", "--overwrite")
	eventually(t, 3*time.Minute, "updates in the volumes", func() string {
		if g := cat("/conf/greeting"); g != "updated" {
			return "configmap: " + g
		}
		if g := cat("/creds/password"); g != "rotated" {
			return "secret: " + g
		}
		if g := cat("/info/labels"); !strings.Contains(g, `tier="two"`) {
			return "labels: " + g
		}
		return ""
	})
	if got := cat("/etc/sub.txt"); got != "from-subpath" {
		t.Errorf("subPath after the update: %q, want the content it was started with", got)
	}
}
