package image_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-runtime/berth/image"
	"github.com/berth-runtime/berth/image/lazy"
	"github.com/berth-runtime/berth/internal/testutil"
)

// The lazy fetches reach the registry as the pull does: through
// registries.conf's mirrors, with auth.json's credentials or the pull's
// own (which containers/image gives the named registry only, never a
// mirror); and only registries are fetched from.
func TestLazySource(t *testing.T) {
	e := newEnv(t, testutil.RegistryOptions{Auth: true})
	e.push("library/tool:v1", simpleImage(testutil.File{Path: "tool", Content: "t"}))
	// registry.invalid never resolves (RFC 6761): only the mirror can
	// answer.
	conf := testutil.RegistriesConf(t, `[[registry]]
prefix = "registry.invalid/library"
location = "registry.invalid/library"
[[registry.mirror]]
location = "`+e.reg.Addr+`/library"
insecure = true
`, e.reg.Addr)
	remote := lazy.Remote{Ref: "docker://registry.invalid/library/tool:v1", RegistriesConf: conf, RegistriesConfDir: t.TempDir()}
	manifest := func(r lazy.Remote) error {
		src, err := image.LazySource(context.Background(), r)
		if err != nil {
			return err
		}
		defer src.Close()
		_, _, err = src.GetManifest(context.Background(), nil)
		return err
	}
	if err := manifest(remote); err == nil {
		t.Errorf("the manifest without credentials")
	}
	authFile := filepath.Join(t.TempDir(), "auth.json")
	enc := b64(e.reg.User + ":" + e.reg.Password)
	must(t, os.WriteFile(authFile, []byte(`{"auths":{"`+e.reg.Addr+`":{"auth":"`+enc+`"}}}`), 0o600))
	remote.AuthFile = authFile
	if err := manifest(remote); err != nil {
		t.Errorf("the manifest through the mirror with auth.json: %v", err)
	}
	direct := lazy.Remote{Ref: "docker://" + e.reg.Addr + "/library/tool:v1", RegistriesConf: conf, RegistriesConfDir: t.TempDir(),
		Username: e.reg.User, Password: e.reg.Password}
	if err := manifest(direct); err != nil {
		t.Errorf("the manifest with the pull's credentials: %v", err)
	}
	for _, ref := range []string{"oci:/etc", "dir:/", "docker-archive:/x.tar", "registry.invalid/library/tool:v1"} {
		remote.Ref = ref
		if _, err := image.LazySource(context.Background(), remote); err == nil || !strings.Contains(err.Error(), "only docker://") {
			t.Errorf("source %q: %v; want a refusal", ref, err)
		}
	}
}
