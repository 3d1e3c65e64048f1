package lazy

import (
	"slices"
	"testing"
)

func TestSpans(t *testing.T) {
	var spans []span
	for _, s := range []span{{10, 20}, {30, 40}, {20, 25}, {0, 5}, {24, 31}, {50, 60}, {5, 6}} {
		spans = addSpan(spans, s)
	}
	if want := []span{{0, 6}, {10, 40}, {50, 60}}; !slices.Equal(spans, want) {
		t.Fatalf("spans %v; want %v", spans, want)
	}
	l := &Layer{local: spans}
	cases := map[span]bool{{0, 6}: true, {1, 2}: true, {10, 40}: true, {39, 40}: true, {5, 7}: false, {6, 10}: false, {40, 41}: false, {45, 50}: false, {55, 61}: false, {50, 60}: true}
	for s, want := range cases {
		if got := l.covered(s.start, s.end); got != want {
			t.Errorf("covered(%d, %d) = %v; want %v", s.start, s.end, got, want)
		}
	}
	l.forget(15, 35)
	if want := []span{{0, 6}, {10, 15}, {35, 40}, {50, 60}}; !slices.Equal(l.local, want) {
		t.Errorf("after forget(15, 35): %v; want %v", l.local, want)
	}
}
