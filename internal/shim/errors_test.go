package shim

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
)

// A shim's error crosses the socket as text and a code; the client gets
// the sentinel back from the code, never from the words.
func TestErrorCodeRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name     string
		resp     *Response
		notFound bool
	}{
		{"not found", errorResponse(fmt.Errorf("container c1: %w", ErrNotFound)), true},
		{"other", errorResponse(errors.New("start c1: exec format error")), false},
		{"text alone is not a code", &Response{Error: "container c1 not found", Code: ""}, false},
		{"a shim of an earlier berthd", &Response{Error: "container c1 not found in this shim"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, err := json.Marshal(tc.resp)
			if err != nil {
				t.Fatal(err)
			}
			var got Response
			if err := json.Unmarshal(data, &got); err != nil {
				t.Fatal(err)
			}
			err = responseError(&got)
			if errors.Is(err, ErrNotFound) != tc.notFound {
				t.Errorf("errors.Is(%q, ErrNotFound) = %v, want %v (wire %s)", err, !tc.notFound, tc.notFound, data)
			}
			if err.Error() != tc.resp.Error {
				t.Errorf("text %q, want the shim's %q", err, tc.resp.Error)
			}
		})
	}
}
