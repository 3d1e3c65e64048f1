package version

import (
	"testing"

	utilversion "k8s.io/apimachinery/pkg/util/version"
)

// TestVersionIsSemantic: the kubelet parses the runtime version with
// ParseSemantic and shows "Unknown" for anything that fails it.
func TestVersionIsSemantic(t *testing.T) {
	for _, v := range []string{Version, "0.1.0+3cf05eb", "0.1.0+3cf05eb-dirty"} {
		if _, err := utilversion.ParseSemantic(v); err != nil {
			t.Errorf("%q is not a semantic version: %v", v, err)
		}
	}
}
