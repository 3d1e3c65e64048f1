package shim

import (
	"bufio"
	"strings"
	"testing"
)

// readJSON takes lines far longer than its reader's buffer, in a row, and
// refuses one over maxMessage.
func TestReadJSONLongLines(t *testing.T) {
	long := strings.Repeat("x", 100<<10)
	in := `{"error":"` + long + `"}` + "\n" + `{"error":"short"}` + "\n" + `{"error":"` + strings.Repeat("y", maxMessage) + `"}` + "\n"
	r := bufio.NewReader(strings.NewReader(in))
	for _, want := range []string{long, "short"} {
		var resp Response
		if err := readJSON(r, &resp); err != nil || resp.Error != want {
			t.Fatalf("readJSON: %v, message of %d bytes, want %d", err, len(resp.Error), len(want))
		}
	}
	var resp Response
	if err := readJSON(r, &resp); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("a message over %d bytes: %v", maxMessage, err)
	}
}
