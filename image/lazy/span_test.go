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
	// The prefix the background fetch wrote counts, up to a gap.
	l.streamed = 8
	if l.covered(0, 10) || !l.covered(0, 8) || l.localFrom(0, false) != 6 {
		t.Errorf("with 8 bytes streamed: covered(0, 10) %v, covered(0, 8) %v, %d verified from 0",
			l.covered(0, 10), l.covered(0, 8), l.localFrom(0, false))
	}
	l.streamed = 12
	if !l.covered(0, 40) || l.covered(0, 41) || l.localFrom(3, true) != 37 {
		t.Errorf("with 12 bytes streamed: covered(0, 40) %v, covered(0, 41) %v, %d local from 3",
			l.covered(0, 40), l.covered(0, 41), l.localFrom(3, true))
	}
	l.streamed = 0
	l.forget(15, 35)
	if want := []span{{0, 6}, {10, 15}, {35, 40}, {50, 60}}; !slices.Equal(l.local, want) {
		t.Errorf("after forget(15, 35): %v; want %v", l.local, want)
	}
}
