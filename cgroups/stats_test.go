package cgroups

import (
	"testing"
	"time"
)

func TestParsePressure(t *testing.T) {
	p, err := parsePressure("some avg10=1.50 avg60=2.00 avg300=3.25 total=1234567\nfull avg10=0.00 avg60=0.10 avg300=0.20 total=42\n")
	if err != nil {
		t.Fatal(err)
	}
	want := Pressure{
		Some: PressureFigures{Avg10: 1.5, Avg60: 2, Avg300: 3.25, Total: 1234567 * time.Microsecond},
		Full: PressureFigures{Avg60: 0.1, Avg300: 0.2, Total: 42 * time.Microsecond},
	}
	if *p != want {
		t.Fatalf("got %+v, want %+v", *p, want)
	}
	// cpu.pressure of the root cgroup before Linux 5.13 has no full line.
	if p, err := parsePressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n"); err != nil || p.Some.Total != 7*time.Microsecond {
		t.Fatalf("some only: %+v, %v", p, err)
	}
	for _, bad := range []string{"other avg10=1", "some avg10=x", "some total=-1"} {
		if _, err := parsePressure(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
